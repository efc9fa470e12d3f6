"""What a publication signs: the channel index and the key set, and the pure checks a device
runs on them and on each bundle's bytes.

A channel index names, for each task, the one bundle file a device may activate (name, version,
length, sha256 of the file's bytes, the student model's sha256), under the channel's own
monotonic version and an expiry time. A key set names, by role as TUF does, the **root** keys
(and how many must sign) that sign the next key set, and the **index** keys that sign channel
indexes; root can void every channel's version floor (``floors_reset``) when an index key was
stolen. Every function here is pure: bytes and state in, a typed value or a ``RejectedError``
naming the problem out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Literal

import msgspec

from pld.errors import RejectedError

__all__ = [
    "INDEX_TYPE",
    "KEYSET_TYPE",
    "ChannelIndex",
    "CheckRef",
    "IndexEntry",
    "KeyRole",
    "KeySet",
    "check_bundle_bytes",
    "check_index",
    "parse_keyset",
    "utc_now",
]

INDEX_TYPE = "pld-channel-index"
KEYSET_TYPE = "pld-keyset"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class CheckRef(_Strict, frozen=True):
    """An acceptance check set (``acceptance``): its file, length and sha256."""

    file: str  # checks/<sha256>.json
    length: int
    sha256: str


class IndexEntry(_Strict, frozen=True, omit_defaults=True):
    """The one bundle a channel serves for a task.

    A staged rollout (``pld bundle publish --rollout N``) gives ``rollout`` < 100: only devices
    whose bucket (``rollout.bucket``) is below it take this bundle; the others take, or stay on,
    ``previous`` (the bundle the channel served to every device before). Defaults are omitted
    from the signed bytes, so an index without a rollout is the same as before rollouts existed.
    """

    file: str  # relative to the store's root: bundles/<sha256>.pld.json
    name: str
    version: str
    length: int
    sha256: str  # hex sha256 of the file's bytes
    student_model: str
    student_sha256: str | None = None  # required by check_index; optional only to name the gap
    rollout: int = 100  # percent of devices (by bucket) that take this bundle
    previous: IndexEntry | None = None  # what the others run; rollout 100 and no previous itself
    check: CheckRef | None = None  # inputs a device classifies before it activates the bundle


class ChannelIndex(_Strict, frozen=True):
    """A channel's signed index; its ``version`` only ever goes up."""

    type: Literal["pld-channel-index"]
    channel: str
    version: int
    published: str  # ISO 8601, UTC
    expires: str  # ISO 8601, UTC
    tasks: dict[str, IndexEntry]


class KeyRole(_Strict, frozen=True):
    """Keys of one role, by key id (base64 raw ed25519), and how many of them must sign."""

    threshold: int
    keys: dict[str, str]


class KeySet(_Strict, frozen=True, omit_defaults=True):
    """The keys a device trusts from now on, signed by root (the current and these root keys).

    ``threshold``/``keys`` are the **root** role: they sign the next key set, nothing else once
    ``index`` names the index keys (without ``index``, one set of keys has both roles, as a
    single key given with ``--trusted-key`` has). ``floors_reset`` is the key set version at
    which root voided every channel's version floor (0: never): a device then accepts the next
    index whatever its version, so an index a thief signed at a huge version cannot freeze it.
    ``previous_index`` names the index keys before this rotation (absent after a reset), so a
    publisher may carry forward the index they signed.
    """

    type: Literal["pld-keyset"]
    version: int
    threshold: int
    keys: dict[str, str]
    index: KeyRole | None = None
    floors_reset: int = 0
    previous_index: KeyRole | None = None


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
        check_entry(entry, task)
    return index


def check_model_name(name: str, where: str) -> str:
    """Refuse a model name from signed data that could be a path (``/``, ``\\``, ``..``)."""
    if not name or "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise RejectedError(
            f"{where} names the student model {name!r}, which looks like a path; a signed "
            "document may only name a model of the registry (publish a bundle whose student "
            "is a registry name)"
        )
    return name


def check_entry(entry: IndexEntry, task: str) -> None:
    """Refuse an index entry with an unsafe file name, a path-like model or no model sha256."""
    if (
        not entry.file.startswith("bundles/")
        or ".." in entry.file
        or "\\" in entry.file
        or entry.length < 0
    ):
        raise RejectedError(f"the index names an unsafe file for task {task!r}: {entry.file!r}")
    if not _HEX64.fullmatch(entry.sha256):
        raise RejectedError(f"the index gives task {task!r} a sha256 that is not 64 hex digits")
    if entry.student_sha256 is None or not _HEX64.fullmatch(entry.student_sha256):
        raise RejectedError(
            f"the index entry of task {task!r} carries no student model sha256 (64 hex digits); "
            "a device must know the model file a bundle was validated with: publish it again "
            "with pld bundle publish from a bundle that records its student's sha256"
        )
    check_model_name(entry.student_model, f"the index entry of task {task!r}")
    check = entry.check
    if check is not None and (
        not check.file.startswith("checks/")
        or ".." in check.file
        or "\\" in check.file
        or check.length < 0
        or not _HEX64.fullmatch(check.sha256)
    ):
        raise RejectedError(
            f"the index names an unsafe check set for task {task!r}: {check.file!r}"
        )
    if not 0 <= entry.rollout <= 100:
        raise RejectedError(
            f"the index gives task {task!r} a rollout of {entry.rollout}%; it must be 0 to 100"
        )
    prev = entry.previous
    if prev is not None:
        if prev.rollout != 100 or prev.previous is not None:
            raise RejectedError(
                f"the previous bundle of task {task!r} is itself in a staged rollout; an index "
                "names one fallback per task (publish again with pld bundle publish --rollout)"
            )
        if prev.sha256 == entry.sha256:
            raise RejectedError(f"the index names the same file as task {task!r}'s previous one")
        check_entry(prev, task)


def _check_role(role: KeyRole, what: str) -> None:
    if not 1 <= role.threshold <= len(role.keys):
        raise RejectedError(
            f"the key set asks for {role.threshold} signatures of {len(role.keys)} {what} keys"
        )


def parse_keyset(payload: bytes) -> KeySet:
    """Parse a verified key set payload."""
    try:
        keyset = msgspec.json.decode(payload, type=KeySet)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RejectedError(f"the signed key set is malformed ({exc})") from None
    _check_role(KeyRole(threshold=keyset.threshold, keys=keyset.keys), "root")
    for role, what in ((keyset.index, "index"), (keyset.previous_index, "previous index")):
        if role is not None:
            _check_role(role, what)
    if not 0 <= keyset.floors_reset <= keyset.version:
        raise RejectedError(
            f"the key set (version {keyset.version}) says floors were reset at version "
            f"{keyset.floors_reset}; refusing it"
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
