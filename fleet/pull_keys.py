"""Which keys a pull trusts: the device's stored key set, else ``--trusted-key`` (first pull),
moved on by a signed ``keys.json`` only when a threshold of the current **root** keys AND of the
root keys it names signed it (index keys never sign a key set). A device that missed several
rotations catches up through the published ``keys-<version>.json`` history, one verified step
at a time. Bytes and key sets in, a key set or an error out; reading files is the caller's
(``read``). The publisher runs the same checks on its store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pld.errors import FleetError, RejectedError, SignatureError

from .device_schema import TrustedKeySet, TrustedState
from .index import KeyRole, parse_keyset
from .keys import PublicKey
from .signed import verify_document

__all__ = ["apply_keyset", "catch_up", "index_map", "key_map", "role_map", "starting_keys"]


def role_map(role: KeyRole) -> dict[str, PublicKey]:
    """Key id -> key of a role, refusing a key whose id is not the one it is filed under."""
    out = {}
    for keyid, text in role.keys.items():
        key = PublicKey.from_text(text)
        if key.keyid != keyid:
            raise RejectedError(
                f"a key set files key {key.keyid} under the id {keyid}; refusing it"
            )
        out[keyid] = key
    return out


def key_map(keyset: TrustedKeySet) -> dict[str, PublicKey]:
    """The root keys of a key set (they sign the next key set), by key id."""
    return role_map(KeyRole(threshold=keyset.threshold, keys=keyset.keys))


def index_map(keyset: TrustedKeySet) -> dict[str, PublicKey]:
    """The keys that sign channel indexes under a key set, by key id."""
    return role_map(keyset.index_role())


def starting_keys(
    trusted: TrustedState | None,
    given: Sequence[PublicKey],
    threshold: int,
    say: Callable[[str], None],
) -> TrustedKeySet:
    """The device's stored key set, or (first pull) one made of the ``--trusted-key``s."""
    if threshold < 1:
        raise FleetError(f"--threshold must be at least 1, not {threshold}")
    if trusted is not None:
        ks = trusted.keyset
        unused = sorted({k.keyid for k in given} - set(ks.keys))
        if unused:
            say(
                f"note: this device trusts key set v{ks.version} ({', '.join(sorted(ks.keys))}); "
                f"--trusted-key {', '.join(unused)} is not used (keys change by signed keys.json)"
            )
        return ks
    if not given:
        raise FleetError(
            "this device trusts no key yet; pass the publisher's signing.pub with --trusted-key "
            "on the first pull"
        )
    keys = {k.keyid: k.text() for k in given}
    if threshold > len(keys):
        raise FleetError(
            f"--threshold {threshold} needs at least {threshold} distinct --trusted-key, "
            f"got {len(keys)}"
        )
    return TrustedKeySet(version=0, threshold=threshold, keys=keys)


def apply_keyset(
    data: bytes, keyset: TrustedKeySet, threshold: int, say: Callable[[str], None]
) -> TrustedKeySet:
    """The key set after a published ``keys.json``: the same one unless the document is newer
    and signed by ``threshold`` of the current root keys and by its own root threshold of its
    own root keys. A set signed by index keys alone is refused.
    """
    try:
        payload = verify_document(data, key_map(keyset), threshold=threshold, what="keys.json")
    except SignatureError as exc:
        raise SignatureError(
            f"refusing the published key set: {exc}. A new key set must be signed by "
            f"{threshold} of the root keys this device trusts (key set v{keyset.version}) and by "
            "its own root keys, never by index keys alone (pld keys rotate --key ROOT does both)"
        ) from None
    new = parse_keyset(payload)
    if new.version < keyset.version or (new.version == keyset.version == 0):
        return keyset
    proposed = TrustedKeySet(
        version=new.version,
        threshold=new.threshold,
        keys=dict(new.keys),
        index=new.index,
        # a reset is never undone: a device that skips a version still honours it
        floors_reset=max(new.floors_reset, keyset.floors_reset),
        previous_index=new.previous_index,
    )
    if new.version == keyset.version:
        if proposed != keyset:
            raise RejectedError(
                f"keys.json has version {new.version}, the version this device trusts, but "
                "other keys; a publisher must raise the key set's version"
            )
        return keyset
    try:
        verify_document(
            data, key_map(proposed), threshold=new.threshold, what="keys.json (by its own keys)"
        )
    except SignatureError as exc:
        raise SignatureError(
            f"refusing the published key set v{new.version}: {exc}; a new key set must also be "
            "signed by the keys it names"
        ) from None
    index = proposed.index_role()
    say(
        f"keys: now trusting key set v{new.version} (root {', '.join(sorted(new.keys))}, "
        f"threshold {new.threshold}; index {', '.join(sorted(index.keys))}, threshold "
        f"{index.threshold})"
        + (
            "; every channel's version floor reset"
            if proposed.floors_reset > keyset.floors_reset
            else ""
        )
    )
    return proposed


def catch_up(
    read: Callable[[str], bytes | None],
    keyset: TrustedKeySet,
    threshold: int,
    say: Callable[[str], None],
) -> TrustedKeySet:
    """The key set after the publication's ``keys.json`` (``read(name)`` gives a file's bytes,
    or None when it is absent), walking ``keys-<n>.json`` when the device is several behind.
    """
    latest = read("keys.json")
    if latest is None:
        return keyset
    try:
        return apply_keyset(latest, keyset, max(threshold, keyset.threshold), say)
    except SignatureError as first:
        step, moved = keyset, False
        while (doc := read(f"keys-{step.version + 1}.json")) is not None:
            try:
                nxt = apply_keyset(doc, step, max(threshold, step.threshold), say)
            except SignatureError:
                break
            if nxt.version != step.version + 1:
                break
            step, moved = nxt, True
        if not moved:
            raise first from None
        return apply_keyset(latest, step, max(threshold, step.threshold), say)
