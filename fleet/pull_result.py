"""What a pull reports (``PullResult``: the index it accepted, each task it changed, where the
time went) and the clock that times its steps. Records only: the steps are ``puller``'s and
``pull_checks``'s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

__all__ = ["Clock", "PullResult", "PullTimings", "TaskChange", "TaskTimings"]


class _S(msgspec.Struct, frozen=True, kw_only=True):
    pass


class TaskTimings(_S, frozen=True):
    """Milliseconds one task's bundle spent in each step."""

    fetch_ms: float
    verify_ms: float
    prime_ms: float


class TaskChange(_S, frozen=True):
    """A task whose active bundle the pull replaced (or added)."""

    task: str
    name: str
    old_version: str | None
    new_version: str
    old_sha256: str | None
    new_sha256: str
    allow_model_mismatch: bool
    timings: TaskTimings
    acceptance: float | None = None  # accuracy on the bundle's check set, here (None: no check)


class PullTimings(_S, frozen=True):
    """Milliseconds from the pull's start: each step summed over tasks, and in all."""

    fetch_ms: float
    verify_ms: float
    prime_ms: float
    activate_ms: float
    total_ms: float


class PullResult(_S, frozen=True):
    """What a pull did: the index it accepted, what changed, and where the time went."""

    device_dir: str
    source: str
    channel: str
    index_version: int
    previous_index_version: int | None
    generation: int | None  # the active generation afterwards
    changed: list[TaskChange]
    unchanged: list[str]
    removed: list[str]  # tasks of this channel its index no longer names
    held: list[str]  # rolled back on this device while the index still names that bundle
    key_version: int
    keys_rotated: bool
    timings: PullTimings
    device_id: str = ""
    # outside a staged rollout's share: task -> the newest version the index offers (the
    # device runs, or took, the index's previous bundle, or kept the new one it already had)
    deferred: dict[str, str] = msgspec.field(default_factory=dict)


class Clock:
    """Milliseconds per step; a step timed inside another is not counted twice."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {"fetch": 0.0, "verify": 0.0, "prime": 0.0, "activate": 0.0}
        self._stack: list[list[Any]] = []  # [step, since, per-task dict or None]

    def _credit(self, frame: list[Any], now: float) -> None:
        step, since, into = frame
        ms = (now - since) * 1000
        self.ms[step] += ms
        if into is not None:
            into[step] = into.get(step, 0.0) + ms
        frame[1] = now

    @contextmanager
    def __call__(self, step: str, into: dict[str, float] | None = None) -> Iterator[None]:
        now = time.perf_counter()
        if self._stack:
            self._credit(self._stack[-1], now)
        frame: list[Any] = [step, now, into]
        self._stack.append(frame)
        try:
            yield
        finally:
            now = time.perf_counter()
            self._credit(frame, now)
            self._stack.pop()
            if self._stack:
                self._stack[-1][1] = now
