"""ed25519 signing keys: generate, save, load, and name them by key id.

A key id is the first 16 hex digits of the sha256 of the raw 32-byte public key. Private keys
are PEM (PKCS#8) files of mode 0600, public keys PEM (SubjectPublicKeyInfo). Uses the
``cryptography`` package; knows nothing about what is signed.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pld.errors import FleetError
from pld.files import atomic_write

__all__ = ["ROLES", "PublicKey", "SigningKey", "generate_keys", "key_id"]


def key_id(raw_public: bytes) -> str:
    """The key id of a raw 32-byte ed25519 public key."""
    return hashlib.sha256(raw_public).hexdigest()[:16]


class PublicKey:
    """A trusted ed25519 public key and its id."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise FleetError(f"an ed25519 public key has 32 bytes, not {len(raw)}")
        self.raw = raw
        self.keyid = key_id(raw)
        self._key = Ed25519PublicKey.from_public_bytes(raw)

    @classmethod
    def load(cls, path: str | Path) -> PublicKey:
        """Read a PEM public key file (``signing.pub``)."""
        p = Path(path)
        try:
            key = serialization.load_pem_public_key(p.read_bytes())
        except FileNotFoundError:
            raise FleetError(
                f"public key file {p} does not exist; pass the signing.pub that "
                "'pld keys generate' wrote"
            ) from None
        except ValueError as exc:
            raise FleetError(f"{p} is not a PEM public key ({exc}); pass a signing.pub") from None
        if not isinstance(key, Ed25519PublicKey):
            raise FleetError(f"{p} is not an ed25519 public key; make keys with pld keys generate")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        """A key from its base64 raw form (as key sets carry them)."""
        try:
            return cls(base64.b64decode(text, validate=True))
        except ValueError as exc:
            raise FleetError(f"public key {text[:24]!r} is not base64 ({exc})") from None

    def text(self) -> str:
        """The base64 raw form."""
        return base64.b64encode(self.raw).decode()

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``data``."""
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def pem(self) -> bytes:
        """The PEM form, for ``signing.pub``."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class SigningKey:
    """A private ed25519 key; keep its file private (mode 0600) and off devices."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)
        self.keyid = self.public.keyid

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        """Read a PEM private key file (``signing.key``)."""
        p = Path(path)
        try:
            key = serialization.load_pem_private_key(p.read_bytes(), password=None)
        except FileNotFoundError:
            raise FleetError(
                f"signing key file {p} does not exist; create one with "
                "'pld keys generate --out DIR'"
            ) from None
        except (ValueError, TypeError) as exc:
            raise FleetError(
                f"{p} is not an unencrypted PEM private key ({exc}); pass the signing.key "
                "that 'pld keys generate' wrote"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise FleetError(f"{p} is not an ed25519 key; make keys with pld keys generate")
        return cls(key)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte signature of ``data``."""
        return self._key.sign(data)

    def pem(self) -> bytes:
        """The PEM (PKCS#8, unencrypted) form, for ``signing.key``."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


ROLES = ("root", "index")


def generate_keys(out: str | Path, role: str | None = None) -> tuple[Path, Path, str]:
    """Write ``OUT/<stem>.key`` (mode 0600) and ``OUT/<stem>.pub``; returns both and the id.

    The stem is the role: ``root`` (signs key sets; keep it offline), ``index`` (signs channel
    indexes), or ``signing`` without one (a single key holding both roles). Refuses to
    overwrite an existing key: a lost key cannot sign updates any more.
    """
    if role is not None and role not in ROLES:
        raise FleetError(f"key role {role!r} is unknown; use --role root or --role index")
    folder = Path(out)
    stem = role or "signing"
    key_path, pub_path = folder / f"{stem}.key", folder / f"{stem}.pub"
    for path in (key_path, pub_path):
        if path.exists():
            raise FleetError(
                f"{path} exists; refusing to overwrite a key (move it away, or pass another --out)"
            )
    folder.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.pem())
    os.chmod(key_path, 0o600)  # whatever the umask
    atomic_write(pub_path, key.public.pem())
    return key_path, pub_path, key.keyid
