"""Staged rollouts: which bundle of an index entry one device takes.

A device hashes its stable id with the channel and task (sha256) into a bucket in [0, 100);
it takes an entry's bundle only when its bucket is below the entry's ``rollout`` share.
Outside the share it keeps the new bundle if it already runs it (a halt never moves a device
back), and otherwise takes ``previous``: the bundle the channel served to every device before
the rollout began. So a device never loses a task: one with nothing for it (a new device) takes
``previous``, and only an index without ``previous`` (which ``pld bundle publish`` never
writes) makes a device with nothing take the new bundle whatever its bucket. Pure functions:
no I/O, nothing about stores or signatures.
"""

from __future__ import annotations

import hashlib
from typing import Literal, NamedTuple

from .index import IndexEntry

__all__ = ["Choice", "bucket", "choose"]

_SCALE = 10_000  # buckets of 0.01 %


def bucket(device_id: str, channel: str, task: str) -> float:
    """The device's bucket for ``task`` of ``channel``, in [0, 100), steps of 0.01.

    The channel and task are hashed in, so the same devices are not always the first ones.
    """
    digest = hashlib.sha256(f"pld-rollout\0{device_id}\0{channel}\0{task}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % _SCALE) / (_SCALE / 100)


class Choice(NamedTuple):
    """What one device does with one task of an index."""

    action: Literal["unchanged", "held", "take"]
    entry: IndexEntry  # for 'take': the bundle to take; else the index's bundle it matched
    deferred: bool  # outside the rollout share: not (yet) on the index's newest bundle


def choose(
    entry: IndexEntry,
    active_sha256: str | None,
    held_sha256: str | None,
    device_bucket: float,
) -> Choice:
    """The bundle this device runs for a task, given what it runs now (``active_sha256``, None
    for nothing) and what it was rolled back from on this device (``held_sha256``).
    """
    target, deferred = entry, False
    if active_sha256 != entry.sha256 and device_bucket >= entry.rollout:
        deferred = True
        if entry.previous is not None:
            target = entry.previous
        elif active_sha256 is not None:
            return Choice("unchanged", entry, True)  # keeps what it has (no fallback named)
    if active_sha256 == target.sha256:
        return Choice("unchanged", target, deferred)
    if held_sha256 == target.sha256:
        return Choice("held", target, deferred)
    return Choice("take", target, deferred)
