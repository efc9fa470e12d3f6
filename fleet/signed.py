"""Signed documents: the exact bytes that were signed, kept beside their signatures.

An envelope is JSON ``{"payload": BASE64, "signatures": [{"keyid", "sig"}]}``. Verification is
a pure function (bytes and trusted keys in, the payload bytes or a precise ``SignatureError``
out) and the payload is parsed only after it passed: a signature is never checked against a
re-serialisation. Knows nothing about what the payload means.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence

import msgspec

from pld.errors import SignatureError

from .keys import PublicKey, SigningKey

__all__ = ["Envelope", "Signature", "sign_document", "verify_document"]


class Signature(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One key's signature of the payload bytes (base64)."""

    keyid: str
    sig: str


class Envelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The signed bytes (base64) and every signature over them."""

    payload: str
    signatures: list[Signature]


def sign_document(payload: bytes, keys: Sequence[SigningKey]) -> bytes:
    """An envelope of ``payload`` signed by each of ``keys`` (pretty JSON bytes)."""
    if not keys:
        raise SignatureError("nothing to sign with; pass at least one --key")
    env = Envelope(
        payload=base64.b64encode(payload).decode(),
        signatures=[
            Signature(keyid=k.keyid, sig=base64.b64encode(k.sign(payload)).decode()) for k in keys
        ],
    )
    return msgspec.json.format(msgspec.json.encode(env), indent=2) + b"\n"


def verify_document(
    data: bytes,
    trusted: Mapping[str, PublicKey],
    *,
    threshold: int = 1,
    what: str = "document",
) -> bytes:
    """The payload of an envelope signed by at least ``threshold`` distinct ``trusted`` keys.

    Raises ``SignatureError`` naming what is wrong: no envelope, no signature, a signature
    that does not verify, keys that are not trusted, or too few valid signatures.
    """
    try:
        env = msgspec.json.decode(data, type=Envelope)
        payload = base64.b64decode(env.payload, validate=True)
    except (msgspec.DecodeError, msgspec.ValidationError, binascii.Error) as exc:
        raise SignatureError(
            f"{what} is not a signed envelope ({exc}); it was not written by pld bundle publish"
        ) from None
    if not env.signatures:
        raise SignatureError(f"{what} carries no signature; refusing it")
    valid: set[str] = set()
    untrusted: list[str] = []
    bad: list[str] = []
    for s in env.signatures:
        key = trusted.get(s.keyid)
        if key is None:
            untrusted.append(s.keyid)
            continue
        try:
            raw = base64.b64decode(s.sig, validate=True)
        except binascii.Error:
            bad.append(s.keyid)
            continue
        if key.verify(raw, payload):
            valid.add(s.keyid)
        else:
            bad.append(s.keyid)
    if len(valid) >= threshold:
        return payload
    problems = []
    if bad:
        problems.append(f"bad signature by trusted key {', '.join(bad)}")
    if untrusted:
        problems.append(f"signed by untrusted key {', '.join(untrusted)}")
    raise SignatureError(
        f"{what} has {len(valid)} valid signature(s) from trusted keys, {threshold} required"
        f"{' (' + '; '.join(problems) + ')' if problems else ''}; trusted keys: "
        f"{', '.join(sorted(trusted)) or 'none'}; pass the publisher's key with --trusted-key"
    )
