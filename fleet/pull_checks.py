"""The steps of a pull that decide and verify, before anything is primed or switched: settle
the trusted keys, fetch and verify the channel's index (never older than what the device
trusted), sort its tasks by ``rollout.choose``, then fetch and verify each new bundle and its
acceptance check set. Every step may refuse; under the device directory only staging and
``objects/`` change. Checks are the pure functions of ``signed`` and ``index``; priming and the
switch are ``puller``'s.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence

import pld.models as models
from pld.errors import FleetError, RejectedError
from pld.runtime import Bundle, parse_bundle

from .acceptance import MAX_CHECK_BYTES, CheckSet, check_file_bytes, parse_check_set
from .device import DeviceDir, check_name
from .device_schema import ChannelState
from .index import CheckRef, IndexEntry, check_bundle_bytes, check_index
from .keys import PublicKey
from .pull_fetch import check_student, download, read_limited
from .pull_keys import catch_up, index_map, starting_keys
from .pull_result import Clock, TaskChange
from .rollout import bucket, choose
from .signed import verify_document
from .store import Store

__all__ = ["CheckedPull"]

MAX_INDEX_BYTES = 4 << 20  # an index names a few hundred bytes per task
MAX_KEYS_BYTES = 1 << 20


class CheckedPull:
    """One pull's state, step by step; every step before ``activate`` may refuse. Here: the
    steps up to the verified bundles (``puller`` primes, switches and reports)."""

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
        self.clock = Clock()
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
