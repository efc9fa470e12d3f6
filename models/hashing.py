"""The sha256 of model files, with a small cache keyed by each file's identity.

A digest is reused while the file's size, times and inode are unchanged; the table lives in
``pld.paths.hashes_file()`` and is only a cache. Knows files and digests, not models.
"""

from __future__ import annotations

import hashlib
import os
import time

import msgspec

from pld.errors import ModelError
from pld.files import atomic_write
from pld.paths import hashes_file

__all__ = ["BLOCK_SIZE", "sha256_file"]

BLOCK_SIZE = 1 << 20  # bytes read at a time when hashing or copying a model file
# A file changed less than this long before it was hashed is not put in the hash cache:
# file timestamps are coarse, so a later write within the same tick could go unseen.
_RACY_NS = 2_000_000_000


class _HashEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: str


_HashTable = dict[str, _HashEntry]


def _entry_for(st: os.stat_result, digest: str) -> _HashEntry:
    return _HashEntry(
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        sha256=digest,
    )


def _load_hashes() -> _HashTable:
    try:
        return msgspec.json.decode(hashes_file().read_bytes(), type=_HashTable)
    except (OSError, msgspec.DecodeError):
        return {}  # missing, unreadable, corrupt or from another version: it is only a cache


def _store_hash(key: str, entry: _HashEntry) -> None:
    table = {k: v for k, v in _load_hashes().items() if os.path.exists(k)}
    table[key] = entry
    try:  # atomic, so a concurrent reader never sees half a table
        atomic_write(hashes_file(), msgspec.json.encode(table))
    except OSError:
        pass  # a read-only or full cache directory only costs a re-hash next time


def sha256_file(path: str | os.PathLike[str], *, use_cache: bool = True) -> str:
    """Return the hex sha256 of a file, reusing a cached digest while the file is unchanged."""
    key = os.path.realpath(path)
    try:
        before = os.stat(key)
        if use_cache:
            cached = _load_hashes().get(key)
            if cached is not None and cached == _entry_for(before, cached.sha256):
                return cached.sha256
        started_ns = time.time_ns()
        digest = hashlib.sha256()
        with open(key, "rb") as f:
            while block := f.read(BLOCK_SIZE):
                digest.update(block)
        after = os.stat(key)
    except OSError as exc:
        raise ModelError(f"cannot read model file '{path}': {exc.strerror or exc}") from exc
    hexdigest = digest.hexdigest()
    entry = _entry_for(after, hexdigest)
    quiet = max(after.st_mtime_ns, after.st_ctime_ns) < started_ns - _RACY_NS
    if use_cache and quiet and entry == _entry_for(before, hexdigest):
        _store_hash(key, entry)
    return hexdigest
