"""What a device runs (``status``) and putting the last-known-good back (``rollback``).

Both read the device directory through ``DeviceDir``; ``rollback`` primes the bundles it puts
back, then switches atomically like a pull. A rollback never touches trusted state: a device
never accepts an older index, so a fleet-wide rollback is a new signed publication that
carries the old content (a higher index version), and this command is one device's emergency
brake. A task rolled back here stays so while its channel's index still names the bundle it
was rolled back from; the next publication of another bundle for it moves it on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from pld.errors import FleetError

from .device import DeviceDir
from .device_schema import ActiveEntry, Manifest, iso_now
from .sync_state import SyncState, read_sync_state

__all__ = ["BundleRef", "DeviceStatus", "RollbackResult", "TaskStatus", "rollback", "status"]


class _S(msgspec.Struct, frozen=True, kw_only=True):
    pass


class BundleRef(_S, frozen=True):
    """A bundle by name, version and file sha256."""

    name: str
    version: str
    sha256: str


class TaskStatus(_S, frozen=True):
    """One task's active bundle, where it came from, and its last-known-good."""

    task: str
    name: str
    version: str
    sha256: str
    channel: str
    index_version: int
    activated_at: str
    model: str
    allow_model_mismatch: bool
    held_from: str | None  # rolled back on this device from this sha256
    last_known_good: BundleRef | None


class DeviceStatus(_S, frozen=True):
    """What a device directory runs and trusts."""

    device_dir: str
    generation: int | None
    activated_at: str | None
    tasks: list[TaskStatus]
    key_version: int | None
    threshold: int | None
    keyids: list[str]  # root keys (they sign key sets)
    index_keyids: list[str]  # the keys that sign channel indexes
    channels: dict[str, int]
    device_id: str | None = None  # its staged-rollout identity (made by the first pull)
    sync: SyncState | None = None  # the sync agent's last attempt (D/sync.json)


def _ref(entry: ActiveEntry | None) -> BundleRef | None:
    if entry is None:
        return None
    return BundleRef(name=entry.name, version=entry.version, sha256=entry.sha256)


def status(device_dir: str | Path) -> DeviceStatus:
    """What ``device_dir`` runs: every task's active bundle and last-known-good, and what it
    trusts (key ids, threshold, channel versions). Reads only; takes no lock.
    """
    dev = DeviceDir(device_dir)
    if not dev.root.is_dir():
        raise FleetError(f"device directory {dev.root} does not exist; run pld device pull first")
    manifest = dev.manifest()
    trusted = dev.read_trusted()
    tasks = []
    if manifest is not None:
        for task, e in sorted(manifest.tasks.items()):
            tasks.append(
                TaskStatus(
                    task=task,
                    name=e.name,
                    version=e.version,
                    sha256=e.sha256,
                    channel=e.channel,
                    index_version=e.index_version,
                    activated_at=e.activated_at,
                    model=e.model or e.student_model,
                    allow_model_mismatch=e.allow_model_mismatch,
                    held_from=e.held_sha256,
                    last_known_good=_ref(manifest.last_known_good.get(task)),
                )
            )
    epoch = trusted.keyset.floors_reset if trusted else 0  # older states are no floor
    channels = {
        c: s.version for c, s in (manifest.channels if manifest else {}).items() if s.epoch >= epoch
    }
    for c, s in (trusted.channels if trusted else {}).items():
        if s.epoch >= epoch:
            channels[c] = max(s.version, channels.get(c, 0))
    return DeviceStatus(
        device_dir=str(dev.root),
        generation=manifest.generation if manifest else None,
        activated_at=manifest.activated_at if manifest else None,
        tasks=tasks,
        key_version=trusted.keyset.version if trusted else None,
        threshold=trusted.keyset.threshold if trusted else None,
        keyids=sorted(trusted.keyset.keys) if trusted else [],
        index_keyids=sorted(trusted.keyset.index_role().keys) if trusted else [],
        channels=dict(sorted(channels.items())),
        device_id=dev.read_device_id(),
        sync=read_sync_state(dev.root),
    )


class RolledBack(_S, frozen=True):
    """One task put back on its last-known-good."""

    task: str
    from_version: str
    to_version: str
    from_sha256: str
    to_sha256: str


class RollbackResult(_S, frozen=True):
    """What a rollback did."""

    device_dir: str
    generation: int
    rolled_back: list[RolledBack]
    skipped: list[str]  # tasks without a last-known-good (rollback of every task)
    total_ms: float


def rollback(
    device_dir: str | Path, task: str | None = None, *, log: Callable[[str], None] | None = None
) -> RollbackResult:
    """Put the last-known-good of ``task`` (or of every task that has one) back, atomically."""
    from .device_prime import PrimeJob, prime

    t0 = time.perf_counter()
    dev = DeviceDir(device_dir)
    if not dev.root.is_dir():
        raise FleetError(f"device directory {dev.root} does not exist; run pld device pull first")
    with dev.lock("rollback"):
        dev.clean_stale()
        manifest = dev.manifest()
        if manifest is None or not manifest.tasks:
            raise FleetError(f"no active bundle on {dev.root}; run pld device pull first")
        if task is not None and task not in manifest.tasks:
            raise FleetError(
                f"no such task {task!r} on {dev.root}; active tasks: {', '.join(sorted(manifest.tasks))}"
            )
        wanted = [task] if task is not None else sorted(manifest.tasks)
        todo = [t for t in wanted if t in manifest.last_known_good]
        if not todo:
            which = f"task {task!r}" if task is not None else "any task"
            raise FleetError(
                f"nothing to roll back to for {which} on {dev.root}: no earlier bundle was active "
                "(or it was already rolled back); publish the bundle you want as a new version"
            )
        lkg = {t: manifest.last_known_good[t] for t in todo}
        for t, e in lkg.items():
            if dev.valid_object(e.sha256, e.length) is None:
                raise FleetError(
                    f"the last-known-good file of task {t!r} ({e.sha256[:12]}...) is missing or "
                    f"damaged in {dev.objects}; publish the bundle you want as a new version"
                )
        jobs = [
            PrimeJob(
                t, dev.object_path(e.sha256), e.model or e.student_model, e.allow_model_mismatch
            )
            for t, e in lkg.items()
        ]
        prime(jobs, dev.states, log=log)
        stamp = iso_now()
        tasks = dict(manifest.tasks)
        last = dict(manifest.last_known_good)
        for t, e in lkg.items():
            tasks[t] = msgspec.structs.replace(
                e, activated_at=stamp, held_sha256=manifest.tasks[t].sha256
            )
            del last[t]
        new = Manifest(
            generation=dev.next_generation(),
            reason="rollback",
            channel=manifest.channel,
            index_version=manifest.index_version,
            activated_at=stamp,
            tasks=tasks,
            last_known_good=last,
            channels=manifest.channels,
        )
        dev.activate(new)
        dev.clean_unreferenced()
    return RollbackResult(
        device_dir=str(dev.root),
        generation=new.generation,
        rolled_back=[
            RolledBack(
                task=t,
                from_version=manifest.tasks[t].version,
                to_version=e.version,
                from_sha256=manifest.tasks[t].sha256,
                to_sha256=e.sha256,
            )
            for t, e in lkg.items()
        ],
        skipped=[t for t in wanted if t not in lkg],
        total_ms=(time.perf_counter() - t0) * 1000,
    )
