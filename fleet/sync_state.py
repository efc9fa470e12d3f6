"""The sync agent's state, ``D/sync.json``: when it last checked, last succeeded, last failed and
why, and when it tries next. Written atomically by the agent, read by `pld device status` and by
`pld serve`'s /metrics. Beside it, ``D/sync-validators.json``: per channel, how an HTTP store
named the last index a pull completed with (ETag, Last-Modified), written by the puller under
the pull lock, so that the next check can ask for the index only if it changed.

Imports only msgspec and ``pld.files`` (no fleet extra), so the server can read it on a device
without cryptography or fsspec. Unknown fields are ignored: an older server reads a newer
agent's file.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from pld.files import atomic_write

__all__ = [
    "SYNC_FILE",
    "VALIDATORS_FILE",
    "IndexValidator",
    "SyncError",
    "SyncState",
    "read_sync_state",
    "read_validators",
    "write_sync_state",
    "write_validators",
]

SYNC_FILE = "sync.json"
VALIDATORS_FILE = "sync-validators.json"


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
    # "unchanged": the store answered 304 for the index, nothing was downloaded or checked;
    # "pulled": the index was read and checked (and anything new activated); "failed"
    last_result: str | None = None


class IndexValidator(msgspec.Struct, frozen=True, kw_only=True):
    """How an HTTP store named the index of the last pull that completed on a channel, and the
    device state that pull left: the validators are sent only while that state still holds."""

    source: str
    etag: str | None = None
    last_modified: str | None = None
    version: int  # the index's, and its payload's sha256: what trusted.json must still say
    sha256: str
    generation: int | None  # the active generation the pull left
    key_version: int
    options: str  # the pull's options that decide what it accepts (threshold, model, ...)
    expires: str  # the index's expiry: after it, the index is read whole (and refused)
    recorded_at: float  # Unix seconds (the device clock at the pull)
    deferred: dict[str, str] = msgspec.field(default_factory=dict)


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


def read_validators(device_dir: str | Path) -> dict[str, IndexValidator]:
    """``D/sync-validators.json`` (channel -> record); empty when absent or unreadable."""
    try:
        data = (Path(device_dir) / VALIDATORS_FILE).read_bytes()
        return msgspec.json.decode(data, type=dict[str, IndexValidator])
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return {}


def write_validators(device_dir: str | Path, records: dict[str, IndexValidator]) -> None:
    """Replace ``D/sync-validators.json`` atomically (call with the pull lock held)."""
    data = msgspec.json.format(msgspec.json.encode(records), indent=2) + b"\n"
    atomic_write(Path(device_dir) / VALIDATORS_FILE, data)
