"""The progress bar every long job shows on stderr (extraction, embedding, evaluation, ...).

Knows how to draw progress, nothing about the work being done.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

__all__ = ["ProgressCallback", "progress"]

ProgressCallback = Callable[[int, int], None]


@contextmanager
def progress(label: str, total: int, *, show: bool = True) -> Iterator[ProgressCallback]:
    """A progress bar on stderr; yields a ``(done, total)`` callback (hidden when not ``show``)."""
    with typer.progressbar(length=total, label=label, file=sys.stderr, hidden=not show) as bar:
        seen = 0

        def update(done: int, _total: int) -> None:
            nonlocal seen
            bar.update(done - seen)
            seen = done

        yield update
