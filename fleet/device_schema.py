"""The device directory's records: ``trusted.json`` (``TrustedState``: the key set and channel
versions a device trusts) and each generation's ``manifest.json`` (``Manifest``: the bundle of
every task and its last-known-good), and the clock stamp they carry (``iso_now``).

Schemas only: reading and writing them, and the directory's layout, are ``device``'s.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

from .index import KeyRole

__all__ = [
    "ActiveEntry",
    "ChannelState",
    "Manifest",
    "TrustedKeySet",
    "TrustedState",
    "iso_now",
]


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ChannelState(_Strict, frozen=True):
    """The newest index of a channel that the device accepted: its version and payload sha256,
    and the key set's ``floors_reset`` when it was accepted (a later reset voids it as a floor).
    """

    version: int
    sha256: str
    epoch: int = 0


class TrustedKeySet(_Strict, frozen=True):
    """The keys (key id -> base64 raw ed25519) and signature thresholds the device trusts.

    ``threshold``/``keys`` are the root role (they sign key sets); ``index`` the keys that sign
    channel indexes (None: the root keys do, as with a key given by ``--trusted-key``).
    """

    version: int  # 0: given with --trusted-key on the first pull; then a signed keys.json's
    threshold: int
    keys: dict[str, str]
    index: KeyRole | None = None
    floors_reset: int = 0  # channel states accepted under an older value are no floor
    previous_index: KeyRole | None = None  # what the key set says; publishers use it

    def index_role(self) -> KeyRole:
        """The keys that sign channel indexes, and how many must."""
        return self.index or KeyRole(threshold=self.threshold, keys=self.keys)


class TrustedState(_Strict, frozen=True):
    """``trusted.json``: written only after every check passed and activation succeeded."""

    keyset: TrustedKeySet
    channels: dict[str, ChannelState] = msgspec.field(default_factory=dict)


class ActiveEntry(_Strict, frozen=True):
    """One task's bundle in a generation, and where it came from."""

    name: str
    version: str
    sha256: str
    length: int
    channel: str
    index_version: int
    student_model: str
    activated_at: str
    model: str | None = None  # the model the device runs it with, when not the bundle's own
    allow_model_mismatch: bool = False  # it runs on a model file it was not validated with
    held_sha256: str | None = None  # rolled back from this file: pulls skip it while indexed


class Manifest(_Strict, frozen=True):
    """``generations/<n>/manifest.json``: what one activation holds, and what it replaced."""

    generation: int
    reason: Literal["pull", "rollback"]
    channel: str | None
    index_version: int | None
    activated_at: str
    tasks: dict[str, ActiveEntry]
    last_known_good: dict[str, ActiveEntry] = msgspec.field(default_factory=dict)
    channels: dict[str, ChannelState] = msgspec.field(default_factory=dict)


def iso_now() -> str:
    """The device clock in UTC, ISO 8601 to the second."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
