"""C2SP tlog-checkpoint tree heads carried in C2SP signed notes, signed with Ed25519.

A checkpoint commits a log to its Merkle tree at one size (https://c2sp.org/tlog-checkpoint)::

    <origin>\\n<tree size>\\n<base64 root hash>\\n[<extension line>\\n ...]

and travels as a signed note (https://c2sp.org/signed-note, the golang.org/x/mod/sumdb/note
format): the text, a blank line, then one or more ``— <key name> <base64(key ID || sig)>``
lines. Using the exact public formats means witnesses, monitors and the Go tooling can check the
ledger's tree heads without anything trustplane-specific.

Parsing is strict (canonical base64, no leading zeros, no control characters, no stray
whitespace) so that one checkpoint has exactly one encoding, and every failure is a
:class:`CheckpointError` whose message says what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from trustplane.errors import TrustplaneError

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "NoteSigner",
    "NoteVerifier",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "sign_checkpoint",
    "sign_note",
]

ROOT_HASH_SIZE = 32
MAX_TREE_SIZE = 2**64 - 1
"""Tree sizes are uint64 in every other implementation; refusing more keeps us interoperable."""
MAX_SIGNATURES = 100
"""Same cap as the Go note package: bounds the work a hostile note can cause."""

_ALG_ED25519 = 0x01
_SIG_PREFIX = "— "  # U+2014 EM DASH, U+0020 SPACE
_SIZE_RE = re.compile(r"0|[1-9][0-9]*")
_B64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_HEX8_RE = re.compile(r"[0-9a-fA-F]{8}")


class CheckpointError(TrustplaneError, ValueError):
    """A checkpoint, note or key is malformed, unsigned, or its signature does not verify."""


# -- helpers -------------------------------------------------------------------------------------


def _b64decode(s: str, what: str) -> bytes:
    """Strict standard base64: padded, no whitespace, canonical (so each value has one form)."""
    if not _B64_RE.fullmatch(s):
        raise CheckpointError(f"bad base64 in {what}: {s!r}")
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the regex already vetted it
        raise CheckpointError(f"bad base64 in {what}: {s!r}") from exc
    if base64.b64encode(raw).decode("ascii") != s:
        raise CheckpointError(f"non-canonical base64 in {what}: {s!r}")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _has_control(s: str, allow_newline: bool = False) -> int:
    """Index of the first ASCII control character (< U+0020) in ``s``, or -1."""
    for i, c in enumerate(s):
        if c < " " and not (allow_newline and c == "\n"):
            return i
    return -1


def _is_valid_key_name(name: str) -> bool:
    """Signed-note key names: non-empty, no Unicode spaces, no '+' (it separates key fields)."""
    return (
        isinstance(name, str)
        and name != ""
        and "+" not in name
        and _has_control(name) < 0
        and not any(c.isspace() for c in name)
    )


def _check_key_name(name: str) -> str:
    if not _is_valid_key_name(name):
        raise CheckpointError(
            f"invalid key name {name!r}: must be non-empty, without spaces, '+' or control chars"
        )
    return name


def _key_id(name: str, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || 0x01 || public key)[:4], per signed-note's Ed25519 key IDs."""
    return hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([_ALG_ED25519]) + public_key
    ).digest()[:4]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _split_key(s: str, nfields: int, what: str) -> list[str]:
    # Every field but the last (base64, which may itself contain '+') is '+'-free.
    parts = s.split("+", nfields - 1)
    if len(parts) != nfields:
        raise CheckpointError(f"malformed {what}: expected {nfields} '+'-separated fields")
    return parts


def _parse_key_fields(name: str, hex_id: str, key64: str, what: str) -> tuple[str, bytes, bytes]:
    """Validate name, key ID and algorithm-tagged key material common to both key strings."""
    _check_key_name(name)
    if not _HEX8_RE.fullmatch(hex_id):
        raise CheckpointError(f"malformed {what}: key ID {hex_id!r} is not 8 hex digits")
    raw = _b64decode(key64, what)
    if len(raw) != 1 + 32:
        raise CheckpointError(f"malformed {what}: key is {len(raw)} bytes, expected 33")
    if raw[0] != _ALG_ED25519:
        raise CheckpointError(f"unknown key algorithm {raw[0]:#04x} in {what}")
    return name, bytes.fromhex(hex_id), raw[1:]


# -- keys ----------------------------------------------------------------------------------------


class NoteVerifier:
    """An Ed25519 note-verification key, identified by (name, key ID) as signed-note specifies."""

    __slots__ = ("_key", "_key_id", "_name", "_public")

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        self._name = _check_key_name(name)
        self._key = public_key
        self._public = _raw_public(public_key)
        self._key_id = _key_id(name, self._public)

    @classmethod
    def from_verifier_key(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hex key ID>+<base64(0x01 || public key)>`` (the Go vkey format).

        The key ID must match the one derived from name and key, so a typo cannot go unnoticed.
        """
        if not isinstance(vkey, str):
            raise CheckpointError("verifier key must be a str")
        name, hex_id, key64 = _split_key(vkey, 3, "verifier key")
        name, key_id, pub = _parse_key_fields(name, hex_id, key64, "verifier key")
        if key_id != _key_id(name, pub):
            raise CheckpointError(
                f"verifier key ID {hex_id} does not match key {name!r} "
                f"(expected {_key_id(name, pub).hex()})"
            )
        try:
            key = Ed25519PublicKey.from_public_bytes(pub)
        except ValueError as exc:  # pragma: no cover - any 32 bytes load; checked at verify
            raise CheckpointError(f"invalid Ed25519 public key in verifier key: {exc}") from exc
        return cls(name, key)

    def verifier_key(self) -> str:
        """The ``<name>+<hex key ID>+<base64 key>`` string to hand to verifiers."""
        key64 = _b64encode(bytes([_ALG_ED25519]) + self._public)
        return f"{self._name}+{self._key_id.hex()}+{key64}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID that prefixes this key's signatures."""
        return self._key_id

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (64 bytes, no key ID) is this key's signature on ``message``."""
        if len(signature) != 64:
            return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"NoteVerifier({self.verifier_key()!r})"


class NoteSigner:
    """An Ed25519 note-signing key with its signed-note name and key ID."""

    __slots__ = ("_key", "_verifier")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        # The verifier holds the name and key ID; the signer shares them rather than derive
        # them a second time.
        self._verifier = NoteVerifier(name, private_key.public_key())

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """A fresh random key for ``name``."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_signer_key(cls, skey: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || 32-byte seed)>``."""
        if not isinstance(skey, str):
            raise CheckpointError("signer key must be a str")
        p1, p2, name, hex_id, key64 = _split_key(skey, 5, "signer key")
        if p1 != "PRIVATE" or p2 != "KEY":
            raise CheckpointError("malformed signer key: must start with 'PRIVATE+KEY+'")
        name, key_id, seed = _parse_key_fields(name, hex_id, key64, "signer key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(seed))
        if signer.key_id != key_id:
            raise CheckpointError(
                f"signer key ID {hex_id} does not match key {name!r} "
                f"(expected {signer.key_id.hex()})"
            )
        return signer

    def signer_key(self) -> str:
        """The secret ``PRIVATE+KEY+...`` string (interchangeable with the Go note package)."""
        seed = self._key.private_bytes_raw()
        key64 = _b64encode(bytes([_ALG_ED25519]) + seed)
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{key64}"

    def verifier_key(self) -> str:
        """The public ``<name>+<hex key ID>+<base64 key>`` string matching this signer."""
        return self.verifier().verifier_key()

    def verifier(self) -> NoteVerifier:
        """The matching :class:`NoteVerifier`."""
        return self._verifier

    @property
    def name(self) -> str:
        return self._verifier.name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID that prefixes this key's signatures."""
        return self._verifier.key_id

    def sign(self, message: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature on ``message``."""
        return self._key.sign(message)

    def __repr__(self) -> str:  # never print the secret key
        return f"NoteSigner(name={self.name!r}, key_id={self.key_id.hex()!r})"


# -- signed notes --------------------------------------------------------------------------------


def _check_note_text(text: str) -> None:
    if not isinstance(text, str):
        raise CheckpointError("note text must be a str")
    if not text.endswith("\n"):
        raise CheckpointError("malformed note: text must end with a newline")
    i = _has_control(text, allow_newline=True)
    if i >= 0:
        raise CheckpointError(f"malformed note: control character {text[i]!r} at offset {i}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CheckpointError(f"malformed note: not valid UTF-8 ({exc.reason})") from exc


def sign_note(text: str, signer: NoteSigner) -> str:
    """Sign arbitrary note text (ending in a newline) and return the full signed note."""
    _check_note_text(text)
    sig = signer.sign(text.encode("utf-8"))
    return f"{text}\n{_SIG_PREFIX}{signer.name} {_b64encode(signer.key_id + sig)}\n"


def _note_str(note: str | bytes) -> str:
    if isinstance(note, bytes | bytearray):
        try:
            return bytes(note).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"malformed note: not valid UTF-8 at byte {exc.start}") from exc
    if not isinstance(note, str):
        raise CheckpointError(f"note must be str or bytes, not {type(note).__name__}")
    return note


def open_note(note: str | bytes, verifier: NoteVerifier | Sequence[NoteVerifier]) -> str:
    """Return the text of ``note`` once a valid signature by ``verifier`` is found in it.

    Follows signed-note: signatures by other keys are ignored (that is how witnesses cosign and
    keys rotate), but a signature that claims to be by ``verifier`` and fails rejects the note.
    ``verifier`` may be several keys (the current checkpoint key and those it replaced): a
    valid signature by any of them opens the note. ``note`` may be the UTF-8 bytes as received
    off the wire.
    """
    trusted = [verifier] if isinstance(verifier, NoteVerifier) else list(verifier)
    if not trusted:
        raise CheckpointError("no verifier key to open the note with")
    known = {(v.name, v.key_id): v for v in trusted}
    note = _note_str(note)
    i = _has_control(note, allow_newline=True)
    if i >= 0:
        raise CheckpointError(f"malformed note: control character {note[i]!r} at offset {i}")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CheckpointError(f"malformed note: not valid UTF-8 ({exc.reason})") from exc
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("malformed note: no blank line before the signatures")
    text, sigs = note[: split + 1], note[split + 2 :]
    if not sigs:
        raise CheckpointError("malformed note: no signature lines after the blank line")
    if not sigs.endswith("\n"):
        raise CheckpointError("malformed note: last signature line does not end with a newline")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    first_sig_line = text.count("\n") + 2
    message = text.encode("utf-8")
    verified = False
    for n, line in enumerate(lines, start=first_sig_line):
        if not line.startswith(_SIG_PREFIX):
            raise CheckpointError(f"malformed signature line {n}: must start with '— '")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not _is_valid_key_name(name):
            raise CheckpointError(f"malformed signature line {n}: bad key name {name!r}")
        raw = _b64decode(b64, f"signature line {n}")
        if len(raw) < 5:
            raise CheckpointError(f"malformed signature line {n}: signature too short")
        signer = known.get((name, raw[:4]))
        if signer is None:
            continue  # someone else's key (or an unknown one sharing a name or ID): ignore
        if not signer.verify(message, raw[4:]):
            raise CheckpointError(
                f"signature mismatch on line {n}: invalid signature for key "
                f"{signer.name}+{signer.key_id.hex()}"
            )
        verified = True
    if not verified:
        names = ", ".join(f"{v.name}+{v.key_id.hex()}" for v in trusted)
        raise CheckpointError(f"unknown key: note has no signature by {names}")
    return text


# -- checkpoints ---------------------------------------------------------------------------------


def _check_line(value: str, what: str) -> None:
    if not isinstance(value, str):
        raise CheckpointError(f"{what} must be a str, not {type(value).__name__}")
    if value == "":
        raise CheckpointError(f"{what} must not be empty")
    i = _has_control(value)
    if i >= 0:
        raise CheckpointError(f"{what} contains control character {value[i]!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CheckpointError(f"{what} is not valid UTF-8 ({exc.reason})") from exc


@dataclass(frozen=True)
class Checkpoint:
    """A log's commitment to its Merkle tree (RFC 9162 root ``root_hash``) at ``size`` leaves.

    Validated on construction so that every instance has a body that parses back to it.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            raise CheckpointError(f"tree size must be an int, not {type(self.size).__name__}")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"tree size {self.size} is out of range 0..2**64-1")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != ROOT_HASH_SIZE:
            got = len(self.root_hash) if isinstance(self.root_hash, bytes) else self.root_hash
            raise CheckpointError(f"root hash must be {ROOT_HASH_SIZE} bytes, got {got!r}")
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("extensions must be a tuple of str")
        for i, ext in enumerate(self.extensions):
            _check_line(ext, f"extension line {i + 4}")

    def body(self) -> str:
        """The note text: origin, size, base64 root and extension lines, each newline-ended."""
        lines = [self.origin, str(self.size), _b64encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(body: str) -> Checkpoint:
    """Strictly parse checkpoint note text (signature lines excluded) into a :class:`Checkpoint`."""
    if not isinstance(body, str):
        raise CheckpointError("checkpoint body must be a str")
    if not body.endswith("\n"):
        raise CheckpointError("malformed checkpoint: body must end with a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(
            f"malformed checkpoint: {len(lines)} line(s), need origin, tree size and root hash"
        )
    for n, line in enumerate(lines, start=1):
        if line == "":
            raise CheckpointError(f"malformed line {n}: empty line in checkpoint body")
        i = _has_control(line)
        if i >= 0:
            raise CheckpointError(f"malformed line {n}: control character {line[i]!r}")
    origin, size_s, root_s, *extensions = lines
    if not _SIZE_RE.fullmatch(size_s):
        raise CheckpointError(
            f"malformed line 2: tree size {size_s!r} is not a decimal without leading zeros"
        )
    size = int(size_s)
    if size > MAX_TREE_SIZE:
        raise CheckpointError(f"malformed line 2: tree size {size} exceeds 2**64-1")
    root = _b64decode(root_s, "line 3 (root hash)")
    if len(root) != ROOT_HASH_SIZE:
        raise CheckpointError(
            f"malformed line 3: root hash is {len(root)} bytes, expected {ROOT_HASH_SIZE}"
        )
    return Checkpoint(origin, size, root, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> str:
    """Sign ``cp`` and return the full signed note text."""
    return sign_note(cp.body(), signer)


def open_checkpoint(
    note: str | bytes, verifier: NoteVerifier | Sequence[NoteVerifier]
) -> Checkpoint:
    """Verify that ``note`` carries a valid signature by ``verifier``, then parse its checkpoint.

    Raises :class:`CheckpointError` if the note is malformed, lacks such a signature, has a
    failing one, or its text is not a well-formed checkpoint.
    """
    return parse_checkpoint(open_note(note, verifier))
