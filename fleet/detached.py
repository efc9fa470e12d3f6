"""Detached bundle signatures, for side-loading one file without a channel: ``B.sig`` beside
``B``, a signed envelope (``pld.fleet.signed``) whose payload states what was signed: the
bundle's name and version and the length and sha256 of the file's exact bytes.

The signature covers those exact bytes (never a re-serialisation of a parse), the statement is
parsed only after its signature verified, and the bundle is parsed from the bytes whose hash
matched. Channels and indexes are ``pld.fleet.publisher``'s; this module knows one file and its
keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import msgspec

from pld.errors import BundleError, SignatureError
from pld.files import atomic_write
from pld.runtime import parse_bundle

from .keys import PublicKey, SigningKey
from .signed import Envelope, sign_document, verify_document

__all__ = ["BundleStatement", "sign_bundle", "signature_path", "verify_bundle"]

STATEMENT_TYPE: Literal["pld-bundle-signature"] = "pld-bundle-signature"


class BundleStatement(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What ``B.sig`` signs: which bundle (name, version) and which exact file bytes."""

    type: Literal["pld-bundle-signature"]
    name: str
    version: str
    length: int
    sha256: str


def signature_path(bundle: str | Path) -> Path:
    """``B.sig`` for bundle file ``B``."""
    path = Path(bundle)
    return path.with_name(path.name + ".sig")


def sign_bundle(path: str | Path, key: SigningKey) -> Path:
    """Validate bundle file ``path`` and write its detached signature ``B.sig``; returns it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path} ({exc})") from None
    bundle = parse_bundle(data, source=str(path))  # the bytes validated are the bytes signed
    statement = BundleStatement(
        type=STATEMENT_TYPE,
        name=bundle.name,
        version=bundle.version,
        length=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    payload = msgspec.json.format(msgspec.json.encode(statement), indent=2) + b"\n"
    out = signature_path(path)
    atomic_write(out, sign_document(payload, [key]))
    return out


def _signer(raw: bytes, payload: bytes, trusted: dict[str, PublicKey]) -> str:
    """The id of a trusted key whose signature of ``payload`` is in the envelope ``raw``."""
    for s in msgspec.json.decode(raw, type=Envelope).signatures:
        key = trusted.get(s.keyid)
        if key is not None and key.verify(base64.b64decode(s.sig), payload):
            return s.keyid
    raise SignatureError("no trusted signature")  # verify_document passed: not reached


def verify_bundle(
    path: str | Path,
    pubkeys: Iterable[PublicKey],
    *,
    name: str | None = None,
    version: str | None = None,
) -> str:
    """The key id that signed bundle file ``path`` (its ``B.sig``), if that key is trusted, the
    file's bytes are the ones signed, and it is bundle ``name`` ``version`` (when given).

    Raises ``SignatureError`` naming the problem: no ``.sig``, a malformed or old-style one, an
    untrusted key, a bad signature, a changed file, or another bundle than the one asked for.
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
        old = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        old = None
    if isinstance(old, dict) and {"keyid", "sig", "digest"} <= set(old):
        raise SignatureError(
            f"{sig_path} is an old-style signature (over a re-serialisation of the bundle, "
            f"binding no version); sign the bundle again with 'pld bundle sign {path}'"
        )
    try:
        payload = verify_document(raw, trusted, what=str(sig_path))
    except SignatureError as exc:
        raise SignatureError(
            f"refusing {path}, its signature is not trusted: {exc} (here: --pubkey)"
        ) from None
    try:
        statement = msgspec.json.decode(payload, type=BundleStatement)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SignatureError(f"{sig_path} does not sign a bundle statement ({exc})") from None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read bundle {path} ({exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != statement.length or digest != statement.sha256:
        raise SignatureError(
            f"bundle {path} was changed after it was signed (tampered: its sha256 is {digest}, "
            f"the signature is for {statement.sha256}, {statement.name} {statement.version}); "
            "refusing it"
        )
    try:
        bundle = parse_bundle(data, source=str(path))  # the very bytes whose hash matched
    except BundleError as exc:
        raise SignatureError(f"refusing {path}, which is not a valid bundle: {exc}") from None
    if (bundle.name, bundle.version) != (statement.name, statement.version):
        raise SignatureError(
            f"bundle {path} is {bundle.name} {bundle.version}, but {sig_path} signs "
            f"{statement.name} {statement.version}; refusing it"
        )
    wanted = (name or statement.name, version or statement.version)
    if wanted != (statement.name, statement.version):
        raise SignatureError(
            f"{path} is a signed {statement.name} {statement.version}, not the "
            f"{wanted[0]} {wanted[1]} asked for; refusing it (an older signed file, swapped in?)"
        )
    try:
        return _signer(raw, payload, trusted)
    except (binascii.Error, msgspec.DecodeError):  # verify_document already decoded it
        raise SignatureError(f"{sig_path} is malformed") from None
