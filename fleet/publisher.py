"""The publisher's side: copy bundles into a store, write a channel's signed index, rotate keys.

A publication is files under DEST (a directory or any writable fsspec URL)::

    bundles/<sha256 of the file bytes>.pld.json   the bundle files, content-addressed
    checks/<sha256>.json                            acceptance check sets, content-addressed
    channels/<channel>/index.json                   the channel's latest signed index
    channels/<channel>/index-<version>.json         every version published, kept for audit
    keys.json                                       the signed key set, once keys were rotated
    keys-<version>.json                             every key set, kept for audit

Files are written bundles first, then ``index-<version>.json``, then ``index.json``, so a
device never reads an index that names a file not yet there. Validation of bundles is the
runtime's; what devices check is ``pld.fleet.index``'s. Knows nothing about devices.

The publisher is a client too: the bucket is as untrusted as the network, so before it carries
anything into a new signature it verifies ``keys.json`` the way a device does (from the root
public keys it is given, or from its own keys in a single-key setup) and the channel's current
index against the index keys that key set names.

Key rotation, for operators (``pld keys rotate``; root keys sign, index keys never do):

1. ``pld keys generate --role index --out new`` makes the new key.
2. ``pld keys rotate --to DEST --key ROOT.key ... --index-key new/index.pub`` writes
   ``DEST/keys.json``, signed by the current root keys (and any ``--new-key`` root keys): a
   device accepts it only under a threshold of the root keys it trusts now and of the new
   root keys. ``--reset-versions`` also voids every channel's version floor (a stolen index
   key signed a huge version); publish with ``--no-carry`` afterwards.
3. Publish with the new index key from then on; devices take ``keys.json`` before the index
   on their next pull and refuse an index signed by a revoked key.

A fleet-wide rollback is a new publication of the old bundle file: the index version still
goes up, so devices take it (they never accept an older index).

A staged rollout (``rollout`` < 100) names, beside the new bundle, the one every device ran
before (``previous``); ``pld channel promote|halt`` (``channel.set_rollout``) signs the next
index with another share. See ``rollout`` for what a device does with them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from pld.errors import BundleError, FleetError, RejectedError, SignatureError
from pld.runtime import parse_bundle, resolve_bundle_path

from .acceptance import parse_check_set
from .device import TrustedKeySet
from .index import ChannelIndex, CheckRef, IndexEntry, KeyRole, KeySet, check_entry, utc_now
from .keys import PublicKey, SigningKey
from .pull_keys import catch_up, role_map
from .signed import Envelope, sign_document, verify_document
from .store import Store

__all__ = [
    "PublishResult",
    "PublishedTask",
    "channel_dir",
    "publish",
    "rotate_keys",
    "signing_store",
    "verified_keyset",
    "write_index",
]

KEYSET_FILE = "keys.json"
MAX_INDEX_BYTES = 4 << 20  # as a device reads them
MAX_KEYS_BYTES = 1 << 20
_CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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


def channel_dir(channel: str) -> str:
    """``channels/<channel>``, refusing a name that is not a plain folder name."""
    if not _CHANNEL.fullmatch(channel) or ".." in channel:
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
    """The payload of an envelope, signatures unchecked: only for choosing a version number
    that goes up (``carry=False``), never for content that is signed again."""
    try:
        return base64.b64decode(msgspec.json.decode(data, type=Envelope).payload, validate=True)
    except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error) as exc:
        raise FleetError(
            f"{where} is not a signed envelope ({exc}); restore it from index-<version>.json "
            "or keys-<version>.json beside it"
        ) from None


def _keyring(keys: Sequence[PublicKey], threshold: int = 1) -> TrustedKeySet:
    return TrustedKeySet(version=0, threshold=threshold, keys={k.keyid: k.text() for k in keys})


def verified_keyset(
    store: Store, anchor: Sequence[PublicKey], *, anchor_name: str
) -> TrustedKeySet:
    """The key set the store's ``keys.json`` makes devices trust, verified the way a device
    verifies it, starting from ``anchor`` (keys the caller trusts without the store: root public
    keys, or the caller's own keys); the implicit key set of ``anchor`` when there is none.

    The bucket is as untrusted as the network: a key set that does not verify is refused.
    """
    if not anchor:
        raise FleetError("no key to verify the store with; pass --key (and --root-pub)")
    start = _keyring(anchor)

    def read(name: str) -> bytes | None:
        return store.read_optional(name, limit=MAX_KEYS_BYTES)

    try:
        return catch_up(read, start, 1, lambda _msg: None)
    except (SignatureError, RejectedError) as exc:
        raise FleetError(
            f"{store.path(KEYSET_FILE)} does not verify against {anchor_name} ({exc}); either "
            "someone without the root keys changed it (restore it from a keys-<N>.json you "
            "wrote), or the root keys are others: pass their public keys with --root-pub. "
            "Nothing was written"
        ) from None


def signing_store(
    dest: str | Path,
    keys: Sequence[SigningKey],
    root_keys: Sequence[PublicKey],
    *,
    expires_in_days: float,
    rollout: int,
    doing: str,
) -> tuple[Store, list[SigningKey], TrustedKeySet]:
    """Check the arguments every signed index takes, open the store and verify its key set
    (from ``root_keys``, or the signing keys' own public keys), and refuse index keys that
    devices do not trust; ``doing`` names the command in that refusal."""
    if not keys:
        raise FleetError("nothing to sign the index with; pass at least one --key")
    if not expires_in_days > 0:
        raise FleetError(f"--expires-in is {expires_in_days} days; give a positive number")
    if not 0 <= rollout <= 100:
        raise FleetError(f"--rollout is {rollout}; give a percentage of devices, 0 to 100")
    store = Store(dest)
    keys = _distinct(keys)
    anchor = list(root_keys) or [k.public for k in keys]
    keyset = verified_keyset(
        store,
        anchor,
        anchor_name="the root keys given (--root-pub)" if root_keys else "the keys given (--key)",
    )
    _require_signers(store, keyset.index_role(), keys, "index", doing)
    return store, keys, keyset


def _require_signers(
    store: Store, role: KeyRole, keys: Sequence[SigningKey], what: str, doing: str
) -> None:
    """Refuse to sign with keys that devices which took ``keys.json`` do not trust for it."""
    signers = {k.keyid for k in keys} & set(role.keys)
    if len(signers) < role.threshold:
        raise FleetError(
            f"{store.path(KEYSET_FILE)} makes devices trust {what} keys "
            f"{', '.join(sorted(role.keys))} with threshold {role.threshold}, and "
            f"{len(signers)} of the keys given are among them; {doing} with --key of that set"
        )


def _previous_index(
    store: Store, channel: str, keyset: TrustedKeySet, *, carry: bool
) -> ChannelIndex | None:
    """The channel's current index, verified against the index keys the key set names (or
    the ones before its rotation) before anything of it is carried into a new signature.

    With ``carry=False`` nothing is carried: its version is read unverified, only to go above.
    """
    rel = f"{channel_dir(channel)}/index.json"
    where = store.path(rel)
    data = store.read_optional(rel, limit=MAX_INDEX_BYTES)
    if data is None:
        return None
    if not carry:
        payload = _unsigned_payload(data, where)
    else:
        roles = [keyset.index_role(), *([keyset.previous_index] if keyset.previous_index else [])]
        problems: list[str] = []
        for role in roles:
            try:
                payload = verify_document(
                    data, role_map(role), threshold=role.threshold, what=where
                )
                break
            except SignatureError as exc:
                problems.append(str(exc))
        else:
            raise FleetError(
                f"refusing to publish: {where} is not signed by the index keys devices trust "
                f"({problems[0]}); it was tampered with in the store (its tasks would be signed "
                "again), or it predates a key rotation that reset the version floors. Nothing "
                "was written: restore it from a verified index-<N>.json, or publish every task "
                f"of channel {channel!r} again with --no-carry"
            )
    try:
        index = msgspec.json.decode(payload, type=ChannelIndex)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FleetError(f"the previous index {where} is malformed ({exc})") from None
    if index.channel != channel:
        raise FleetError(
            f"{where} is an index of channel {index.channel!r}, not {channel!r}; "
            "the store was edited by hand: restore it"
        )
    return index


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
    previous = _previous_index(store, channel, keyset, carry=carry)
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


def write_index(
    store: Store,
    channel: str,
    version: int,
    tasks: dict[str, IndexEntry],
    keys: Sequence[SigningKey],
    expires_in_days: float,
    now: dt.datetime | None = None,
) -> ChannelIndex:
    """Sign channel ``channel``'s index ``version`` naming ``tasks``; write its audit copy,
    then ``index.json``."""
    start = now or utc_now()
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
    folder = channel_dir(channel)
    store.write(f"{folder}/index-{version}.json", envelope)
    store.write(f"{folder}/index.json", envelope)
    return index


def _role(keys: Sequence[PublicKey], threshold: int, what: str, option: str) -> KeyRole:
    distinct = {k.keyid: k.text() for k in keys}
    if not 1 <= threshold <= len(distinct):
        raise FleetError(
            f"{option} {threshold} needs between 1 and {len(distinct)} (the number of {what} keys)"
        )
    return KeyRole(threshold=threshold, keys=dict(sorted(distinct.items())))


def rotate_keys(
    dest: str | Path,
    *,
    current_keys: Sequence[SigningKey],
    new_keys: Sequence[SigningKey] = (),
    index_keys: Sequence[PublicKey] = (),
    threshold: int | None = None,
    index_threshold: int = 1,
    reset_versions: bool = False,
) -> KeySet:
    """Write ``DEST/keys.json``, the next key set, signed by the current and the new root keys.

    ``current_keys`` are root keys devices trust now (a threshold of the store's key set);
    ``new_keys`` the root keys from now on (default: the same root); ``index_keys`` the public
    keys that sign channel indexes (default: unchanged, or the root keys themselves in a
    single-key setup). ``reset_versions`` voids every channel's version floor on devices (an
    index key was stolen and signed a huge version). The version is the previous key set's + 1;
    a copy is kept as ``keys-<version>.json``.
    """
    if not current_keys:
        raise FleetError("pass the root keys devices trust now with --key")
    if not (new_keys or index_keys or reset_versions):
        raise FleetError(
            "nothing to rotate; pass --new-key (root keys), --index-key (index keys) or "
            "--reset-versions"
        )
    current = _distinct(current_keys)
    store = Store(dest)
    # the store's key set, verified from the root keys in hand: the bucket is untrusted too
    before = verified_keyset(
        store, [k.public for k in current], anchor_name="the keys given (--key)"
    )
    _require_signers(
        store, KeyRole(threshold=before.threshold, keys=before.keys), current, "root", "rotate"
    )
    version = before.version + 1
    new = _distinct(new_keys)
    if new:
        root = _role(
            [k.public for k in new], 1 if threshold is None else threshold, "root", "--threshold"
        )
    else:
        same = [PublicKey.from_text(t) for t in before.keys.values()]
        root = _role(
            same, before.threshold if threshold is None else threshold, "root", "--threshold"
        )
    if index_keys:
        index: KeyRole | None = _role(index_keys, index_threshold, "index", "--index-threshold")
    else:
        index = before.index  # unchanged; None: the root keys sign indexes too
    old_index = before.index_role()
    new_index = index or root
    if reset_versions:
        previous = None  # the old index keys are presumed stolen: nothing they signed carries
    elif new_index == old_index:
        previous = before.previous_index
    else:
        previous = old_index
    keyset = KeySet(
        type="pld-keyset",
        version=version,
        threshold=root.threshold,
        keys=root.keys,
        index=index,
        floors_reset=version if reset_versions else before.floors_reset,
        previous_index=previous,
    )
    payload = msgspec.json.format(msgspec.json.encode(keyset), indent=2) + b"\n"
    envelope = sign_document(payload, _distinct([*current, *new]))
    store.write(f"keys-{keyset.version}.json", envelope)
    store.write(KEYSET_FILE, envelope)
    return keyset
