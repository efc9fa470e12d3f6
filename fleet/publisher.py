"""The publisher's side: copy bundles into a store, write a channel's signed index, rotate keys.

A publication is files under DEST (a directory or any writable fsspec URL)::

    bundles/<sha256 of the file bytes>.pld.json   the bundle files, content-addressed
    channels/<channel>/index.json                   the channel's latest signed index
    channels/<channel>/index-<version>.json         every version published, kept for audit
    keys.json                                       the signed key set, once keys were rotated
    keys-<version>.json                             every key set, kept for audit

Files are written bundles first, then ``index-<version>.json``, then ``index.json``, so a
device never reads an index that names a file not yet there. Validation of bundles is the
runtime's; what devices check is ``pld.fleet.index``'s. Knows nothing about devices.

Key rotation, for operators:

1. ``pld keys generate --out new`` makes the new key (keep the old one until step 3 is done).
2. ``pld keys rotate --to DEST --key old/signing.key --new-key new/signing.key`` writes
   ``DEST/keys.json``, signed by the old and the new keys: a device accepts it only when a
   threshold of the keys it trusts now and a threshold of the new keys signed it, then trusts
   only the new keys. Several ``--new-key`` and ``--threshold N`` make an N-of-M key set.
3. Publish from then on with the new key(s): ``pld bundle publish ... --key new/signing.key``.
   Devices take ``keys.json`` before the index on their next pull; from then on they refuse
   an index signed by the old key alone. Retire the old key once the fleet has pulled.

A fleet-wide rollback is a new publication of the old bundle file: the index version still
goes up, so devices take it (they never accept an older index).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import msgspec

from pld.errors import BundleError, FleetError
from pld.runtime.bundle import parse_bundle
from pld.runtime.store import resolve_bundle_path

from .index import ChannelIndex, IndexEntry, KeySet, utc_now
from .keys import SigningKey
from .signed import Envelope, sign_document
from .store import Store

__all__ = [
    "PublishResult",
    "PublishedTask",
    "channel_dir",
    "publish",
    "rotate_keys",
]

KEYSET_FILE = "keys.json"
_CHANNEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class PublishedTask(msgspec.Struct, frozen=True, kw_only=True):
    """One task of a publication: its bundle, where it went, and whether that file is new."""

    task: str
    name: str
    version: str
    sha256: str
    file: str
    new: bool


class PublishResult(msgspec.Struct, frozen=True, kw_only=True):
    """What ``publish`` wrote: the channel's new index version and each task published."""

    channel: str
    version: int
    index: str  # the full path (or URL) of the channel's index.json
    expires: str
    tasks: list[PublishedTask]


def channel_dir(channel: str) -> str:
    """``channels/<channel>``, refusing a name that is not a plain folder name."""
    if not _CHANNEL.match(channel) or ".." in channel:
        raise FleetError(
            f"channel name {channel!r} is not allowed; use letters, digits, '.', '_' and '-' "
            "(for example 'stable' or 'canary')"
        )
    return f"channels/{channel}"


def _iso(when: dt.datetime) -> str:
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="seconds")


def _distinct(keys: Sequence[SigningKey]) -> list[SigningKey]:
    seen: dict[str, SigningKey] = {}
    for key in keys:
        seen.setdefault(key.keyid, key)
    return list(seen.values())


def _unsigned_payload(data: bytes, where: str) -> bytes:
    """The payload of one of the publisher's own envelopes (its signatures are not checked:
    the store is the publisher's own; devices verify)."""
    try:
        return base64.b64decode(msgspec.json.decode(data, type=Envelope).payload, validate=True)
    except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error) as exc:
        raise FleetError(
            f"{where} is not a signed envelope ({exc}); restore it from index-<version>.json "
            "or keys-<version>.json beside it"
        ) from None


def _previous_index(store: Store, channel: str) -> ChannelIndex | None:
    rel = f"{channel_dir(channel)}/index.json"
    data = store.read_optional(rel)
    if data is None:
        return None
    payload = _unsigned_payload(data, store.path(rel))
    try:
        index = msgspec.json.decode(payload, type=ChannelIndex)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FleetError(f"the previous index {store.path(rel)} is malformed ({exc})") from None
    if index.channel != channel:
        raise FleetError(
            f"{store.path(rel)} is an index of channel {index.channel!r}, not {channel!r}; "
            "the store was edited by hand: restore it"
        )
    return index


def _current_keyset(store: Store) -> KeySet | None:
    data = store.read_optional(KEYSET_FILE)
    if data is None:
        return None
    payload = _unsigned_payload(data, store.path(KEYSET_FILE))
    try:
        return msgspec.json.decode(payload, type=KeySet)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FleetError(f"{store.path(KEYSET_FILE)} is malformed ({exc})") from None


def _require_keyset_signers(store: Store, keys: Sequence[SigningKey], doing: str) -> None:
    """Refuse to sign with keys that devices which took ``keys.json`` no longer trust."""
    keyset = _current_keyset(store)
    if keyset is None:
        return
    signers = {k.keyid for k in keys} & set(keyset.keys)
    if len(signers) < keyset.threshold:
        raise FleetError(
            f"{store.path(KEYSET_FILE)} (key set version {keyset.version}) makes devices trust "
            f"keys {', '.join(sorted(keyset.keys))} with threshold {keyset.threshold}, and "
            f"{len(signers)} of the keys given are among them; {doing} with --key of that set"
        )


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
        out[task] = (data, entry, str(path))
    return out


def publish(
    bundles: Sequence[str | Path],
    dest: str | Path,
    *,
    channel: str,
    keys: Sequence[SigningKey],
    expires_in_days: float = 30,
    now: dt.datetime | None = None,
) -> PublishResult:
    """Copy ``bundles`` (paths or shipped names) to ``dest`` and sign the channel's next index.

    The index carries the channel's other tasks forward, replaces the tasks published, and
    gets the previous version + 1; it is signed by every key in ``keys``.
    """
    if not bundles:
        raise FleetError("nothing to publish; pass at least one bundle")
    if not keys:
        raise FleetError("nothing to sign the index with; pass at least one --key")
    if not expires_in_days > 0:
        raise FleetError(f"--expires-in is {expires_in_days} days; give a positive number")
    folder = channel_dir(channel)
    read = _read_bundles(bundles)
    store = Store(dest)
    keys = _distinct(keys)
    _require_keyset_signers(store, keys, "publish")
    previous = _previous_index(store, channel)
    version = previous.version + 1 if previous else 1
    audit = f"{folder}/index-{version}.json"
    if store.exists(audit):
        raise FleetError(
            f"{store.path(audit)} exists, but {folder}/index.json is "
            f"{'version ' + str(previous.version) if previous else 'missing'}; refusing to "
            "overwrite a published version: restore index.json from the newest index-<N>.json"
        )

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
            )
        )

    start = now or utc_now()
    tasks = dict(previous.tasks) if previous else {}
    tasks.update({task: entry for task, (_, entry, _) in read.items()})
    index = ChannelIndex(
        type="pld-channel-index",
        channel=channel,
        version=version,
        published=_iso(start),
        expires=_iso(start + dt.timedelta(days=expires_in_days)),
        tasks=dict(sorted(tasks.items())),
    )
    payload = msgspec.json.format(msgspec.json.encode(index), indent=2) + b"\n"
    envelope = sign_document(payload, keys)
    store.write(audit, envelope)
    store.write(f"{folder}/index.json", envelope)
    return PublishResult(
        channel=channel,
        version=version,
        index=store.path(f"{folder}/index.json"),
        expires=index.expires,
        tasks=published,
    )


def rotate_keys(
    dest: str | Path,
    *,
    current_keys: Sequence[SigningKey],
    new_keys: Sequence[SigningKey],
    threshold: int = 1,
) -> KeySet:
    """Write ``DEST/keys.json``: the new keys as a key set, signed by the current and new keys.

    The version is the previous key set's + 1 (1 for the first rotation); a copy is kept as
    ``keys-<version>.json``. When a key set exists, a threshold of the current keys must be
    in it, or devices that already took it would refuse the new one.
    """
    if not current_keys:
        raise FleetError("pass the keys devices trust now with --key")
    if not new_keys:
        raise FleetError("pass the keys devices should trust from now on with --new-key")
    new = _distinct(new_keys)
    if not 1 <= threshold <= len(new):
        raise FleetError(
            f"--threshold {threshold} needs between 1 and {len(new)} (the number of --new-key)"
        )
    store = Store(dest)
    _require_keyset_signers(store, current_keys, "rotate")
    previous = _current_keyset(store)
    keyset = KeySet(
        type="pld-keyset",
        version=previous.version + 1 if previous else 1,
        threshold=threshold,
        keys={k.keyid: k.public.text() for k in sorted(new, key=lambda k: k.keyid)},
    )
    payload = msgspec.json.format(msgspec.json.encode(keyset), indent=2) + b"\n"
    envelope = sign_document(payload, _distinct([*current_keys, *new]))
    store.write(f"keys-{keyset.version}.json", envelope)
    store.write(KEYSET_FILE, envelope)
    return keyset
