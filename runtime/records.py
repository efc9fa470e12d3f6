"""Input records: JSON Lines with an ``id``, a ``text`` and optionally a gold ``label``.

Reading is strict and line-numbered (``pld.files.read_jsonl``): a bad line names the file, the
line and the fix. Knows nothing about models or bundles.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec

from pld.errors import DataError
from pld.files import read_jsonl

__all__ = ["Record", "read_records"]


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """One input to classify; ``label`` is the gold answer when the file has one."""

    id: str
    text: str
    label: str | None = None


def read_records(path: str | Path, *, limit: int | None = None) -> Iterator[Record]:
    """Yield records from a JSON Lines file (blank lines skipped; ids default to line numbers)."""
    n = 0
    for lineno, obj in read_jsonl(path):
        if limit is not None and n >= limit:
            return
        if not isinstance(obj.get("text"), str):
            raise DataError(
                f"{path}:{lineno}: each line must be a JSON object with a string field "
                "'text' (and optionally 'id' and 'label')"
            )
        label = obj.get("label")
        yield Record(
            id=str(obj.get("id", lineno)),
            text=obj["text"],
            label=None if label is None else str(label),
        )
        n += 1
