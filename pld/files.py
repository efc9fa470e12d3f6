"""File helpers every package shares: atomic writes and strict JSON Lines reading.

A reader never sees half a file: writes go to a temporary file in the same directory and are
renamed over the target. Knows bytes and paths, nothing about bundles, models or teachers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from pld.errors import DataError

__all__ = ["atomic_write", "atomic_writer", "fsync_dir", "read_jsonl"]


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically when the block ends without error.

    The temporary file (``.NAME.RANDOM.tmp`` beside the target, created with the usual umask)
    is removed on any error, Ctrl-C included; ``fsync`` flushes it to disk before the rename
    and the directory after it, so the new file (not only its bytes) survives a power cut.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
        if fsync:
            fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_writer(path, fsync=fsync) as fh:
        fh.write(data)
    return Path(path)


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSON Lines file.

    A missing file, a line that is not UTF-8, or a line that is not a JSON object raises
    ``DataError`` naming the file, the line and the fix.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist; check the path")
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{p}:{lineno}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column "
                    f"{exc.start}); re-encode the file as UTF-8"
                ) from None
            try:
                obj = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise DataError(
                    f"{p}:{lineno}: not a JSON object ({exc}); write one JSON object per line"
                ) from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{lineno}: not a JSON object; write one JSON object per line")
            yield lineno, obj
