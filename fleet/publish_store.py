"""What a publisher reads from, and signs into, its store: ``keys.json`` verified the way a
device verifies it, the channel's current index verified before anything of it is signed
again, and the next signed index (``write_index``). Shared by ``publisher``, ``publish_keys``
and ``channel``; knows nothing about bundles or devices.

The publisher is a client too: the bucket is as untrusted as the network, so before it carries
anything into a new signature it verifies ``keys.json`` the way a device does (from the root
public keys it is given, or from its own keys in a single-key setup) and the channel's current
index against the index keys that key set names.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path

import msgspec

from pld.errors import FleetError, RejectedError, SignatureError

from .device_schema import TrustedKeySet
from .index import ChannelIndex, IndexEntry, KeyRole, utc_now
from .keys import PublicKey, SigningKey
from .pull_checks import MAX_INDEX_BYTES, MAX_KEYS_BYTES  # the bounds a device reads with
from .pull_keys import catch_up, role_map
from .signed import Envelope, sign_document, verify_document
from .store import Store

__all__ = [
    "KEYSET_FILE",
    "channel_dir",
    "current_index",
    "distinct_keys",
    "require_signers",
    "signing_store",
    "verified_keyset",
    "write_index",
]

KEYSET_FILE = "keys.json"
_CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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


def distinct_keys(keys: Sequence[SigningKey]) -> list[SigningKey]:
    """``keys`` without repeats (by key id), in their order."""
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
    keys = distinct_keys(keys)
    anchor = list(root_keys) or [k.public for k in keys]
    keyset = verified_keyset(
        store,
        anchor,
        anchor_name="the root keys given (--root-pub)" if root_keys else "the keys given (--key)",
    )
    require_signers(store, keyset.index_role(), keys, "index", doing)
    return store, keys, keyset


def require_signers(
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


def current_index(
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
