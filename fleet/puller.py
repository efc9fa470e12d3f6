"""`pld device pull`: fetch a channel's signed index, verify it and every new bundle, prime them,
then activate them all with one atomic switch.

The order keeps two promises. A device runs only what its trusted keys signed, never older
than what it trusted before: every refusal happens before anything under the device directory
changes except staging, objects and states. A device never ends up without a working
classifier: the switch is one ``os.replace`` (``DeviceDir.activate``), and trusted state is
written after it. Checks are the pure functions of ``signed`` and ``index``, and the steps
that run them are ``pull_checks``'s; files are ``DeviceDir``'s; priming is ``device_prime``'s.

From an HTTP store the index is read first, and once a pull has completed its ETag or
Last-Modified is recorded (``sync_state.IndexValidator``); ``if_changed`` sends them back, and a
304 means only "do nothing this time": nothing is downloaded, verified or changed.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from pld.errors import FleetError

from .acceptance import judge, measure
from .device import DeviceDir, check_name
from .device_prime import PrimeJob, prime
from .device_schema import ActiveEntry, Manifest, TrustedState, iso_now
from .index import utc_now
from .keys import PublicKey
from .pull_checks import MAX_INDEX_BYTES, CheckedPull
from .pull_faults import pause
from .pull_result import PullResult, PullTimings, TaskChange, TaskTimings
from .store import PULL_TIMEOUT_S, REQUEST_TIMEOUT_S, Deadlines, Store, Validators
from .sync_state import IndexValidator, read_validators, write_validators

__all__ = ["IndexUnchanged", "pull"]

# a recorded validator is trusted for a day at most: then the index is read whole once more, so
# that a store that wrongly answers 304 (or an ETag reused for new bytes) delays an update by a
# day at worst, at the cost of one index download a day
VALIDATOR_MAX_AGE_S = 86400.0


class IndexUnchanged(Exception):  # noqa: N818 (not an error: the outcome of a check)
    """``pull(if_changed=True)``: the store answered 304 Not Modified for the channel's index
    since the last completed pull, so nothing was downloaded, checked or changed."""

    def __init__(self, channel: str, version: int, deferred: dict[str, str]) -> None:
        super().__init__(f"the index of channel {channel!r} is unchanged (version {version})")
        self.channel, self.version, self.deferred = channel, version, deferred


def pull(
    source: str | Path,
    device_dir: str | Path,
    *,
    channel: str = "stable",
    trusted_keys: Sequence[PublicKey] = (),
    threshold: int = 1,
    allow_model_mismatch: bool = False,
    model: str | None = None,
    prime: bool = True,
    request_timeout: float = REQUEST_TIMEOUT_S,
    pull_timeout: float = PULL_TIMEOUT_S,
    now: dt.datetime | None = None,
    log: Callable[[str], None] | None = None,
    if_changed: bool = False,
) -> PullResult:
    """Update ``device_dir`` to what channel ``channel`` of ``source`` names, or refuse.

    ``trusted_keys`` are needed on the first pull only: the device keeps its key set, and
    later key sets must come signed (``keys.json``). ``threshold`` signatures from distinct
    trusted keys are required (at least the stored key set's). ``model`` overrides the model
    the bundles run on; ``now`` the device clock (for tests). Every request to the store must
    answer within ``request_timeout`` seconds, and all of them within ``pull_timeout`` seconds
    of the start (priming, after the downloads, is not cut short): a store that stalls fails
    the pull with ``DeadlineError`` and releases the lock, the active bundles untouched.
    ``prime=False`` activates without priming (the first classifier to open a bundle primes
    it): for fleet simulations and tests, not for a device that serves.

    A bundle whose index entry names an acceptance check set (``acceptance``) is activated
    only if it classifies those inputs on this device about as well as where it was published
    (checks run even with ``prime=False``).

    Each task's bundle is chosen by ``rollout.choose``: inside a staged rollout's share (by
    the device id in ``D/device-id``, made on the first pull) the index's bundle, outside it
    the index's ``previous`` one.

    ``if_changed`` (the sync agent): ask an HTTP store for the index only if it changed since
    the last completed pull, when the device is still as that pull left it; on 304 raise
    ``IndexUnchanged`` having changed nothing. Other stores are read whole, as without it.
    """
    check_name(channel, "channel")
    deadlines = Deadlines(request_timeout, pull_timeout)
    dev, t_start = DeviceDir(device_dir), time.perf_counter()
    store = Store(source, deadlines=deadlines)
    at = now or utc_now()
    options = (
        f"threshold={threshold} model={model or ''} allow_model_mismatch={allow_model_mismatch}"
    )
    with dev.lock("pull"):
        dev.clean_stale()
        try:
            job = _Pull(dev, store, channel, allow_model_mismatch, model, log, t_start)
            got = job.read_index(options, at, if_changed=if_changed)
            job.trust(trusted_keys, threshold)
            job.check_index(at)
            job.fetch()
            pause("verified")
            job.prime(only_checked=not prime)
            job.activate()
            result = job.result()
            job.remember(got, options, at)
            return result
        finally:
            shutil.rmtree(dev.staging, ignore_errors=True)


class _Pull(CheckedPull):
    """One pull's first read (the index, from an HTTP store) and its last steps, once every
    bundle verified: prime and check, switch, report, record the index's validators."""

    def read_index(self, options: str, at: dt.datetime, *, if_changed: bool) -> Validators:
        """Read an HTTP store's index before anything else (``check_index`` verifies these very
        bytes), only if it changed when ``if_changed`` and a validator is usable; raise
        ``IndexUnchanged`` on 304. Other stores: nothing here, ``check_index`` reads it."""
        if not self.store.http:
            return Validators()
        rel = f"channels/{self.channel}/index.json"
        record = self._usable(options, at) if if_changed else None
        sent = Validators(record.etag, record.last_modified) if record else None
        with self.clock("fetch"):
            data, got = self.store.read_if_changed(rel, limit=MAX_INDEX_BYTES, sent=sent)
        if data is None:
            assert record is not None  # read_if_changed refuses a 304 to no condition
            self.say(f"index of channel {self.channel!r}: unchanged (HTTP 304), version "
                     f"{record.version}; nothing to do")  # fmt: skip
            raise IndexUnchanged(self.channel, record.version, dict(record.deferred))
        self.store.keep(rel, data)
        return got

    def _usable(self, options: str, at: dt.datetime) -> IndexValidator | None:
        """This channel's recorded validator, if the device is still as the pull that recorded
        it left it, with the same source and options, the index unexpired and the record
        younger than ``VALIDATOR_MAX_AGE_S``; otherwise None (read the index whole)."""
        record = read_validators(self.dev.root).get(self.channel)
        trusted = self.trusted.channels.get(self.channel) if self.trusted else None
        if record is None or trusted is None or self.trusted is None:
            return None
        same = (
            record.source == self.store.url
            and record.options == options
            and (record.version, record.sha256) == (trusted.version, trusted.sha256)
            and record.generation == self.generation
            and record.key_version == self.trusted.keyset.version
        )
        try:
            expires = dt.datetime.fromisoformat(record.expires)
        except ValueError:
            return None
        expires = expires if expires.tzinfo else expires.replace(tzinfo=dt.UTC)
        fresh = at < expires and at.timestamp() < record.recorded_at + VALIDATOR_MAX_AGE_S
        return record if same and fresh else None

    def remember(self, got: Validators, options: str, at: dt.datetime) -> None:
        """After a completed pull: record the validators its index came with (or drop the
        channel's record when there were none). A failed write costs a full read next time."""
        if not self.store.http:
            return
        records = read_validators(self.dev.root)
        if got.etag is None and got.last_modified is None:
            if records.pop(self.channel, None) is None:
                return
        else:
            records[self.channel] = IndexValidator(
                source=self.store.url,
                etag=got.etag,
                last_modified=got.last_modified,
                version=self.index.version,
                sha256=self.index_state.sha256,
                generation=self.dev.current_generation(),
                key_version=self.keyset.version,
                options=options,
                expires=self.index.expires,
                recorded_at=at.timestamp(),
                deferred=dict(self.deferred),
            )
        try:
            write_validators(self.dev.root, records)
        except OSError as exc:
            self.say(
                f"note: cannot record the index's validators ({exc}); the next check reads it whole"
            )

    def prime(self, *, only_checked: bool = False) -> None:
        """Prime every new bundle's prefix state into ``D/states`` before the switch, and run
        the acceptance checks on the primed classifiers (``only_checked``: just those)."""
        jobs = [
            PrimeJob(
                t, self.dev.object_path(self.todo[t].sha256), run_on, mismatch, self.checks.get(t)
            )
            for t, (_, run_on, mismatch) in self.ready.items()
            if not only_checked or t in self.checks
        ]
        if not jobs:
            return

        def accept(job: PrimeJob, clf: Any) -> None:
            if job.check is None:
                return
            accuracy = measure(clf, job.check)
            self.say(
                f"{job.task}: acceptance check {accuracy:.1%} on {len(job.check.cases)} inputs "
                f"(recorded {job.check.accuracy:.1%}, tolerance {job.check.tolerance:.1%})"
            )
            judge(job.check, accuracy, self.todo[job.task].version)
            self.accepted[job.task] = accuracy

        with self.clock("prime"):
            try:
                ms, _ = prime(
                    jobs,
                    self.dev.states,
                    on_model_loaded=lambda: pause("priming"),
                    on_opened=accept,
                    log=self.say,
                )
            except OSError as exc:
                raise FleetError(
                    f"cannot save a prefix state in {self.dev.states} ({exc.strerror or exc}); "
                    "free space on the device and pull again (the active bundles are untouched)"
                ) from None
        for task, value in ms.items():
            self.per_task[task]["prime"] = value

    def _entry(self, task: str, stamp: str) -> ActiveEntry:
        bundle, run_on, mismatch = self.ready[task]
        entry = self.todo[task]
        return ActiveEntry(
            name=bundle.name,
            version=bundle.version,
            sha256=entry.sha256,
            length=entry.length,
            channel=self.channel,
            index_version=self.index.version,
            student_model=bundle.student.model,
            activated_at=stamp,
            model=None if run_on == bundle.student.model else run_on,
            allow_model_mismatch=mismatch,
        )

    def activate(self) -> None:
        """Switch to a new generation (when anything changed), then write trusted state."""
        manifest = self.manifest
        channels = dict(manifest.channels) if manifest else {}
        channels[self.channel] = self.index_state
        with self.clock("activate"):
            if self.ready or self.removed:
                stamp = iso_now()
                tasks = dict(self.active)
                lkg = dict(manifest.last_known_good) if manifest else {}
                for task in self.removed:
                    tasks.pop(task, None)
                    lkg.pop(task, None)
                for task in self.ready:
                    old = self.active.get(task)
                    tasks[task] = self._entry(task, stamp)
                    if old is not None:
                        lkg[task] = msgspec.structs.replace(old, held_sha256=None)
                new = Manifest(
                    generation=self.dev.next_generation(),
                    reason="pull",
                    channel=self.channel,
                    index_version=self.index.version,
                    activated_at=stamp,
                    tasks=tasks,
                    last_known_good=lkg,
                    channels=channels,
                )
                try:
                    self.dev.activate(new, before_switch=lambda: pause("activate"))
                except OSError as exc:
                    raise FleetError(
                        f"cannot build generation {new.generation} in {self.dev.root} ({exc}); "
                        "free space on the device and pull again (the active bundles are untouched)"
                    ) from None
                self.generation = new.generation
            trusted_channels = dict(self.trusted.channels) if self.trusted else {}
            trusted_channels[self.channel] = self.index_state
            state = TrustedState(keyset=self.keyset, channels=trusted_channels)
            if state != self.trusted:
                self.dev.write_trusted(state)
            if self.ready or self.removed:
                self.dev.clean_unreferenced()

    def result(self) -> PullResult:
        """What this pull did."""
        changes = []
        for task, (bundle, _, mismatch) in self.ready.items():
            old, spent = self.active.get(task), self.per_task[task]
            changes.append(
                TaskChange(
                    task=task,
                    name=bundle.name,
                    old_version=old.version if old else None,
                    new_version=bundle.version,
                    old_sha256=old.sha256 if old else None,
                    new_sha256=self.todo[task].sha256,
                    allow_model_mismatch=mismatch,
                    acceptance=self.accepted.get(task),
                    timings=TaskTimings(
                        fetch_ms=spent.get("fetch", 0.0),
                        verify_ms=spent.get("verify", 0.0),
                        prime_ms=spent.get("prime", 0.0),
                    ),
                )
            )
        ms = self.clock.ms
        return PullResult(
            device_dir=str(self.dev.root),
            source=self.store.url,
            channel=self.channel,
            index_version=self.index.version,
            previous_index_version=self.before.version if self.before else None,
            generation=self.generation,
            changed=changes,
            unchanged=self.unchanged,
            removed=self.removed,
            held=self.held,
            key_version=self.keyset.version,
            keys_rotated=self.keyset.version != self.start_key_version,
            device_id=self.device_id,
            deferred=self.deferred,
            timings=PullTimings(
                fetch_ms=ms["fetch"],
                verify_ms=ms["verify"],
                prime_ms=ms["prime"],
                activate_ms=ms["activate"],
                total_ms=(time.perf_counter() - self.t_start) * 1000,
            ),
        )
