"""`pld device pull`: fetch a channel's signed index, verify it and every new bundle, prime them,
then activate them all with one atomic switch.

The order keeps two promises. A device runs only what its trusted keys signed, never older
than what it trusted before: every refusal happens before anything under the device directory
changes except staging, objects and states. A device never ends up without a working
classifier: the switch is one ``os.replace`` (``DeviceDir.activate``), and trusted state is
written after it. Checks are the pure functions of ``signed`` and ``index``; files are
``DeviceDir``'s; priming is ``device_prime``'s.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

import pld.models as models
from pld.errors import FleetError, RejectedError
from pld.runtime import Bundle, parse_bundle

from .acceptance import (
    MAX_CHECK_BYTES,
    CheckSet,
    check_file_bytes,
    judge,
    measure,
    parse_check_set,
)
from .device import (
    ActiveEntry,
    ChannelState,
    DeviceDir,
    Manifest,
    TrustedState,
    check_name,
    iso_now,
)
from .device_prime import PrimeJob, prime
from .index import CheckRef, IndexEntry, check_bundle_bytes, check_index, utc_now
from .keys import PublicKey
from .pull_faults import pause
from .pull_fetch import check_student, download, read_limited
from .pull_keys import catch_up, index_map, starting_keys
from .rollout import bucket, choose
from .signed import verify_document
from .store import PULL_TIMEOUT_S, REQUEST_TIMEOUT_S, Deadlines, Store

__all__ = ["PullResult", "PullTimings", "TaskChange", "TaskTimings", "pull"]

MAX_INDEX_BYTES = 4 << 20  # an index names a few hundred bytes per task
MAX_KEYS_BYTES = 1 << 20


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


class _Clock:
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
    """
    check_name(channel, "channel")
    deadlines = Deadlines(request_timeout, pull_timeout)
    dev, t_start = DeviceDir(device_dir), time.perf_counter()
    store = Store(source, deadlines=deadlines)
    with dev.lock("pull"):
        dev.clean_stale()
        try:
            job = _Pull(dev, store, channel, allow_model_mismatch, model, log, t_start)
            job.trust(trusted_keys, threshold)
            job.check_index(now or utc_now())
            job.fetch()
            pause("verified")
            job.prime(only_checked=not prime)
            job.activate()
            return job.result()
        finally:
            shutil.rmtree(dev.staging, ignore_errors=True)


class _Pull:
    """One pull's state, step by step; every step before ``activate`` may refuse."""

    def __init__(
        self,
        dev: DeviceDir,
        store: Store,
        channel: str,
        allow: bool,
        model: str | None,
        log: Callable[[str], None] | None,
        t_start: float,
    ) -> None:
        self.t_start = t_start  # state is read here, with the lock held
        self.dev, self.store, self.channel = dev, store, channel
        self.allow, self.model = allow, model
        self.say = log or (lambda _msg: None)
        self.clock = _Clock()
        self.trusted = dev.read_trusted()
        self.manifest = dev.manifest()
        self.active = dict(self.manifest.tasks) if self.manifest else {}
        self.todo: dict[str, IndexEntry] = {}
        self.ready: dict[str, tuple[Bundle, str, bool]] = {}  # bundle, model, mismatch
        self.checks: dict[str, CheckSet] = {}
        self.accepted: dict[str, float] = {}
        self.per_task: dict[str, dict[str, float]] = {}
        self.unchanged: list[str] = []
        self.held: list[str] = []
        self.removed: list[str] = []
        self.changes: list[TaskChange] = []
        self.deferred: dict[str, str] = {}
        self.generation = dev.current_generation()
        self.device_id = dev.device_id()

    def trust(self, given: Sequence[PublicKey], threshold: int) -> None:
        """Settle the keys: the stored set (or ``given``), then any signed newer key set."""
        keyset = starting_keys(self.trusted, given, threshold, self.say)
        self.start_key_version = keyset.version

        def read(name: str) -> bytes | None:
            with self.clock("fetch"):
                return read_limited(self.store, name, MAX_KEYS_BYTES, optional=True)

        with self.clock("verify"):
            self.keyset = catch_up(read, keyset, threshold, self.say)
        # --threshold is about the keys given on the first pull; once root names index keys,
        # the index role's own threshold rules indexes
        role = self.keyset.index_role()
        self.need = role.threshold if self.keyset.index else max(threshold, role.threshold)
        if self.need > len(role.keys):
            raise FleetError(
                f"--threshold {self.need} needs {self.need} trusted keys; the device trusts "
                f"{len(role.keys)}"
            )

    def check_index(self, now: dt.datetime) -> None:
        """Fetch and verify the channel's index, then sort its tasks into what to do."""
        rel = f"channels/{self.channel}/index.json"
        with self.clock("fetch"):
            data = read_limited(self.store, rel, MAX_INDEX_BYTES)
        assert data is not None
        with self.clock("verify"):
            what = f"the index of channel {self.channel!r} ({self.store.path(rel)})"
            payload = verify_document(data, index_map(self.keyset), threshold=self.need, what=what)
            # the newest version this device accepted: trusted.json, or the active generation
            # when a pull was killed between its switch and writing trusted.json; a version
            # accepted before root reset the floors (floors_reset) is no floor any more
            epoch = self.keyset.floors_reset
            known = [
                c
                for s in (self.trusted, self.manifest)
                if s is not None
                and (c := s.channels.get(self.channel)) is not None
                and c.epoch >= epoch
            ]
            self.before = max(known, key=lambda c: c.version) if known else None
            self.index = check_index(
                payload,
                channel=self.channel,
                now=now,
                trusted_version=self.before.version if self.before else None,
                trusted_sha256=self.before.sha256 if self.before else None,
            )
            self.index_state = ChannelState(
                version=self.index.version,
                sha256=hashlib.sha256(payload).hexdigest(),
                epoch=epoch,
            )
            for task in self.index.tasks:
                check_name(task, "task")
        self.say(
            f"index of channel {self.channel!r}: version {self.index.version}, "
            f"{len(self.index.tasks)} task(s)"
        )
        for task, entry in sorted(self.index.tasks.items()):
            now_active = self.active.get(task)
            choice = choose(
                entry,
                now_active.sha256 if now_active else None,
                now_active.held_sha256 if now_active else None,
                bucket(self.device_id, self.channel, task),
            )
            if choice.deferred:
                self.deferred[task] = entry.version
                self.say(
                    f"{task}: {entry.version} is rolled out to {entry.rollout}% of devices, "
                    "not (yet) this one"
                )
            if choice.action == "unchanged":
                self.unchanged.append(task)
            elif choice.action == "held":
                self.held.append(task)
                self.say(f"{task}: rolled back on this device from {choice.entry.version}; left so")
            else:
                self.todo[task] = choice.entry
        self.removed = sorted(
            t
            for t, e in self.active.items()
            if e.channel == self.channel and t not in self.index.tasks
        )

    def fetch(self) -> None:
        """Fetch each new bundle into staging, verify it, and keep it in ``objects/``."""
        resolved: dict[str, models.ResolvedModel] = {}
        staging = self.dev.fresh_staging() if self.todo else self.dev.staging
        for task, entry in self.todo.items():
            spent = self.per_task.setdefault(task, {})
            data = self.dev.read_object(entry.sha256, entry.length)  # from an earlier pull
            kept = data is not None
            path = self.dev.object_path(entry.sha256) if kept else staging / f"{entry.sha256}.part"
            if data is None:
                with self.clock("fetch", spent):
                    data = download(self.store, entry, task, path)
                with self.clock("verify", spent):
                    check_bundle_bytes(data, entry, task)
            with self.clock("verify", spent):
                # parsed from the very bytes whose length and sha256 were checked, never from
                # a second read of the file
                bundle = parse_bundle(data, source=self.store.path(entry.file))
                run_on, mismatch = check_student(
                    bundle, entry, task, self.model, self.allow, resolved
                )
                if not kept:
                    self.dev.add_object(path, entry.sha256)
            if entry.check is not None:
                self.checks[task] = self._check_set(task, entry, entry.check, bundle, spent)
            self.ready[task] = (bundle, run_on, mismatch)
            self.say(f"{task}: {bundle.name} {bundle.version} verified ({entry.length} bytes)")

    def _check_set(
        self, task: str, entry: IndexEntry, ref: CheckRef, bundle: Bundle, spent: dict[str, float]
    ) -> CheckSet:
        """Fetch the entry's acceptance check set and verify it like a bundle."""
        if ref.length > MAX_CHECK_BYTES:
            raise RejectedError(
                f"the check set of task {task!r} has {ref.length} bytes, over {MAX_CHECK_BYTES}"
            )
        with self.clock("fetch", spent):
            data = read_limited(self.store, ref.file, ref.length)
        assert data is not None
        with self.clock("verify", spent):
            check_file_bytes(data, ref, task)
            return parse_check_set(data, task, entry.sha256, bundle.labels)

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
