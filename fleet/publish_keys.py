"""Key rotation on the publisher's side: ``rotate_keys`` writes the store's next signed key set
(``keys.json``, and ``keys-<version>.json`` for audit), after verifying the one there from the
root keys in hand. Root keys sign key sets, index keys never do; what a device accepts is
``pull_keys``'s. Knows nothing about bundles, channels or devices.

Key rotation, for operators (``pld keys rotate``):

1. ``pld keys generate --role index --out new`` makes the new key.
2. ``pld keys rotate --to DEST --key ROOT.key ... --index-key new/index.pub`` writes
   ``DEST/keys.json``, signed by the current root keys (and any ``--new-key`` root keys): a
   device accepts it only under a threshold of the root keys it trusts now and of the new
   root keys. ``--reset-versions`` also voids every channel's version floor (a stolen index
   key signed a huge version); publish with ``--no-carry`` afterwards.
3. Publish with the new index key from then on; devices take ``keys.json`` before the index
   on their next pull and refuse an index signed by a revoked key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec

from pld.errors import FleetError

from .index import KeyRole, KeySet
from .keys import PublicKey, SigningKey
from .publish_store import KEYSET_FILE, distinct_keys, require_signers, verified_keyset
from .signed import sign_document
from .store import Store

__all__ = ["rotate_keys"]


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
    current = distinct_keys(current_keys)
    store = Store(dest)
    # the store's key set, verified from the root keys in hand: the bucket is untrusted too
    before = verified_keyset(
        store, [k.public for k in current], anchor_name="the keys given (--key)"
    )
    require_signers(
        store, KeyRole(threshold=before.threshold, keys=before.keys), current, "root", "rotate"
    )
    version = before.version + 1
    new = distinct_keys(new_keys)
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
    envelope = sign_document(payload, distinct_keys([*current, *new]))
    store.write(f"keys-{keyset.version}.json", envelope)
    store.write(KEYSET_FILE, envelope)
    return keyset
