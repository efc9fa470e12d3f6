"""Where publications live: a local directory or any fsspec URL (``http(s)://``, ``s3://``,
``hf://``, ``memory://``), read and written by paths relative to its root.

One code path for every store; local writes are atomic renames. Reads can stop at a declared
length, so a server that sends more bytes than an index promised cannot fill the disk. Knows
files, not what is in them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pld.errors import StoreError
from pld.files import atomic_write

__all__ = ["Store"]


class Store:
    """A publication store rooted at a directory path or fsspec URL."""

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        try:
            fs, root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise StoreError(
                f"cannot open store {self.url!r} ({exc}); use a directory or an fsspec URL "
                "(http:// and https:// need aiohttp: pip install 'pld[fleet]')"
            ) from None
        self.fs: Any = fs
        self.root = str(root).rstrip("/")
        self.local = isinstance(fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        """The full path (or URL) of ``rel``."""
        return f"{self.root}/{rel}" if self.root else rel

    def read(self, rel: str, *, limit: int | None = None) -> bytes:
        """The bytes of ``rel``: at most ``limit`` + 1 when a limit is given (so that a longer
        file shows as too long without being read whole). Raises ``StoreError``.
        """
        path = self.path(rel)
        try:
            with self.fs.open(path, "rb", block_size=0) as fh:
                data: bytes = fh.read() if limit is None else fh.read(limit + 1)
                if limit is not None:  # some streams return short reads: keep going
                    while len(data) <= limit:
                        more = fh.read(limit + 1 - len(data))
                        if not more:
                            break
                        data += more
                return data
        except FileNotFoundError:
            raise StoreError(f"{path} does not exist; check --from and --channel") from None
        except StoreError:
            raise
        except Exception as exc:  # network, permissions: fsspec backends raise many kinds
            raise StoreError(f"cannot read {path} ({type(exc).__name__}: {exc})") from exc

    def read_optional(self, rel: str, *, limit: int | None = None) -> bytes | None:
        """The bytes of ``rel``, or None when it does not exist; a file over ``limit`` bytes
        is refused (``StoreError``)."""
        try:
            data = self.read(rel, limit=limit)
        except StoreError as exc:
            if "does not exist" in str(exc):
                return None
            raise
        if limit is not None and len(data) > limit:
            raise StoreError(f"{self.path(rel)} is larger than {limit} bytes; refusing it")
        return data

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists."""
        try:
            return bool(self.fs.exists(self.path(rel)))
        except Exception as exc:
            raise StoreError(f"cannot reach {self.path(rel)} ({exc})") from exc

    def write(self, rel: str, data: bytes) -> None:
        """Write ``rel`` (atomically and durably for a local directory)."""
        path = self.path(rel)
        try:
            if self.local:
                atomic_write(path, data, fsync=True)
            else:
                parent = path.rsplit("/", 1)[0]
                self.fs.makedirs(parent, exist_ok=True)
                self.fs.pipe_file(path, data)
        except Exception as exc:
            raise StoreError(
                f"cannot write {path} ({type(exc).__name__}: {exc}); publish to a writable "
                "directory or fsspec store (HTTP stores are read-only: sync a directory to them)"
            ) from exc
