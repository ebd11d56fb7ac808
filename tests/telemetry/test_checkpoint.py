"""Tests for trustplane.telemetry.checkpoint: C2SP tlog-checkpoint in C2SP signed notes."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from trustplane.telemetry.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteSigner,
    NoteVerifier,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    sign_checkpoint,
    sign_note,
)

# -- known answers from golang.org/x/mod/sumdb/note's note_test.go -------------------------------

PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
    "dngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnW"
    "Lox33WWd1RvMc+QQ=\n"
)

# A real checkpoint of the Go checksum database (https://sum.golang.org/latest, 2024-09-23, as
# recorded in a public test suite) and the sumdb key built into the go command.
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n"
    "30055305\n"
    "mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=\n"
    "\n"
    "— sum.golang.org Az3grpgEild5qw7+5dtV13Kf1C2Xurm8q4fhdxvcsDHnqNTaxL2AFjBY+2TyGKevucFc"
    "AAlWFJJYle3EJlDCrQ+y3A8=\n"
)

ROOT = hashlib.sha256(b"root").digest()


def test_go_key_vectors() -> None:
    signer = NoteSigner.from_signer_key(PETER_SKEY)
    assert signer.name == "PeterNeumann"
    assert signer.key_id == bytes.fromhex("c74f20a3")
    assert signer.signer_key() == PETER_SKEY
    assert signer.verifier_key() == PETER_VKEY
    verifier = NoteVerifier.from_verifier_key(PETER_VKEY)
    assert (verifier.name, verifier.key_id) == ("PeterNeumann", bytes.fromhex("c74f20a3"))
    assert verifier.verifier_key() == PETER_VKEY
    assert "AYEK" not in repr(signer)  # the secret never shows in logs


def test_go_sign_vector() -> None:
    # Ed25519 is deterministic, so our signature must be byte-for-byte the Go one.
    signer = NoteSigner.from_signer_key(PETER_SKEY)
    assert sign_note(GO_TEXT, signer) == GO_TEXT + "\n" + PETER_SIG


def test_go_open_vectors() -> None:
    peter = NoteVerifier.from_verifier_key(PETER_VKEY)
    enoch = NoteVerifier.from_verifier_key(ENOCH_VKEY)
    both = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(both, peter) == GO_TEXT  # Enoch's signature is ignored, not an error
    assert open_note(both, enoch) == GO_TEXT
    assert open_note(both.encode(), peter) == GO_TEXT
    # Repeated valid signatures are fine.
    assert open_note(GO_TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG, peter) == GO_TEXT
    with pytest.raises(CheckpointError, match="no signature by EnochRoot"):
        open_note(GO_TEXT + "\n" + PETER_SIG, enoch)
    # A note that is not a checkpoint is refused by open_checkpoint even though it is signed.
    with pytest.raises(CheckpointError, match="malformed checkpoint"):
        open_checkpoint(both, peter)


def test_go_invalid_signature_vector() -> None:
    peter = NoteVerifier.from_verifier_key(PETER_VKEY)
    mangled = GO_TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(CheckpointError, match="invalid signature for key PeterNeumann\\+c74f20a3"):
        open_note(mangled, peter)
    # An otherwise-valid note where the known key's signature fails is rejected outright.
    with pytest.raises(CheckpointError, match="signature mismatch"):
        open_note(GO_TEXT + "\n" + ENOCH_SIG + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:], peter)


@pytest.mark.parametrize(
    "msg",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        GO_TEXT + "\n" + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZS"
        "NXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        GO_TEXT + "\n" + PETER_SIG * 101,
        GO_TEXT + "\n" + PETER_SIG.replace("— ", "-- "),
        GO_TEXT + "\n" + PETER_SIG.replace(" x08go", "  x08go"),
        GO_TEXT + "\n" + PETER_SIG.replace("=\n", "= \n"),
        GO_TEXT + "\n" + PETER_SIG.replace("\n", "\r\n"),
        GO_TEXT + "\n" + "— PeterNeumann " + base64.b64encode(b"\xc7\x4f\x20\xa3").decode() + "\n",
    ],
)
def test_go_malformed_notes(msg: str) -> None:
    peter = NoteVerifier.from_verifier_key(PETER_VKEY)
    with pytest.raises(CheckpointError, match=r"malformed|bad base64"):
        open_note(msg, peter)


def test_invalid_utf8_bytes() -> None:
    peter = NoteVerifier.from_verifier_key(PETER_VKEY)
    with pytest.raises(CheckpointError, match="UTF-8"):
        open_note(b"\xff" + (GO_TEXT + "\n" + PETER_SIG).encode(), peter)


def _manglings(key: str) -> list[str]:
    """Every proper substring and every one-character increment, as the Go tests try."""
    out = {key[i:j] for i in range(len(key) + 1) for j in range(i + 1, len(key) + 1)}
    out |= {key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :] for i in range(len(key))}
    out.discard(key)
    return sorted(out)


def test_mangled_verifier_keys_rejected() -> None:
    for bad in _manglings(PETER_VKEY):
        with pytest.raises(CheckpointError):
            NoteVerifier.from_verifier_key(bad)
    # Wrong key length and unknown algorithm, each with a key ID that matches the mangled key.
    # (Go rejects it for its length; its "BADKEY==" tail is also non-canonical base64.)
    with pytest.raises(CheckpointError, match=r"non-canonical|33 bytes"):
        NoteVerifier.from_verifier_key(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
    with pytest.raises(CheckpointError, match="algorithm"):
        NoteVerifier.from_verifier_key(
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )


def test_mangled_signer_keys_rejected() -> None:
    for bad in _manglings(PETER_SKEY):
        with pytest.raises(CheckpointError):
            NoteSigner.from_signer_key(bad)


# -- real checkpoint -----------------------------------------------------------------------------


def test_sumdb_checkpoint_vector() -> None:
    verifier = NoteVerifier.from_verifier_key(SUMDB_VKEY)
    cp = open_checkpoint(SUMDB_NOTE, verifier)
    assert cp.origin == "go.sum database tree"
    assert cp.size == 30055305
    assert cp.root_hash == base64.b64decode("mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=")
    assert cp.extensions == ()
    assert cp.body() == SUMDB_NOTE.split("\n\n")[0] + "\n"
    tampered = SUMDB_NOTE.replace("30055305", "30055306")
    with pytest.raises(CheckpointError, match="signature mismatch"):
        open_checkpoint(tampered, verifier)


# -- sign / open ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.generate("example.com/ledger")


def test_round_trip(signer: NoteSigner) -> None:
    cp = Checkpoint("example.com/ledger", 42, ROOT, ("ext one", "ext two"))
    note = sign_checkpoint(cp, signer)
    assert note.startswith(cp.body() + "\n— example.com/ledger ")
    verifier = NoteVerifier.from_verifier_key(signer.verifier_key())
    assert open_checkpoint(note, verifier) == cp
    assert open_checkpoint(note, signer.verifier()) == cp
    again = NoteSigner.from_signer_key(signer.signer_key())
    assert again.key_id == signer.key_id
    assert sign_checkpoint(cp, again) == note


def test_key_id_derivation(signer: NoteSigner) -> None:
    pub = base64.b64decode(signer.verifier_key().split("+", 2)[2])
    assert pub[0] == 1 and len(pub) == 33
    want = hashlib.sha256(signer.name.encode() + b"\n" + pub).digest()[:4]
    assert signer.key_id == want
    assert signer.verifier_key().split("+")[1] == want.hex()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("\n42\n", "\n43\n"),
        ("example.com/ledger\n", "example.com/ledgex\n"),
        ("ext one\n", "ext 0ne\n"),
    ],
)
def test_tampering_detected(signer: NoteSigner, old: str, new: str) -> None:
    cp = Checkpoint("example.com/ledger", 42, ROOT, ("ext one",))
    note = sign_checkpoint(cp, signer)
    assert old in note
    with pytest.raises(CheckpointError, match="signature mismatch"):
        open_checkpoint(note.replace(old, new, 1), signer.verifier())


def test_tampered_root_detected(signer: NoteSigner) -> None:
    cp = Checkpoint("example.com/ledger", 42, ROOT)
    note = sign_checkpoint(cp, signer)
    other = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    with pytest.raises(CheckpointError, match="signature mismatch"):
        open_checkpoint(note.replace(base64.b64encode(ROOT).decode(), other), signer.verifier())


def test_wrong_key_rejected(signer: NoteSigner) -> None:
    note = sign_checkpoint(Checkpoint("example.com/ledger", 1, ROOT), signer)
    # Same name, different key: its key ID differs, so the signature is not "by" this key.
    impostor = NoteSigner.generate("example.com/ledger")
    with pytest.raises(CheckpointError, match="unknown key"):
        open_checkpoint(note, impostor.verifier())
    with pytest.raises(CheckpointError, match="unknown key"):
        open_checkpoint(note, NoteVerifier.from_verifier_key(PETER_VKEY))
    # A forged line carrying the verifier's name and key ID but the impostor's signature.
    body = Checkpoint("example.com/ledger", 2, ROOT).body()
    forged_sig = impostor.sign(body.encode())
    forged = (
        f"{body}\n— example.com/ledger {base64.b64encode(signer.key_id + forged_sig).decode()}\n"
    )
    with pytest.raises(CheckpointError, match="signature mismatch"):
        open_checkpoint(forged, signer.verifier())


def test_wrong_key_id_ignored(signer: NoteSigner) -> None:
    cp = Checkpoint("example.com/ledger", 1, ROOT)
    note = sign_checkpoint(cp, signer)
    name, b64 = note.split("\n\n")[1][2:-1].split(" ")
    raw = base64.b64decode(b64)
    bad_id = bytes([raw[0] ^ 1]) + raw[1:]
    relabelled = f"{cp.body()}\n— {name} {base64.b64encode(bad_id).decode()}\n"
    with pytest.raises(CheckpointError, match="unknown key"):
        open_checkpoint(relabelled, signer.verifier())
    # ...but a cosignature from another key alongside the real one is fine.
    witness = NoteSigner.generate("witness.example")
    cosigned = note + sign_note(cp.body(), witness).split("\n\n")[1]
    assert open_checkpoint(cosigned, signer.verifier()) == cp
    assert open_checkpoint(cosigned, witness.verifier()) == cp


def test_malformed_signed_notes(signer: NoteSigner) -> None:
    cp = Checkpoint("example.com/ledger", 7, ROOT)
    note = sign_checkpoint(cp, signer)
    v = signer.verifier()
    body, sig = note.split("\n\n")
    cases = {
        "missing blank line": body + "\n" + sig,
        "extra blank line": body + "\n\n\n" + sig,
        "trailing space": note[:-1] + " \n",
        "bad base64": note.replace(sig.split(" ")[-1][:8], "!!!!!!!!"),
        "no final newline": note[:-1],
        "carriage return": note.replace("\n", "\r\n"),
        "tab": note.replace("— ", "—\t"),
    }
    for what, bad in cases.items():
        with pytest.raises(CheckpointError):
            open_checkpoint(bad, v)
            pytest.fail(what)


def test_signed_but_malformed_body_rejected(signer: NoteSigner) -> None:
    for body in ["origin\n007\n" + base64.b64encode(ROOT).decode() + "\n", "origin\n1\n"]:
        note = sign_note(body, signer)
        with pytest.raises(CheckpointError, match="malformed"):
            open_checkpoint(note, signer.verifier())


# -- strict body parsing -------------------------------------------------------------------------

ROOT64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (f"o\n1\n{ROOT64}", "end with a newline"),
        ("o\n1\n", "1 line|2 line"),
        (f"\n1\n{ROOT64}\n", "line 1"),
        (f"o\n01\n{ROOT64}\n", "line 2.*leading zeros"),
        (f"o\n00\n{ROOT64}\n", "line 2"),
        (f"o\n+1\n{ROOT64}\n", "line 2"),
        (f"o\n-1\n{ROOT64}\n", "line 2"),
        (f"o\n1_000\n{ROOT64}\n", "line 2"),
        (f"o\n 1\n{ROOT64}\n", "line 2"),
        (f"o\n1 \n{ROOT64}\n", "line 2"),
        (f"o\n١\n{ROOT64}\n", "line 2"),  # Arabic-Indic digit one: int() would accept it
        (f"o\n{2**64}\n{ROOT64}\n", "line 2.*2\\*\\*64"),
        (f"o\n1\n{ROOT64[:-1]}\n", "bad base64"),
        (f"o\n1\n{ROOT64} \n", "bad base64"),
        (f"o\n1\n{ROOT64.replace('=', '')}\n", "bad base64"),
        (f"o\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", "line 3.*31 bytes"),
        ("o\n1\n" + base64.urlsafe_b64encode(bytes([0xFB]) * 32).decode() + "\n", "bad base64"),
        (f"o\n1\n{ROOT64}\n\n", "line 4.*empty"),
        (f"o\n1\n{ROOT64}\next\n\n", "line 5.*empty"),
        (f"o\r\n1\n{ROOT64}\n", "line 1.*control"),
        (f"o\n1\n{ROOT64}\nex\tt\n", "line 4.*control"),
    ],
)
def test_parse_rejects(body: str, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        parse_checkpoint(body)


def test_parse_rejects_non_canonical_base64() -> None:
    # "AB==" and "AA==" both decode to b"\x00" in lenient decoders; only the canonical one is OK.
    canonical = base64.b64encode(b"\x00" * 32).decode()
    assert canonical.endswith("AA=")
    with pytest.raises(CheckpointError, match="non-canonical"):
        parse_checkpoint(f"o\n1\n{canonical[:-2]}B=\n")


def test_parse_accepts() -> None:
    cp = parse_checkpoint(f"example.com/log 42\n0\n{ROOT64}\nx\n— y\n")
    assert cp == Checkpoint("example.com/log 42", 0, ROOT, ("x", "— y"))
    assert parse_checkpoint(f"o\n{2**64 - 1}\n{ROOT64}\n").size == 2**64 - 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": ""},
        {"origin": "a\nb"},
        {"size": -1},
        {"size": 2**64},
        {"size": True},
        {"root_hash": b"\x00" * 31},
        {"root_hash": bytearray(32)},
        {"extensions": ("",)},
        {"extensions": ("a\nb",)},
        {"extensions": ["x"]},
    ],
)
def test_checkpoint_validates(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"origin": "o", "size": 1, "root_hash": ROOT, "extensions": ()}
    args.update(kwargs)
    with pytest.raises(CheckpointError):
        Checkpoint(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u00a0b", "a\u2003b", "a\nb", "a\tb"])
def test_invalid_key_names(name: str) -> None:
    with pytest.raises(CheckpointError, match="key name"):
        NoteSigner(name, Ed25519PrivateKey.generate())


# -- properties ----------------------------------------------------------------------------------

line_text = st.text(alphabet=st.characters(min_codepoint=0x20, codec="utf-8"), min_size=1)
checkpoints = st.builds(
    Checkpoint,
    origin=line_text,
    size=st.integers(0, 2**64 - 1),
    root_hash=st.binary(min_size=32, max_size=32),
    extensions=st.lists(line_text, max_size=3).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(cp=checkpoints)
def test_parse_body_round_trip(cp: Checkpoint) -> None:
    assert parse_checkpoint(cp.body()) == cp


@settings(max_examples=50, deadline=None)
@given(cp=checkpoints)
def test_sign_open_round_trip(signer: NoteSigner, cp: Checkpoint) -> None:
    note = sign_checkpoint(cp, signer)
    assert open_checkpoint(note, signer.verifier()) == cp
    assert open_checkpoint(note.encode("utf-8"), signer.verifier()) == cp
