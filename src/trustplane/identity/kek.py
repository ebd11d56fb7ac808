"""The key-encryption key (KEK) that seals identity private keys at rest.

Private keys are stored as AES-256-GCM ciphertext, with the key's id as associated data, so a
sealed key copied onto another key's row does not open. The KEK itself comes from the settings:
`identity.kek` (environment) or `identity.kek_file`, a file no one but its owner may read. It is
never written to the store, the ledger or a log line.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustplane.config import IdentitySettings
from trustplane.errors import TrustplaneError

KEK_BYTES = 32
_NONCE_BYTES = 12
_VERSION = b"\x01"


class KekError(TrustplaneError):
    """The KEK is missing, malformed, badly protected, or does not open a sealed key."""


def new_kek() -> str:
    """A fresh KEK in the form the settings take (base64url, no padding)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEK_BYTES)).rstrip(b"=").decode()


def write_kek_file(path: Path) -> None:
    """Write a new KEK to `path` with mode 0600; refuses to overwrite an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KekError(f"{path} already exists; a KEK is never overwritten") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(new_kek() + "\n")


def _decode(text: str, origin: str) -> bytes:
    value = text.strip()
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise KekError(f"the KEK from {origin} is not base64url") from None
    if len(raw) != KEK_BYTES:
        raise KekError(f"the KEK from {origin} is {len(raw)} bytes; it must be {KEK_BYTES}")
    return raw


def load_kek(settings: IdentitySettings) -> Kek:
    """The configured KEK. A file readable by group or others is refused: it would let any
    local user unseal the trust domain's keys."""
    if settings.kek is not None:
        return Kek(_decode(settings.kek.get_secret_value(), "TRUSTPLANE_IDENTITY__KEK"))
    path = settings.kek_file
    if path is None:
        raise KekError(
            "no key-encryption key: set identity.kek_file (a 0600 file made with "
            "`trustplane identity new-kek --out FILE`) or TRUSTPLANE_IDENTITY__KEK"
        )
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KekError(f"KEK file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KekError(
            f"KEK file {path} has mode {stat.S_IMODE(mode):04o}; it must not be accessible "
            "to group or others (chmod 600)"
        )
    return Kek(_decode(path.read_text(), str(path)))


class Kek:
    """Seals and opens private keys. `repr` never shows the key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Kek(<hidden>)"

    def seal(self, plaintext: bytes, key_id: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, key_id.encode())

    def open(self, sealed: bytes, key_id: str) -> bytes:
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
            raise KekError(f"sealed key {key_id} is not in a known format")
        nonce = sealed[1 : 1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + _NONCE_BYTES :], key_id.encode())
        except InvalidTag:
            raise KekError(
                f"the KEK does not open key {key_id}: wrong KEK, or the sealed key was altered"
            ) from None
