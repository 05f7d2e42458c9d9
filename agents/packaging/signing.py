"""Ed25519 signatures over a pack's manifest, and which keys an installation trusts.

``keygen`` writes ``<name>.key`` (PKCS#8 PEM, mode 0600) and ``<name>.pub``
(SubjectPublicKeyInfo PEM). A key's id is the first 16 hex digits of the SHA-256
of its raw 32-byte public key. The ``SIGNATURE`` member carries the key id, the
public key and the signature, so any signature can be checked for integrity;
whether its key is *trusted* is the :class:`TrustPolicy`'s call.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.packaging.errors import PackagingError, SignatureRefused

__all__ = [
    "MAX_SIGNATURE_BYTES",
    "Signature",
    "Signer",
    "TrustPolicy",
    "TrustPolicies",
    "check_signature",
    "key_id",
    "keygen",
    "load_private_key",
    "load_public_key",
    "sign",
]

MAX_SIGNATURE_BYTES: Final = 4096
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(public.public_bytes(*_RAW)).hexdigest()[:16]


def keygen(private_path: Path) -> tuple[Path, Path]:
    """A new key pair: ``private_path`` (0600, never overwritten) and ``<it>.pub``."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_path = private_path.with_name(private_path.name.removesuffix(".key") + ".pub")
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PackagingError(f"{private_path} exists: a key is never overwritten") from None
    except OSError as exc:
        raise PackagingError(f"cannot write {private_path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A private key written by :func:`keygen`; refused when others may read it (as ssh does)."""
    try:
        if path.stat().st_mode & 0o077:
            raise PackagingError(f"{path} is readable by others: chmod 600 {path}")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise PackagingError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise PackagingError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PackagingError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise PackagingError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise PackagingError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PackagingError(f"{path} is not an Ed25519 public key")
    return key


class Signature(BaseModel):
    """The ``SIGNATURE`` member."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: str = "ed25519"
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    public_key: str = Field(description="raw public key, base64")
    signature: str = Field(description="over MANIFEST.json's bytes, base64")

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":")) + "\n").encode()


def sign(manifest: bytes, private: Ed25519PrivateKey) -> bytes:
    """The ``SIGNATURE`` member's bytes for ``manifest`` (Ed25519 is deterministic: same bytes)."""
    public = private.public_key()
    return Signature(
        key_id=key_id(public),
        public_key=base64.b64encode(public.public_bytes(*_RAW)).decode(),
        signature=base64.b64encode(private.sign(manifest)).decode(),
    ).to_bytes()


class TrustPolicy(BaseModel):
    """Which public keys an installation trusts, and whether every pack must be signed by one.

    ``trusted_keys`` maps key id to the raw public key (base64). With
    ``require_signature`` off, an unsigned pack installs and a signed one must still
    verify (a bad signature is always refused); its signer is reported as untrusted
    when its key is not listed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    require_signature: bool = False
    trusted_keys: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, keys: list[Ed25519PublicKey], *, require_signature: bool = False) -> TrustPolicy:
        trusted = {key_id(k): base64.b64encode(k.public_bytes(*_RAW)).decode() for k in keys}
        return cls(require_signature=require_signature, trusted_keys=trusted)


class TrustPolicies(BaseModel):
    """The installation's policy, and per tenant its own (a tenant not listed gets ``default``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: TrustPolicy = TrustPolicy()
    tenants: dict[str, TrustPolicy] = Field(default_factory=dict)

    def for_tenant(self, tenant: str) -> TrustPolicy:
        return self.tenants.get(tenant, self.default)


@dataclass(frozen=True)
class Signer:
    """Who signed a verified pack, and whether the policy trusts that key."""

    key_id: str
    trusted: bool


def check_signature(manifest: bytes, signature: bytes | None, policy: TrustPolicy) -> Signer | None:
    """The signer of ``manifest``, or None when unsigned; :class:`SignatureRefused` when the
    policy needs a signature it does not have, or the signature does not verify."""
    if signature is None:
        if policy.require_signature:
            raise SignatureRefused("the pack is unsigned; this installation requires a trusted signature")
        return None
    try:
        sig = Signature.model_validate_json(signature)
        raw_key = base64.b64decode(sig.public_key, validate=True)
        public = Ed25519PublicKey.from_public_bytes(raw_key)
        public.verify(base64.b64decode(sig.signature, validate=True), manifest)
    except (ValidationError, binascii.Error, ValueError):
        raise SignatureRefused("SIGNATURE is malformed") from None
    except InvalidSignature:
        raise SignatureRefused("the signature does not match MANIFEST.json: the pack was altered") from None
    if sig.algorithm != "ed25519" or key_id(public) != sig.key_id:
        raise SignatureRefused("SIGNATURE's key id does not belong to its public key")
    trusted = policy.trusted_keys.get(sig.key_id) == sig.public_key
    if policy.require_signature and not trusted:
        raise SignatureRefused(f"signed by key {sig.key_id}, which this installation does not trust")
    return Signer(key_id=sig.key_id, trusted=trusted)
