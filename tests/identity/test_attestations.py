"""Image attestations end to end, in a real `trustplane serve` over HTTPS with a certificate from
its own trust-domain CA: a client that trusts only `trustplane identity bundle --pem`, a CI
token exchanged for a JWT-SVID, an attested digest admitted and any other refused, and every
kind of bad credential refused with its reason."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import SHOP
from tests.identity.test_server import EXCHANGE, JWT_TYPE, RULE, pipeline_token
from tests.issuer import Jwks, Key, issuer_settings, rsa_key
from tests.support import (
    TRUSTPLANE,
    Server,
    free_port,
    run_cli,
    server_env,
    wait_for,
    wait_ready,
)
from trustplane.config import IdentitySettings
from trustplane.identity.dsse import sign_envelope
from trustplane.identity.kek import Kek, load_kek, new_kek
from trustplane.identity.keys import IdentityKeys
from trustplane.identity.spiffe_id import SpiffeId
from trustplane.identity.svid import issue_jwt_svid
from trustplane.posture.image_attestations import (
    PAYLOAD_TYPE,
    AttestationStore,
    ImageRef,
    build_payload,
)
from trustplane.store.database import create_store_engine, migrate

pytestmark = pytest.mark.slow

TRUST_DOMAIN = "example.test"
CI_ID = f"spiffe://{TRUST_DOMAIN}/ci/octo-org/shop/deploy"
HOST = "trustplane.trustplane.svc"
SLSA = "https://slsa.dev/provenance/v1"
ATTESTED = "registry.example.com/shop/api@sha256:" + "ab" * 32
NOT_ATTESTED = "registry.example.com/shop/api@sha256:" + "cd" * 32


@pytest.fixture(scope="module")
def idp_key() -> Key:
    return rsa_key("ci-attest")


@pytest.fixture(scope="module")
def idp(idp_key: Key) -> Iterator[Jwks]:
    jwks = Jwks()
    jwks.keys = [idp_key.jwk()]
    yield jwks
    jwks.close()


@pytest.fixture(scope="module")
def server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, idp: Jwks
) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("state")
    kek_file = state.parent / f"{state.name}.kek"
    kek_file.write_text(new_kek())
    kek_file.chmod(0o600)
    port = free_port()
    env = server_env(
        state,
        module_database_url,
        server__port=port,
        policy__bundle_dir=SHOP,
        policy__watch="false",
        pep__issuers=issuer_settings(idp),
        identity__trust_domain=TRUST_DOMAIN,
        identity__kek_file=kek_file,
        identity__exchange_rules=[RULE],
        tls__from_ca="true",
        tls__dns_names=[HOST, "127.0.0.1"],
        admission__namespaces=json.dumps(
            {"prod": {"enforce": ["zero-trust"], "warn": [], "audit": []}}
        ),
        admission__params=json.dumps(
            {
                "approved_registries": ["registry.example.com/"],
                "attestation_signers": [f"spiffe://{TRUST_DOMAIN}/ci/*"],
            }
        ),
    )
    assert run_cli("init", env=env).returncode == 0
    bundle = run_cli("identity", "bundle", "--pem", env=env)
    assert bundle.returncode == 0, bundle.stderr
    ca_file = state / "ca.pem"
    ca_file.write_text(bundle.stdout)
    log_path = state / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*TRUSTPLANE, "serve"], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    srv = Server(
        f"https://127.0.0.1:{port}", {**env, "SSL_CERT_FILE": str(ca_file)}, process, log_path
    )
    srv.token = (state / "admin.token").read_text().strip()
    srv.client = httpx.Client(
        base_url=srv.url, timeout=10, verify=ssl.create_default_context(cafile=str(ca_file))
    )
    try:
        wait_ready(srv)
        yield srv
    finally:
        srv.stop()


def issuer_of(server: Server) -> str:
    return str(server.client.get("/.well-known/openid-configuration").json()["issuer"])


def ci_svid(server: Server, idp_key: Key, **form: str) -> str:
    body = {
        "grant_type": EXCHANGE,
        "subject_token": pipeline_token(idp_key),
        "subject_token_type": JWT_TYPE,
        **form,
    }
    response = server.client.post("/v1/token", data=body)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def attest(server: Server, token: str | None, image: str = ATTESTED, **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    document = {"image": image, "predicate_type": SLSA, "predicate": {"builder": {"id": "ci"}}}
    return server.client.post("/v1/attestations", json={**document, **body}, headers=headers)


def pod(image: str, name: str = "api") -> dict[str, Any]:
    """A pod that meets every other zero-trust rule."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "prod",
            "labels": {
                "trustplane.io/owner": "team-shop",
                "trustplane.io/data-classification": "internal",
            },
            "annotations": {"trustplane.io/egress": "none"},
        },
        "spec": {
            "serviceAccountName": "api",
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "api",
                    "image": image,
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "64Mi"},
                        "limits": {"memory": "128Mi"},
                    },
                }
            ],
        },
    }


def admit(server: Server, obj: dict[str, Any], uid: str, dry_run: bool = False) -> dict[str, Any]:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "prod",
            "name": obj["metadata"]["name"],
            "operation": "CREATE",
            "userInfo": {"username": "deployer"},
            "object": obj,
            "dryRun": dry_run,
        },
    }
    response = server.client.post("/v1/admission", json=review)
    assert response.status_code == 200, response.text
    return dict(response.json()["response"])


def test_served_over_https_with_a_certificate_from_the_trust_domain_ca(server: Server) -> None:
    assert server.client.get("/readyz").status_code == 200
    by_name = server.client.get("/healthz", extensions={"sni_hostname": HOST})
    assert by_name.status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.url + "/healthz", verify=ssl.create_default_context())
    pem = run_cli("identity", "bundle", "--base64", env=server.env)
    assert pem.returncode == 0
    assert base64.b64decode(pem.stdout).decode().startswith("-----BEGIN CERTIFICATE-----")


def test_an_attested_digest_is_admitted_and_another_is_refused(
    server: Server, idp_key: Key
) -> None:
    response = attest(server, ci_svid(server, idp_key))
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["signer"] == CI_ID
    assert created["digest"] == "sha256:" + "ab" * 32
    assert created["envelope"]["payloadType"] == "application/vnd.trustplane.attestation.v1+json"
    statement = json.loads(base64.b64decode(created["envelope"]["payload"]))["statement"]
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [
        {"name": "registry.example.com/shop/api", "digest": {"sha256": "ab" * 32}}
    ]
    assert statement["predicateType"] == SLSA

    admitted = admit(server, pod(ATTESTED), "uid-attested")
    assert admitted["allowed"] is True, admitted
    refused = admit(server, pod(NOT_ATTESTED), "uid-other")
    assert refused["allowed"] is False
    assert refused["status"]["code"] == 403
    message = refused["status"]["message"]
    assert "zero-trust/image-attested" in message and "no attestation for sha256:cdcd" in message
    tagged = admit(server, pod("registry.example.com/shop/api:1.0"), "uid-tag")
    assert "zero-trust/image-attested" in tagged["status"]["message"]
    assert "is not pinned by digest" in tagged["status"]["message"]

    listed = server.client.get(
        "/v1/attestations", params={"image": ATTESTED}, headers=server.admin
    ).json()["attestations"]
    assert [a["id"] for a in listed if a["verified"]] == [created["id"]]
    path = f"/v1/decisions/{created['decision_id']}"
    recorded = wait_for(
        lambda: (r := server.client.get(path, headers=server.admin)).status_code == 200 and r
    )
    decision = recorded.json()
    assert decision["request"]["principal"] == {"type": "Service", "id": CI_ID}
    assert decision["request"]["action"]["id"] == "attestation:create"


def _mint(server: Server, trust_domain: str, spiffe_id: str, tmp_path: Path, **kw: Any) -> str:
    """A JWT-SVID signed directly with a trust domain's key: this server's (from its store and
    KEK), or a freshly made foreign one."""
    if trust_domain == TRUST_DOMAIN:
        url = server.env["TRUSTPLANE_STORE__URL"]
        kek: Kek = load_kek(
            IdentitySettings(kek_file=Path(server.env["TRUSTPLANE_IDENTITY__KEK_FILE"]))
        )
    else:
        url = f"sqlite:///{tmp_path / 'foreign.db'}"
        raw = new_kek()
        kek = Kek(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    engine = create_store_engine(url)
    try:
        migrate(engine)
        store = IdentityKeys(engine, kek, trust_domain)
        store.initialise()
        keys = store.load()
    finally:
        engine.dispose()
    svid = issue_jwt_svid(keys, SpiffeId.parse(spiffe_id), [issuer_of(server)], 300, **kw)
    return svid.token


def test_bad_credentials_are_refused_with_the_reason(
    server: Server, idp_key: Key, tmp_path: Path
) -> None:
    missing = attest(server, None)
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"
    assert "Bearer <JWT-SVID>" in missing.json()["detail"]

    good = ci_svid(server, idp_key)
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = f"spiffe://{TRUST_DOMAIN}/ci/octo-org/other/deploy"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    expired = _mint(server, TRUST_DOMAIN, CI_ID, tmp_path, now=time.time() - 3600)
    foreign = _mint(server, "other.test", "spiffe://other.test/ci/x", tmp_path)
    for token, reason in [
        (f"{header}.{forged}.{signature}", "token_invalid"),
        (expired, "token_expired"),
        (foreign, "wrong_trust_domain: spiffe://other.test/ci/x is not in trust domain"),
        (ci_svid(server, idp_key, audience="deploy-api"), "token_wrong_audience"),
        (pipeline_token(idp_key), "token_alg_not_allowed"),
        ("not-a-token", "token_malformed"),
    ]:
        response = attest(server, token)
        assert response.status_code == 401, (reason, response.text)
        assert reason in response.json()["detail"]
        assert 'error="invalid_token"' in response.headers["www-authenticate"]

    revoked = ci_svid(server, idp_key)
    jti = jwt.decode(revoked, options={"verify_signature": False})["jti"]
    assert (
        server.client.post(
            "/v1/revocations",
            json={"kind": "credential", "target": jti, "reason": "leaked in a build log"},
            headers=server.admin,
        ).status_code
        == 201
    )
    response = attest(server, revoked)
    assert response.status_code == 403
    assert "credential_revoked" in response.json()["detail"]
    assert "leaked in a build log" in response.json()["detail"]


def test_bad_bodies_name_the_field(server: Server, idp_key: Key) -> None:
    token = ci_svid(server, idp_key)
    for body, pointer, detail in [
        ({"image": "registry.example.com/shop/api:1.0"}, "/image", "not pinned by digest"),
        ({"predicate_type": "slsa provenance"}, "/predicate_type", "must be a URI"),
        ({"predicate": ["not", "an", "object"]}, "/predicate", ""),
        ({"signature": "x"}, "/signature", "unknown field"),
    ]:
        response = attest(server, token, **body)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["errors"][0]["pointer"] == pointer
        assert detail in problem["detail"]
    assert server.client.get("/v1/attestations").status_code == 401
    bad_query = server.client.get("/v1/attestations", params={"image": "x:1"}, headers=server.admin)
    assert bad_query.status_code == 400 and "image" in bad_query.json()["detail"]


def test_the_cli_attests_with_a_pipeline_token_and_lists(
    server: Server, idp_key: Key, tmp_path: Path
) -> None:
    image = "registry.example.com/shop/cli@sha256:" + "ef" * 32
    predicate = tmp_path / "provenance.json"
    predicate.write_text(json.dumps({"buildType": "https://example.test/ci"}))
    env = {
        **server.env,
        "TRUSTPLANE_CLI__SERVER_URL": server.url,
        "TRUSTPLANE_CI_TOKEN": pipeline_token(idp_key),
    }
    result = run_cli(
        "attest", image, "--predicate-type", SLSA, "--predicate", str(predicate), "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["signer"] == CI_ID
    assert created["predicate"] == {"buildType": "https://example.test/ci"}
    assert admit(server, pod(image, name="cli"), "uid-cli")["allowed"] is True

    listed = run_cli("attestations", "list", "--image", image, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)["attestations"]
    assert item["id"] == created["id"] and item["verified"] is True
    table = run_cli("attestations", "list", env={**env, "COLUMNS": "250"})
    assert table.returncode == 0 and "registry.example.com/shop/cli" in table.stdout

    withdrawn = run_cli(
        "attestations",
        "withdraw",
        created["id"],
        "--reason",
        "build compromised",
        "--json",
        env=env,
    )
    assert withdrawn.returncode == 0, withdrawn.stderr
    assert json.loads(withdrawn.stdout)["withdrawn"] is True
    again = admit(server, pod(image, name="cli"), "uid-cli-withdrawn")
    assert again["allowed"] is False and "no attestation for" in again["status"]["message"]
    gone = run_cli("attestations", "withdraw", created["id"], "--reason", "twice", env=env)
    assert gone.returncode == 2 and "no attestation" in gone.stderr

    unpinned = run_cli(
        "attest", "registry.example.com/shop/cli:1", "--predicate-type", SLSA, env=env
    )
    assert unpinned.returncode == 2
    assert "not pinned by digest" in unpinned.stderr and "Traceback" not in unpinned.stderr
    refused = run_cli(
        "attest", image, "--predicate-type", SLSA, env={**env, "TRUSTPLANE_CI_TOKEN": "junk"}
    )
    assert refused.returncode == 2 and "token exchange refused: invalid_grant" in refused.stderr
    neither = run_cli(
        "attest", image, "--predicate-type", SLSA, env={**env, "TRUSTPLANE_CI_TOKEN": ""}
    )
    assert neither.returncode == 2 and "give one credential" in neither.stderr


def test_an_attestation_stored_by_another_replica_reaches_admission_through_the_feed(
    server: Server, tmp_path: Path
) -> None:
    """Another replica on the same store (here: this test process) takes an attestation; the
    serving node hears of it on the change feed and admits the digest, without a restart and
    without querying the store per review."""
    image = "registry.example.com/shop/replica@sha256:" + "12" * 32
    assert (
        admit(server, pod(image, name="replica"), "uid-replica-0", dry_run=True)["allowed"] is False
    )
    engine = create_store_engine(server.env["TRUSTPLANE_STORE__URL"])
    try:
        kek = load_kek(IdentitySettings(kek_file=Path(server.env["TRUSTPLANE_IDENTITY__KEK_FILE"])))
        signer = IdentityKeys(engine, kek, TRUST_DOMAIN).load().jwt_signer
        assert signer is not None
        ref = ImageRef.parse(image)
        now = time.time()
        payload = build_payload(ref, SLSA, {}, CI_ID, now, {})
        envelope = sign_envelope(PAYLOAD_TYPE, payload, signer.kid, signer.private_key)
        AttestationStore(engine).add(ref, SLSA, CI_ID, now, "replica-decision", envelope)
    finally:
        engine.dispose()
    wait_for(
        lambda: admit(server, pod(image, name="replica"), "uid-replica", dry_run=True)["allowed"]
    )
