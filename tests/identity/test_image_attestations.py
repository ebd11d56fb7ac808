"""Image attestations below the HTTP layer: image references, DSSE envelopes, the in-memory
index (on SQLite and PostgreSQL) and the `unattested` CEL function behind
zero-trust/image-attested."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, update

from tests.support import run_cli
from trustplane.identity.dsse import EnvelopeError, sign_envelope, verify_envelope
from trustplane.identity.keys import IdentityKeys
from trustplane.posture.engine import Engine as PostureEngine
from trustplane.posture.engine import select
from trustplane.posture.image_attestations import (
    PAYLOAD_TYPE,
    AttestationError,
    AttestationIndex,
    AttestationStore,
    ImageRef,
    build_payload,
    unattested_function,
)
from trustplane.posture.packs import load_pack
from trustplane.store.tables import attestations

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
CI = "spiffe://example.test/ci/octo-org/shop/deploy"
PARAMS = {"attestation_signers": ["spiffe://example.test/ci/*"]}


def test_image_references_must_be_pinned_by_digest() -> None:
    ref = ImageRef.parse(f"registry.example.com:5000/shop/api:1.2@{DIGEST}")
    assert ref.repository == "registry.example.com:5000/shop/api"
    assert ref.digest == DIGEST
    for bad in ("registry.example.com/shop/api:1.2", f"api@{DIGEST.upper()}", "api@sha256:ab"):
        with pytest.raises(AttestationError, match="not pinned by digest"):
            ImageRef.parse(bad)


def test_envelopes_verify_only_unchanged_and_with_a_known_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    envelope = sign_envelope(PAYLOAD_TYPE, b'{"a":1}', "k1", key)
    assert verify_envelope(envelope, {"k1": key.public_key()}).payload == b'{"a":1}'
    tampered = {**envelope, "payload": base64.b64encode(b'{"a":2}').decode()}
    with pytest.raises(EnvelopeError, match="does not verify"):
        verify_envelope(tampered, {"k1": key.public_key()})
    retyped = {**envelope, "payloadType": "application/vnd.in-toto+json"}
    with pytest.raises(EnvelopeError, match="does not verify"):
        verify_envelope(retyped, {"k1": key.public_key()})
    with pytest.raises(EnvelopeError, match="no signature by a key of this trust domain"):
        verify_envelope(envelope, {"k2": key.public_key()})


def _attest(
    store: AttestationStore, keys: IdentityKeys, image: str, signer: str = CI, kind: str = "x"
) -> str:
    signing = keys.load().jwt_signer
    assert signing is not None
    ref = ImageRef.parse(image)
    now = time.time()
    payload = build_payload(ref, f"https://example.test/{kind}", {"builder": "ci"}, signer, now, {})
    envelope = sign_envelope(PAYLOAD_TYPE, payload, signing.kid, signing.private_key)
    return store.add(ref, f"https://example.test/{kind}", signer, now, "decision", envelope)


def test_index_holds_what_verifies_and_follows_the_store(
    engine: Engine, identity_keys: IdentityKeys
) -> None:
    store = AttestationStore(engine)
    index = AttestationIndex(store, identity_keys.jwt_verification_keys)
    index.refresh()
    assert len(index) == 0
    first = _attest(store, identity_keys, f"registry.example.com/shop/api@{DIGEST}")
    index.refresh()
    [found] = index.lookup(DIGEST)
    assert (found.id, found.signer, found.digest) == (first, CI, DIGEST)
    assert index.lookup(OTHER) == ()

    # a row changed in the database without the trust domain's key vouches for nothing
    second = _attest(store, identity_keys, f"registry.example.com/shop/web@{OTHER}")
    with engine.begin() as connection:
        row = connection.execute(attestations.select().where(attestations.c.id == second)).one()
        envelope = json.loads(row.envelope)
        payload = json.loads(base64.b64decode(envelope["payload"]))
        payload["signer"] = "spiffe://example.test/ci/someone-else"
        envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
        connection.execute(
            update(attestations)
            .where(attestations.c.id == second)
            .values(envelope=json.dumps(envelope), signer="spiffe://example.test/ci/x")
        )
    index.refresh()
    assert index.lookup(OTHER) == ()
    assert len(index) == 1

    # a key from outside the trust domain signs nothing the index believes
    foreign = ec.generate_private_key(ec.SECP256R1())
    ref = ImageRef.parse(f"registry.example.com/shop/api@{OTHER}")
    payload_bytes = build_payload(ref, "https://example.test/x", {}, CI, time.time(), {})
    store.add(
        ref,
        "https://example.test/x",
        CI,
        time.time(),
        "d",
        sign_envelope(PAYLOAD_TYPE, payload_bytes, "not-ours", foreign),
    )
    index.refresh()
    assert index.lookup(OTHER) == ()


def test_unattested_names_what_is_missing(engine: Engine, identity_keys: IdentityKeys) -> None:
    store = AttestationStore(engine)
    index = AttestationIndex(store, identity_keys.jwt_verification_keys)
    _attest(store, identity_keys, f"registry.example.com/shop/api@{DIGEST}")
    _attest(store, identity_keys, f"other.example/x@{OTHER}", signer="spiffe://example.test/dev")
    index.refresh()
    unattested = unattested_function(index)
    assert unattested(f"anywhere.example/mirror@{DIGEST}", PARAMS) == ""  # the digest counts
    assert "not pinned by digest" in unattested("registry.example.com/shop/api:1.0", PARAMS)
    assert "no attestation for sha256:" in unattested(f"x@sha256:{'ef' * 32}", PARAMS)
    assert "attested only by spiffe://example.test/dev" in unattested(f"x@{OTHER}", PARAMS)
    assert "no attestation_signers" in unattested(f"x@{DIGEST}", {})
    typed = {**PARAMS, "attestation_predicate_types": ["https://slsa.dev/provenance/v1"]}
    assert "no attestation of type https://slsa.dev/provenance/v1" in unattested(
        f"x@{DIGEST}", typed
    )
    assert "identity plane is not configured" in unattested_function(None)(f"x@{DIGEST}", PARAMS)


def _pod(*images: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]},
    }


def test_the_zero_trust_rule_with_and_without_the_attestation_store(
    engine: Engine, identity_keys: IdentityKeys
) -> None:
    store = AttestationStore(engine)
    index = AttestationIndex(store, identity_keys.jwt_verification_keys)
    _attest(store, identity_keys, f"registry.example.com/shop/api@{DIGEST}")
    index.refresh()
    rules = select(load_pack("zero-trust").rules, None)
    with_store = PostureEngine(rules, PARAMS, functions={"unattested": unattested_function(index)})

    def attested_findings(obj: dict[str, Any]) -> list[str]:
        found = [f for f in with_store.evaluate(obj) if f.rule_id == "zero-trust/image-attested"]
        assert not any(f.error for f in found)
        return [f.message for f in found]

    assert attested_findings(_pod(f"registry.example.com/shop/api@{DIGEST}")) == []
    [message] = attested_findings(_pod(f"registry.example.com/shop/api@{DIGEST}", "web:1.0"))
    assert message.startswith("containers without an attestation from an allowed signer")
    assert '"c1: web:1.0 is not pinned by digest' in message
    assert "c0" not in message
    # where no store exists (trustplane scan) the rule is left out, and said to be
    without_store = PostureEngine(rules, PARAMS)
    assert "zero-trust/image-attested" in without_store.skipped
    assert all(f.rule_id != "zero-trust/image-attested" for f in without_store.evaluate(_pod("x")))


def test_scan_leaves_the_rule_out_and_says_so(tmp_path: Path) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(json.dumps(_pod("registry.example.com/shop/api:1.0")))
    result = run_cli("scan", str(manifest), "--pack", "zero-trust", "--json")
    assert result.returncode in (0, 1), result.stderr
    assert "zero-trust/image-attested not checked: it needs the image attestations" in (
        " ".join(result.stderr.split())
    )
    rules = {f["rule"] for f in json.loads(result.stdout)["findings"]}
    assert "zero-trust/image-digest" in rules and "zero-trust/image-attested" not in rules
