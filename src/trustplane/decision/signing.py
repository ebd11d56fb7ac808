"""Detached Ed25519 signatures over a bundle's file hashes.

The signature covers the manifest (every file's sha256), so adding, removing or editing any
policy, schema, entity or test file invalidates it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trustplane.decision.policy_bundle import (
    SIGNATURE_FILE,
    BundleProblem,
    BundleSource,
    manifest_text,
)
from trustplane.errors import TrustplaneError

# `cryptography` is imported where a key is used: loading an unsigned bundle with no trusted
# keys (`trustplane check`, most servers) never needs it, and it costs a tenth of a second.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIGNATURE_FORMAT = "trustplane-bundle-signature/v1"


class SigningError(TrustplaneError):
    """A key file could not be read or is not an Ed25519 key."""


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public_key: Ed25519PublicKey
    path: str


def key_id(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair (private key 0600); return its key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.touch(mode=0o600, exist_ok=False)
    private_path.write_bytes(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"cannot read private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 private key")
    return key


def load_trusted_key(path: Path) -> TrustedKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SigningError(f"cannot read public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path} is not an Ed25519 public key")
    return TrustedKey(key_id(key), key, str(path))


def sign_bundle(source: BundleSource, private_key: Ed25519PrivateKey) -> bytes:
    """The contents of `bundle.sig` for `source`."""
    manifest = source.manifest()
    signature = private_key.sign(manifest_text(manifest).encode())
    document = {
        "format": SIGNATURE_FORMAT,
        "key_id": key_id(private_key.public_key()),
        "manifest": manifest,
        "signature": base64.b64encode(signature).decode(),
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def verify_bundle(source: BundleSource, trusted: list[TrustedKey]) -> list[BundleProblem]:
    """Problems with the bundle's signature; empty when a trusted key signed exactly these files."""
    from cryptography.exceptions import InvalidSignature

    def problem(message: str) -> list[BundleProblem]:
        return [BundleProblem(SIGNATURE_FILE, message)]

    raw = source.files.get(SIGNATURE_FILE)
    if raw is None:
        return problem("bundle is not signed and trusted bundle keys are configured")
    try:
        document = json.loads(raw)
        signature = base64.b64decode(document["signature"], validate=True)
        signed_manifest = document["manifest"]
        signer_id = document["key_id"]
    except (ValueError, KeyError, TypeError) as exc:
        return problem(f"malformed signature file: {exc}")
    if not isinstance(signed_manifest, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in signed_manifest.items()
    ):
        return problem("malformed signature file: manifest must map file names to hashes")
    if not isinstance(signer_id, str):
        return problem("malformed signature file: key_id must be a string")
    if document.get("format") != SIGNATURE_FORMAT:
        return problem(f"unknown signature format {document.get('format')!r}")
    keys = [k for k in trusted if k.key_id == signer_id]
    if not keys:
        return problem(f"signed by key {signer_id}, which is not a trusted bundle key")
    actual = source.manifest()
    if signed_manifest != actual:
        changed = sorted(
            path
            for path in set(actual) | set(signed_manifest)
            if actual.get(path) != signed_manifest.get(path)
        )
        return problem(f"files changed since signing: {', '.join(changed)}")
    try:
        keys[0].public_key.verify(signature, manifest_text(actual).encode())
    except InvalidSignature:
        return problem(f"signature does not verify with trusted key {signer_id}")
    return []
