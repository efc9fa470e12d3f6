"""Detached bundle signatures, for side-loading one file without a channel: ``B.sig`` beside
``B``, JSON ``{"keyid", "sig", "digest"}``.

The signature is ed25519 over the bundle's canonical bytes (``pld.runtime.bundle
.canonical_bytes``), so re-indenting the file keeps it valid while any change of content breaks
it. Channels and indexes are ``pld.fleet.publisher``'s; this module knows one file and its keys.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from pathlib import Path

import msgspec

from pld.errors import BundleError, SignatureError
from pld.files import atomic_write
from pld.runtime.bundle import bundle_digest, canonical_bytes, load_bundle

from .keys import PublicKey, SigningKey

__all__ = ["BundleSignature", "sign_bundle", "signature_path", "verify_bundle"]


class BundleSignature(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The content of ``B.sig``: who signed, the signature (base64), and what was signed."""

    keyid: str
    sig: str
    digest: str  # bundle_digest of the signed content, to tell a tampered bundle from a bad sig


def signature_path(bundle: str | Path) -> Path:
    """``B.sig`` for bundle file ``B``."""
    path = Path(bundle)
    return path.with_name(path.name + ".sig")


def sign_bundle(path: str | Path, key: SigningKey) -> Path:
    """Validate bundle file ``path`` and write its detached signature ``B.sig``; returns it."""
    bundle = load_bundle(path)
    sig = BundleSignature(
        keyid=key.keyid,
        sig=base64.b64encode(key.sign(canonical_bytes(bundle))).decode(),
        digest=bundle_digest(bundle),
    )
    out = signature_path(path)
    atomic_write(out, msgspec.json.format(msgspec.json.encode(sig), indent=2) + b"\n")
    return out


def verify_bundle(path: str | Path, pubkeys: Iterable[PublicKey]) -> str:
    """The key id that signed bundle file ``path`` (its ``B.sig``), if that key is trusted.

    Raises ``SignatureError`` naming the problem: no ``.sig``, a malformed one, an unknown key,
    a tampered bundle, or a bad signature.
    """
    trusted = {k.keyid: k for k in pubkeys}
    sig_path = signature_path(path)
    try:
        raw = sig_path.read_bytes()
    except FileNotFoundError:
        raise SignatureError(
            f"bundle {path} has no signature file {sig_path}; sign it with "
            f"'pld bundle sign {path} --key signing.key'"
        ) from None
    try:
        sig = msgspec.json.decode(raw, type=BundleSignature)
        signature = base64.b64decode(sig.sig, validate=True)
    except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error) as exc:
        raise SignatureError(f"{sig_path} is not a bundle signature ({exc})") from None
    key = trusted.get(sig.keyid)
    if key is None:
        raise SignatureError(
            f"{path} is signed by key {sig.keyid}, which is not trusted (trusted: "
            f"{', '.join(sorted(trusted)) or 'none'}); pass the signer's signing.pub with --pubkey"
        )
    try:
        # the digest field is checked below, once the content is known to be the signed one
        bundle = load_bundle(path, verify_digest=False)
    except BundleError as exc:
        raise SignatureError(f"refusing {path}, which is not a valid bundle: {exc}") from None
    digest = bundle_digest(bundle)
    if not key.verify(signature, canonical_bytes(bundle)):
        if digest != sig.digest:
            raise SignatureError(
                f"bundle {path} was changed after it was signed (tampered: its content digest "
                f"is {digest}, the signature is for {sig.digest}); refusing it"
            )
        raise SignatureError(
            f"{sig_path} holds a bad signature by key {sig.keyid} (a corrupt or forged .sig); "
            "refusing the bundle"
        )
    if bundle.digest is not None and bundle.digest != digest:
        raise SignatureError(
            f"bundle {path} has a 'digest' field that does not match its signed content; "
            "re-save it with pld and sign it again"
        )
    return sig.keyid
