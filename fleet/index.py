"""What a publication signs: the channel index and the key set, and the pure checks a device
runs on them and on each bundle's bytes.

A channel index names, for each task, the one bundle file a device may activate (name, version,
length, sha256 of the file's bytes, the student model's sha256), under the channel's own
monotonic version and an expiry time. A key set names the keys (and how many must sign) that a
device trusts from then on. Every function here is pure: bytes and state in, a typed value or a
``RejectedError`` naming the problem out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Literal

import msgspec

from pld.errors import RejectedError

__all__ = [
    "INDEX_TYPE",
    "KEYSET_TYPE",
    "ChannelIndex",
    "IndexEntry",
    "KeySet",
    "check_bundle_bytes",
    "check_index",
    "parse_keyset",
    "utc_now",
]

INDEX_TYPE = "pld-channel-index"
KEYSET_TYPE = "pld-keyset"


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class IndexEntry(_Strict, frozen=True):
    """The one bundle a channel serves for a task."""

    file: str  # relative to the store's root: bundles/<sha256>.pld.json
    name: str
    version: str
    length: int
    sha256: str  # hex sha256 of the file's bytes
    student_model: str
    student_sha256: str | None = None


class ChannelIndex(_Strict, frozen=True):
    """A channel's signed index; its ``version`` only ever goes up."""

    type: Literal["pld-channel-index"]
    channel: str
    version: int
    published: str  # ISO 8601, UTC
    expires: str  # ISO 8601, UTC
    tasks: dict[str, IndexEntry]


class KeySet(_Strict, frozen=True):
    """The keys a device trusts, by key id (base64 raw ed25519), and how many must sign."""

    type: Literal["pld-keyset"]
    version: int
    threshold: int
    keys: dict[str, str]


def utc_now() -> dt.datetime:
    """The device clock, in UTC."""
    return dt.datetime.now(dt.UTC)


def _when(text: str, field: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RejectedError(f"index field {field!r} is not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def check_index(
    payload: bytes,
    *,
    channel: str,
    now: dt.datetime,
    trusted_version: int | None = None,
    trusted_sha256: str | None = None,
) -> ChannelIndex:
    """Parse a verified index payload and refuse it unless it is for ``channel``, unexpired, and
    newer than what the device trusts (or the very same index again).
    """
    try:
        index = msgspec.json.decode(payload, type=ChannelIndex)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RejectedError(f"the signed index is malformed ({exc})") from None
    if index.channel != channel:
        raise RejectedError(
            f"the index is for channel {index.channel!r}, not {channel!r}; pull with "
            f"--channel {index.channel} or publish to {channel!r}"
        )
    expires = _when(index.expires, "expires")
    if expires <= now:
        raise RejectedError(
            f"the index of channel {channel!r} (version {index.version}) expired at "
            f"{expires.isoformat()}, and the device clock says {now.isoformat()}; the publisher "
            "must publish again (or the device clock is wrong)"
        )
    if trusted_version is not None:
        digest = hashlib.sha256(payload).hexdigest()
        if index.version < trusted_version:
            raise RejectedError(
                f"the index of channel {channel!r} has version {index.version}, older than "
                f"version {trusted_version} that this device already trusts (a rollback attack, "
                "or a stale mirror); to go back, publish the old bundle as a new version"
            )
        if index.version == trusted_version and trusted_sha256 not in (None, digest):
            raise RejectedError(
                f"the index of channel {channel!r} has version {index.version}, the version this "
                "device trusts, but different content; a publisher must raise the version"
            )
    for task, entry in index.tasks.items():
        if not entry.file.startswith("bundles/") or ".." in entry.file or entry.length < 0:
            raise RejectedError(f"the index names an unsafe file for task {task!r}: {entry.file!r}")
    return index


def parse_keyset(payload: bytes) -> KeySet:
    """Parse a verified key set payload."""
    try:
        keyset = msgspec.json.decode(payload, type=KeySet)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RejectedError(f"the signed key set is malformed ({exc})") from None
    if not 1 <= keyset.threshold <= len(keyset.keys):
        raise RejectedError(
            f"the key set asks for {keyset.threshold} signatures of {len(keyset.keys)} keys"
        )
    return keyset


def check_bundle_bytes(data: bytes, entry: IndexEntry, task: str) -> None:
    """Refuse bundle bytes whose length, then sha256, differ from the index entry."""
    if len(data) != entry.length:
        raise RejectedError(
            f"bundle for task {task!r} has {len(data)} bytes where the index says "
            f"{entry.length}; refusing it (a tampered or truncated file)"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise RejectedError(
            f"bundle for task {task!r} has sha256 {digest}, the index says {entry.sha256}; "
            "refusing it (a tampered file)"
        )
