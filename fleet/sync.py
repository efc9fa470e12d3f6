"""`pld device sync`: the sync agent. Pulls on a schedule with jitter, backs off exponentially
(capped) while pulls fail, and records each attempt in ``D/sync.json`` (``sync_state``).

A pull activates atomically and a running `pld serve` on the same device directory notices the
switch on its next poll of ``D/current``, so the agent needs no channel to the server. Run it
as a loop (``run_agent``, a systemd service) or once per systemd timer tick (``once=True``):
the state file carries the backoff between runs. Each check asks an HTTP store for the index
only if it changed (``pull(if_changed=True)``): an unchanged one costs one request and no body.
Knows the schedule; pulling is ``puller``'s.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from pld.errors import (
    BundleError,
    ConfigError,
    DeadlineError,
    FleetError,
    ModelError,
    ModelMismatchError,
    PullLockedError,
    RejectedError,
    SignatureError,
    StoreError,
)

from .keys import PublicKey
from .pull_result import PullResult
from .puller import IndexUnchanged, pull
from .sync_state import SyncError, SyncState, read_sync_state, write_sync_state

__all__ = [
    "SyncOutcome",
    "error_reason",
    "next_delay",
    "parse_interval",
    "parse_jitter",
    "run_agent",
    "sync_once",
]

MAX_BACKOFF_S = 3600.0
RETRY_FIRST_S = 60.0  # the first retry after a failure comes after at most this long
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_INTERVAL = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")


def parse_interval(text: str, option: str = "--every") -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``1h`` or ``1d``; refuses zero and other text."""
    m = _INTERVAL.fullmatch(text)
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(f"{option} is {text!r}; give a positive time such as 30s, 15m or 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_jitter(text: str) -> float:
    """A fraction in [0, 1) from ``20%`` or ``0.2``."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise ConfigError(f"--jitter is {text!r}; give a share of the interval such as 20%")
    return value


def next_delay(
    every_s: float,
    failures: int,
    *,
    jitter: float = 0.0,
    max_backoff_s: float = MAX_BACKOFF_S,
    rng: random.Random | None = None,
) -> float:
    """Seconds until the next attempt: ``every_s`` after a success; after ``failures`` failures
    in a row min(every, 60 s) x 2^(failures-1), at most max(``max_backoff_s``, ``every_s``);
    each spread by +-``jitter`` so that devices do not come back all at once.
    """
    if failures <= 0:
        base = every_s
    else:
        cap = max(max_backoff_s, every_s)
        base = min(min(every_s, RETRY_FIRST_S) * 2.0 ** min(failures - 1, 60), cap)
    spread = (rng or random).uniform(-jitter, jitter) if jitter else 0.0
    return base * (1.0 + spread)


def error_reason(exc: BaseException) -> str:
    """A short, stable reason for a failed attempt (a metric label)."""
    if isinstance(exc, RejectedError) and "expired at" in str(exc):
        return "expired"
    if isinstance(exc, RejectedError) and str(exc).startswith("acceptance check failed"):
        return "acceptance"
    for kind, reason in (
        (DeadlineError, "deadline"),
        (StoreError, "store"),
        (SignatureError, "signature"),
        (RejectedError, "rejected"),
        (PullLockedError, "locked"),
        (ModelMismatchError, "model_mismatch"),
        (ModelError, "model"),
        (BundleError, "bundle"),
        (FleetError, "fleet"),
        (OSError, "os"),
    ):
        if isinstance(exc, kind):
            return reason
    return "error"


class SyncOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt: the state written, and the pull's result or the error's message."""

    state: SyncState
    result: PullResult | None
    error: str | None
    skipped: bool = False  # --once while backing off: no attempt was made


def sync_once(
    source: str | Path,
    device_dir: str | Path,
    *,
    channel: str = "stable",
    every_s: float = 900.0,
    jitter: float = 0.0,
    max_backoff_s: float = MAX_BACKOFF_S,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.time,
    **pull_options: Any,
) -> SyncOutcome:
    """Pull once and write ``D/sync.json``; never raises for a failed pull (the state says
    why, and when the next attempt is due). ``pull_options`` go to ``pull``. When an HTTP store
    says the index is unchanged the outcome has neither result nor error, and the state says
    ``last_result: "unchanged"``.
    """
    before = read_sync_state(device_dir)
    result: PullResult | None = None
    error: BaseException | None = None
    unchanged: IndexUnchanged | None = None
    try:
        result = pull(source, device_dir, channel=channel, if_changed=True, **pull_options)
    except IndexUnchanged as exc:
        unchanged = exc
    except Exception as exc:  # any failure is recorded; the next attempt is the retry
        error = exc
    now = clock()
    failures = 0 if error is None else (before.consecutive_failures if before else 0) + 1
    delay = next_delay(every_s, failures, jitter=jitter, max_backoff_s=max_backoff_s, rng=rng)
    keep = before if before is not None and before.channel == channel else None
    # the index this device holds now, and what it defers: as the pull or the 304 says, else
    # as the last state on this channel said
    index_version: int | None
    deferred: dict[str, str]
    if result is not None:
        index_version, deferred = result.index_version, dict(result.deferred)
    elif unchanged is not None:
        index_version, deferred = unchanged.version, dict(unchanged.deferred)
    elif keep is not None:
        index_version, deferred = keep.index_version, dict(keep.deferred)
    else:
        index_version, deferred = None, {}
    state = SyncState(
        source=str(source),
        channel=channel,
        every_s=every_s,
        last_check=now,
        last_success=now if error is None else (keep.last_success if keep else None),
        last_change=(
            now
            if result is not None and (result.changed or result.removed)
            else (keep.last_change if keep else None)
        ),
        last_error=(
            None
            if error is None
            else SyncError(at=now, reason=error_reason(error), message=str(error)[:2000])
        ),
        consecutive_failures=failures,
        next_attempt=now + delay,
        index_version=index_version,
        deferred=deferred,
        last_result="failed" if error else "unchanged" if unchanged else "pulled",
    )
    write_sync_state(device_dir, state)
    return SyncOutcome(
        state=state,
        result=result,
        error=None if error is None else f"{type(error).__name__}: {error}",
    )


def run_agent(
    source: str | Path,
    device_dir: str | Path,
    *,
    channel: str = "stable",
    every_s: float = 900.0,
    jitter: float = 0.0,
    max_backoff_s: float = MAX_BACKOFF_S,
    once: bool = False,
    force: bool = False,
    stop: threading.Event | None = None,
    on_attempt: Callable[[SyncOutcome], None] | None = None,
    trusted_keys: Sequence[PublicKey] = (),
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    **pull_options: Any,
) -> SyncOutcome | None:
    """Sync ``device_dir`` from ``source`` until ``stop`` is set (or once, with ``once``).

    An agent started while ``D/sync.json`` says it is backing off waits until the attempt that
    is due (``once``: returns a skipped outcome at once, unless ``force``). Returns the last
    outcome (None when stopped before any attempt).
    """
    stop = stop or threading.Event()
    last: SyncOutcome | None = None
    keys = list(trusted_keys)
    while not stop.is_set():
        state = read_sync_state(device_dir)
        due = (
            state.next_attempt
            if state is not None and state.consecutive_failures and state.channel == channel
            else None
        )
        wait = 0.0 if force or due is None else max(0.0, due - clock())
        if once and wait > 0:
            assert state is not None
            return SyncOutcome(state=state, result=None, error=None, skipped=True)
        if wait > 0 and stop.wait(wait):
            break
        force = False  # only the first attempt skips a backoff
        last = sync_once(
            source,
            device_dir,
            channel=channel,
            every_s=every_s,
            jitter=jitter,
            max_backoff_s=max_backoff_s,
            rng=rng,
            clock=clock,
            trusted_keys=keys,
            **pull_options,
        )
        if on_attempt is not None:
            on_attempt(last)
        if once:
            break
        wait = max(0.0, (last.state.next_attempt or 0.0) - clock())
        if stop.wait(wait):
            break
    return last
