"""The publisher's side: copy bundles into a store and sign the channel's next index over them.

A publication is files under DEST (a directory or any writable fsspec URL)::

    bundles/<sha256 of the file bytes>.pld.json   the bundle files, content-addressed
    checks/<sha256>.json                            acceptance check sets, content-addressed
    channels/<channel>/index.json                   the channel's latest signed index
    channels/<channel>/index-<version>.json         every version published, kept for audit
    keys.json                                       the signed key set, once keys were rotated
    keys-<version>.json                             every key set, kept for audit

Files are written bundles first, then ``index-<version>.json``, then ``index.json``, so a
device never reads an index that names a file not yet there. Validation of bundles is the
runtime's; what devices check is ``pld.fleet.index``'s; verifying the store before signing
again is ``publish_store``'s; key rotation is ``publish_keys``'s. Knows nothing about devices.

A fleet-wide rollback is a new publication of the old bundle file: the index version still
goes up, so devices take it (they never accept an older index).

A staged rollout (``rollout`` < 100) names, beside the new bundle, the one every device ran
before (``previous``); ``pld channel promote|halt`` (``channel.set_rollout``) signs the next
index with another share. See ``rollout`` for what a device does with them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from pld.errors import BundleError, FleetError
from pld.runtime import parse_bundle, resolve_bundle_path

from .acceptance import parse_check_set
from .index import ChannelIndex, CheckRef, IndexEntry, check_entry
from .keys import PublicKey, SigningKey
from .publish_store import channel_dir, current_index, signing_store, write_index

__all__ = ["PublishResult", "PublishedTask", "publish"]


class PublishedTask(msgspec.Struct, frozen=True, kw_only=True):
    """One task of a publication: its bundle, where it went, and whether that file is new."""

    task: str
    name: str
    version: str
    sha256: str
    file: str
    new: bool
    rollout: int = 100
    previous_version: str | None = None  # what devices outside the share run


class PublishResult(msgspec.Struct, frozen=True, kw_only=True):
    """What ``publish`` wrote: the channel's new index version and each task published."""

    channel: str
    version: int
    index: str  # the full path (or URL) of the channel's index.json
    expires: str
    tasks: list[PublishedTask]


def _read_bundles(bundles: Sequence[str | Path]) -> dict[str, tuple[bytes, IndexEntry, str]]:
    """task -> (file bytes, index entry, source), every bundle validated on the exact bytes."""
    out: dict[str, tuple[bytes, IndexEntry, str]] = {}
    for item in bundles:
        path = resolve_bundle_path(item)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read bundle {path} ({exc})") from None
        # the bytes validated are the bytes published: no second read between the two
        bundle = parse_bundle(data, source=str(path))
        task = bundle.task.name
        if task in out:
            raise FleetError(
                f"two bundles for task {task!r} ({out[task][2]} and {path}); a channel serves "
                "one bundle per task: publish one of them"
            )
        sha = hashlib.sha256(data).hexdigest()
        entry = IndexEntry(
            file=f"bundles/{sha}.pld.json",
            name=bundle.name,
            version=bundle.version,
            length=len(data),
            sha256=sha,
            student_model=bundle.student.model,
            student_sha256=bundle.student.sha256,
        )
        check_entry(entry, task)  # what a device would refuse is never published
        out[task] = (data, entry, str(path))
    return out


def publish(
    bundles: Sequence[str | Path],
    dest: str | Path,
    *,
    channel: str,
    keys: Sequence[SigningKey],
    root_keys: Sequence[PublicKey] = (),
    carry: bool = True,
    rollout: int = 100,
    checks: Mapping[str, bytes] | None = None,
    expires_in_days: float = 30,
    now: dt.datetime | None = None,
) -> PublishResult:
    """Copy ``bundles`` (paths or shipped names) to ``dest`` and sign the channel's next index.

    The index carries the channel's other tasks forward, replaces the tasks published, and
    gets the previous version + 1; it is signed by every key in ``keys``. Nothing is carried
    forward before it verified: ``keys.json`` from ``root_keys`` (default: ``keys`` themselves,
    a single-key setup), the previous index against the index keys that key set names.
    ``carry=False`` carries no task (after a rotation that reset the version floors).
    ``rollout`` < 100 starts a staged rollout: only that share of devices take the bundles, the
    others keep (or take) the bundle the channel served before, named as ``previous``.
    ``checks`` maps a task to an acceptance check set's bytes (``acceptance.make_check_set``):
    written as ``checks/<sha256>.json`` and named by the task's entry, so a device runs it
    before it activates the bundle.
    """
    if not bundles:
        raise FleetError("nothing to publish; pass at least one bundle")
    folder = channel_dir(channel)
    read = _read_bundles(bundles)
    store, keys, keyset = signing_store(
        dest, keys, root_keys, expires_in_days=expires_in_days, rollout=rollout, doing="publish"
    )
    previous = current_index(store, channel, keyset, carry=carry)
    version = previous.version + 1 if previous else 1
    audit = f"{folder}/index-{version}.json"
    if store.exists(audit):
        raise FleetError(
            f"{store.path(audit)} exists, but {folder}/index.json is "
            f"{'version ' + str(previous.version) if previous else 'missing'}; refusing to "
            "overwrite a published version: restore index.json from the newest index-<N>.json"
        )

    for task in checks or {}:
        if task not in read:
            raise FleetError(
                f"a check set is given for task {task!r}, but no bundle for it; tasks published: "
                f"{', '.join(sorted(read))}"
            )
    check_files: dict[str, tuple[str, bytes]] = {}
    for task, data in (checks or {}).items():
        raw, entry, src = read[task]
        parse_check_set(data, task, entry.sha256, parse_bundle(raw, source=src).labels)
        sha = hashlib.sha256(data).hexdigest()
        ref = CheckRef(file=f"checks/{sha}.json", length=len(data), sha256=sha)
        check_files[task] = (ref.file, data)
        read[task] = (raw, msgspec.structs.replace(entry, check=ref), src)
    if rollout < 100:
        read = {
            task: (data, _staged(entry, previous, task, channel, rollout, carry), src)
            for task, (data, entry, src) in read.items()
        }
    for rel, data in check_files.values():
        if not (store.exists(rel) and store.read(rel, limit=len(data)) == data):
            store.write(rel, data)
    published: list[PublishedTask] = []
    for task, (data, entry, _) in read.items():
        # content-addressed: a file of that name with the same bytes is this very bundle
        same = store.exists(entry.file) and store.read(entry.file, limit=len(data)) == data
        if not same:  # new, or a damaged copy to repair
            store.write(entry.file, data)
        published.append(
            PublishedTask(
                task=task,
                name=entry.name,
                version=entry.version,
                sha256=entry.sha256,
                file=entry.file,
                new=not same,
                rollout=entry.rollout,
                previous_version=entry.previous.version if entry.previous else None,
            )
        )

    tasks = dict(previous.tasks) if previous and carry else {}
    tasks.update({task: entry for task, (_, entry, _) in read.items()})
    index = write_index(store, channel, version, tasks, keys, expires_in_days, now)
    return PublishResult(
        channel=channel,
        version=version,
        index=store.path(f"{folder}/index.json"),
        expires=index.expires,
        tasks=published,
    )


def _staged(
    entry: IndexEntry,
    previous: ChannelIndex | None,
    task: str,
    channel: str,
    rollout: int,
    carry: bool,
) -> IndexEntry:
    """``entry`` rolled out to ``rollout`` % of devices, the others on the channel's bundle
    from before (when that is itself a staged rollout, the bundle from before it)."""
    before = previous.tasks.get(task) if previous is not None and carry else None
    if before is not None and before.rollout < 100:
        before = before.previous  # abandoning an unfinished rollout: back to what all ran
    if before is None:
        raise FleetError(
            f"task {task!r} has no earlier bundle in channel {channel!r} for the devices outside "
            f"a {rollout}% rollout to keep (they would have none); publish it with --rollout 100"
            + ("" if carry else " (--no-carry carries nothing)")
        )
    if before.sha256 == entry.sha256:
        raise FleetError(
            f"{entry.name} {entry.version} is what channel {channel!r} already serves for task "
            f"{task!r}; nothing to roll out (pld channel promote changes a rollout's share)"
        )
    return msgspec.structs.replace(entry, rollout=rollout, previous=before)
