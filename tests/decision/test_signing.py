"""Bundle signatures: only bundles signed by a trusted key load when keys are configured."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.support import write_bundle
from trustplane.decision.loader import LoadOptions, load_bundle
from trustplane.decision.policy_bundle import BundleError, BundleSource
from trustplane.decision.signing import (
    SigningError,
    TrustedKey,
    generate_keypair,
    key_id,
    load_private_key,
    load_trusted_key,
    sign_bundle,
    verify_bundle,
)

FILES = {
    "schema.cedarschema": (
        "entity User; entity Doc;\n"
        "action read appliesTo { principal: User, resource: Doc, context: {} };\n"
    ),
    "policies.cedar": '@id("all-read") @owner("t")\npermit(principal, action, resource);\n',
    "tests/read.yaml": (
        "tests:\n  - name: anyone reads\n"
        "    request: {principal: 'User:u', action: read, resource: 'Doc:d'}\n"
        "    expect: allow\n"
    ),
}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, TrustedKey]:
    private = tmp_path / "keys" / "bundle.key"
    public = tmp_path / "keys" / "bundle.pub"
    generate_keypair(private, public)
    return private, load_trusted_key(public)


def signed_bundle(directory: Path, private: Path) -> Path:
    write_bundle(directory, FILES)
    signature = sign_bundle(BundleSource.from_dir(directory), load_private_key(private))
    (directory / "bundle.sig").write_bytes(signature)
    return directory


def refusal_message(directory: Path, trusted: list[TrustedKey]) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(BundleSource.from_dir(directory), LoadOptions(trusted_keys=trusted))
    (problem,) = info.value.problems
    assert problem.file == "bundle.sig"
    return problem.message


def test_keygen_sign_verify_round_trip_loads(tmp_path: Path, keys: tuple[Path, TrustedKey]) -> None:
    private, trusted = keys
    bundle_dir = signed_bundle(tmp_path / "b", private)
    loaded = load_bundle(BundleSource.from_dir(bundle_dir), LoadOptions(trusted_keys=[trusted]))
    assert [r.passed for r in loaded.test_results] == [True]
    document = json.loads((bundle_dir / "bundle.sig").read_text())
    assert document["key_id"] == trusted.key_id == key_id(load_private_key(private).public_key())
    assert set(document["manifest"]) == set(FILES)


def test_signing_does_not_change_the_revision(
    tmp_path: Path, keys: tuple[Path, TrustedKey]
) -> None:
    unsigned = BundleSource.from_dir(write_bundle(tmp_path / "u", FILES))
    signed = BundleSource.from_dir(signed_bundle(tmp_path / "s", keys[0]))
    assert signed.revision == unsigned.revision


def test_private_key_is_owner_only(tmp_path: Path, keys: tuple[Path, TrustedKey]) -> None:
    private, _ = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_keygen_never_overwrites_an_existing_key(
    tmp_path: Path, keys: tuple[Path, TrustedKey]
) -> None:
    private, _ = keys
    before = private.read_bytes()
    with pytest.raises(FileExistsError):
        generate_keypair(private, tmp_path / "other.pub")
    assert private.read_bytes() == before


def test_unsigned_bundle_refused_when_keys_are_configured(
    tmp_path: Path, keys: tuple[Path, TrustedKey]
) -> None:
    bundle_dir = write_bundle(tmp_path / "b", FILES)
    assert "not signed" in refusal_message(bundle_dir, [keys[1]])
    # Without trusted keys the same bundle loads.
    assert load_bundle(BundleSource.from_dir(bundle_dir)).bundle.policies


def test_bundle_signed_with_another_key_is_refused(
    tmp_path: Path, keys: tuple[Path, TrustedKey]
) -> None:
    other_private = tmp_path / "other" / "k"
    generate_keypair(other_private, tmp_path / "other" / "k.pub")
    bundle_dir = signed_bundle(tmp_path / "b", other_private)
    message = refusal_message(bundle_dir, [keys[1]])
    assert "not a trusted bundle key" in message


def test_forged_signature_with_trusted_key_id_is_refused(
    tmp_path: Path, keys: tuple[Path, TrustedKey]
) -> None:
    other_private = tmp_path / "other" / "k"
    generate_keypair(other_private, tmp_path / "other" / "k.pub")
    bundle_dir = signed_bundle(tmp_path / "b", other_private)
    document = json.loads((bundle_dir / "bundle.sig").read_text())
    document["key_id"] = keys[1].key_id  # claim to be the trusted key
    (bundle_dir / "bundle.sig").write_text(json.dumps(document))
    assert "does not verify" in refusal_message(bundle_dir, [keys[1]])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("modify", "policies.cedar"),
        ("add", "extra.cedar"),
        ("remove", "tests/read.yaml"),
    ],
)
def test_changed_files_after_signing_are_refused_and_named(
    tmp_path: Path, keys: tuple[Path, TrustedKey], change: str, named: str
) -> None:
    bundle_dir = signed_bundle(tmp_path / "b", keys[0])
    path = bundle_dir / named
    if change == "modify":
        path.write_text(path.read_text().replace("permit", "forbid"))
    elif change == "add":
        path.write_text('@id("sneaky") @owner("t")\npermit(principal, action, resource);\n')
    else:
        path.unlink()
    message = refusal_message(bundle_dir, [keys[1]])
    assert "changed since signing" in message
    assert named in message
    assert "schema.cedarschema" not in message


@pytest.mark.parametrize(
    "signature",
    [
        b"not json",
        b"[]",
        b'{"format": "trustplane-bundle-signature/v1"}',
        b'{"format": "x", "key_id": "k", "manifest": {}, "signature": "AAAA"}',
        b'{"format": "trustplane-bundle-signature/v1", "key_id": "k", "manifest": {},'
        b' "signature": "not base64!"}',
    ],
)
def test_malformed_signature_file_is_refused(
    tmp_path: Path, keys: tuple[Path, TrustedKey], signature: bytes
) -> None:
    bundle_dir = write_bundle(tmp_path / "b", FILES)
    (bundle_dir / "bundle.sig").write_bytes(signature)
    message = refusal_message(bundle_dir, [keys[1]])
    assert "malformed" in message or "unknown signature format" in message


@pytest.mark.parametrize("manifest", [None, ["policies.cedar"], "policies.cedar"])
def test_signature_with_non_object_manifest_is_refused_cleanly(
    tmp_path: Path, keys: tuple[Path, TrustedKey], manifest: object
) -> None:
    bundle_dir = signed_bundle(tmp_path / "b", keys[0])
    document = json.loads((bundle_dir / "bundle.sig").read_text())
    document["manifest"] = manifest
    (bundle_dir / "bundle.sig").write_text(json.dumps(document))
    problems = verify_bundle(BundleSource.from_dir(bundle_dir), [keys[1]])
    assert [p.file for p in problems] == ["bundle.sig"]
    assert "malformed" in problems[0].message


def test_unreadable_keys_raise_signing_error(tmp_path: Path, keys: tuple[Path, TrustedKey]) -> None:
    private, _ = keys
    with pytest.raises(SigningError, match="cannot read public key"):
        load_trusted_key(tmp_path / "missing.pub")
    with pytest.raises(SigningError, match="cannot read public key"):
        load_trusted_key(private)  # a private key is not a public key
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SigningError, match="cannot read private key"):
        load_private_key(garbage)
