"""The sync agent's state, ``D/sync.json``: when it last checked, last succeeded, last failed and
why, and when it tries next. Written atomically by the agent, read by `pld device status` and by
`pld serve`'s /metrics.

Imports only msgspec and ``pld.files`` (no fleet extra), so the server can read it on a device
without cryptography or fsspec. Unknown fields are ignored: an older server reads a newer
agent's file.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from pld.files import atomic_write

__all__ = ["SYNC_FILE", "SyncError", "SyncState", "read_sync_state", "write_sync_state"]

SYNC_FILE = "sync.json"


class SyncError(msgspec.Struct, frozen=True, kw_only=True):
    """The last failed attempt: when (Unix seconds), a short reason and the message."""

    at: float
    reason: str  # signature, rejected, expired, store, deadline, model_mismatch, locked, ...
    message: str


class SyncState(msgspec.Struct, frozen=True, kw_only=True):
    """What the sync agent of one device directory did last, and what it does next."""

    source: str
    channel: str
    every_s: float
    last_check: float | None = None  # Unix seconds of the last attempt's end
    last_success: float | None = None
    last_change: float | None = None  # the last attempt that activated something
    last_error: SyncError | None = None  # None: the last attempt succeeded
    consecutive_failures: int = 0
    next_attempt: float | None = None
    index_version: int | None = None  # of the last index accepted
    deferred: dict[str, str] = msgspec.field(default_factory=dict)  # task -> version offered


def read_sync_state(device_dir: str | Path) -> SyncState | None:
    """``D/sync.json``, or None when there is none (or it cannot be read as one)."""
    try:
        data = (Path(device_dir) / SYNC_FILE).read_bytes()
        return msgspec.json.decode(data, type=SyncState)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def write_sync_state(device_dir: str | Path, state: SyncState) -> None:
    """Replace ``D/sync.json`` atomically (a reader never sees half of it)."""
    data = msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n"
    atomic_write(Path(device_dir) / SYNC_FILE, data)
