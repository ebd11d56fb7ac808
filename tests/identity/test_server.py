"""The identity plane in a real `trustplane serve`: bundle and OIDC endpoints, RFC 8693 token
exchange against a loopback OIDC issuer, entries, rotation and inventory through the CLI, and
the Workload API socket the server opens."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
import spiffe

from tests.conftest import SHOP
from tests.issuer import ISSUER, Jwks, Key, claims, issuer_settings, rsa_key
from tests.support import Server, run_cli, running_server
from trustplane.identity.kek import new_kek

TRUST_DOMAIN = "example.test"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
RULE = {
    "name": "shop-deploy",
    "issuer": ISSUER,
    "claims": {
        "repository": "octo-org/shop",
        "ref": "refs/heads/main",
        "environment": ["production", "staging"],
        "workflow": "deploy*",
    },
    "spiffe_id": f"spiffe://{TRUST_DOMAIN}/ci/{{repository}}/deploy",
    "ttl_seconds": 600,
    "owner": "team-shop",
}


@pytest.fixture(scope="module")
def idp_key() -> Key:
    return rsa_key("ci-1")


@pytest.fixture(scope="module")
def idp(idp_key: Key) -> Iterator[Jwks]:
    jwks = Jwks()
    jwks.keys = [idp_key.jwk()]
    yield jwks
    jwks.close()


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agent") / "workload.sock"


@pytest.fixture(scope="module")
def server(
    module_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    idp: Jwks,
    socket_path: Path,
) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("state")
    kek_file = state.parent / f"{state.name}.kek"
    kek_file.write_text(new_kek())
    kek_file.chmod(0o600)
    with running_server(
        state,
        module_database_url,
        SHOP,
        policy__watch="false",
        pep__issuers=issuer_settings(idp),
        identity__trust_domain=TRUST_DOMAIN,
        identity__kek_file=kek_file,
        identity__workload_socket=socket_path,
        identity__exchange_rules=[RULE],
    ) as running:
        yield running


def pipeline_token(key: Key, **overrides: Any) -> str:
    values = {
        "sub": "repo:octo-org/shop:ref:refs/heads/main",
        "repository": "octo-org/shop",
        "ref": "refs/heads/main",
        "environment": "production",
        "workflow": "deploy-shop",
        "jti": base64.urlsafe_b64encode(os.urandom(9)).decode(),
        **overrides,
    }
    return key.sign(claims(**values))


def exchange(server: Server, token: str, **form: str) -> httpx.Response:
    body = {
        "grant_type": EXCHANGE,
        "subject_token": token,
        "subject_token_type": JWT_TYPE,
        "audience": "deploy-api",
        **form,
    }
    return server.client.post("/v1/token", data=body)


def cli(server: Server, *args: str) -> Any:
    result = run_cli(*args, env={**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if "--json" in args else result.stdout


def test_bundle_and_oidc_discovery(server: Server) -> None:
    bundle = server.client.get("/v1/identity/bundle").json()
    assert sorted(k["use"] for k in bundle["keys"]) == ["jwt-svid", "x509-svid"]
    assert isinstance(bundle["spiffe_sequence"], int) and bundle["spiffe_refresh_hint"] > 0
    discovery = server.client.get("/.well-known/openid-configuration").json()
    assert discovery["issuer"] == server.url
    assert discovery["id_token_signing_alg_values_supported"] == ["ES256"]
    jwks = httpx.get(discovery["jwks_uri"]).json()
    assert [k["kid"] for k in jwks["keys"]] == [
        k["kid"] for k in bundle["keys"] if k["use"] == "jwt-svid"
    ]


def test_token_exchange_issues_a_short_lived_jwt_svid(server: Server, idp_key: Key) -> None:
    response = exchange(server, pipeline_token(idp_key))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["issued_token_type"] == JWT_TYPE and body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    # a third party verifies it from OIDC discovery alone
    discovery = server.client.get("/.well-known/openid-configuration").json()
    signing_key = jwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(
        body["access_token"]
    )
    verified = jwt.decode(
        body["access_token"],
        signing_key.key,
        algorithms=["ES256"],
        audience="deploy-api",
        issuer=discovery["issuer"],
    )
    assert verified["sub"] == f"spiffe://{TRUST_DOMAIN}/ci/octo-org/shop/deploy"
    assert verified["exp"] - verified["iat"] <= 900
    assert verified["ci"]["repository"] == "octo-org/shop"
    assert verified["trust_rule"] == "shop-deploy"


def test_token_exchange_with_several_audiences(server: Server, idp_key: Key) -> None:
    form = [
        ("grant_type", EXCHANGE),
        ("subject_token", pipeline_token(idp_key)),
        ("subject_token_type", JWT_TYPE),
        ("audience", "deploy-api"),
        ("audience", "registry"),
    ]
    response = server.client.post(
        "/v1/token",
        content=urlencode(form),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    issued = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert issued["aud"] == ["deploy-api", "registry"]


ADMIN_READS = ("/v1/bundle", "/v1/identity/entries", "/v1/identity/inventory")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("audiences", [["trustplane-admin"], ["deploy-api", "trustplane-admin"]])
def test_token_exchange_never_mints_an_admin_api_credential(
    server: Server, idp_key: Key, audiences: list[str]
) -> None:
    form = [
        ("grant_type", EXCHANGE),
        ("subject_token", pipeline_token(idp_key)),
        ("subject_token_type", JWT_TYPE),
        *(("audience", a) for a in audiences),
    ]
    response = server.client.post(
        "/v1/token",
        content=urlencode(form),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "invalid_target" and "access_token" not in body
    assert (
        "'trustplane-admin' is reserved for the trustplane admin API" in (body["error_description"])
    )
    # What a pipeline can get is no admin credential either.
    token = exchange(server, pipeline_token(idp_key)).json()["access_token"]
    for path in ADMIN_READS:
        assert server.client.get(path, headers=bearer(token)).status_code == 401, path


def test_a_workload_svid_reads_only_what_the_admin_policy_gives_workloads(
    server: Server, socket_path: Path
) -> None:
    exe = os.readlink(f"/proc/{os.getpid()}/exe")
    monitor = f"spiffe://{TRUST_DOMAIN}/ns/ops/sa/monitor"
    selectors = ["--selector", f"unix:uid:{os.getuid()}", "--selector", f"unix:path:{exe}"]
    created = cli(server, "identity", "entry", "create", monitor, *selectors, "--json")
    try:
        with spiffe.WorkloadApiClient(socket_path=f"unix:{socket_path}") as client:
            token = client.fetch_jwt_svid(audience={"trustplane-admin"}).token
    finally:
        cli(server, "identity", "entry", "delete", created["id"], "--json")
    for path in ADMIN_READS:
        refused = server.client.get(path, headers=bearer(token))
        assert refused.status_code == 403, (path, refused.text)
        assert f"{monitor} may not" in refused.json()["detail"]
    witnessed = server.client.get("/v1/ledger/checkpoints", headers=bearer(token))
    assert witnessed.status_code == 200, "workloads may witness the ledger"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"repository": "octo-org/other"}, "repository='octo-org/other'"),
        ({"ref": "refs/heads/feature"}, "ref="),
        ({"environment": "dev"}, "environment="),
        ({"aud": "someone-else"}, "token_wrong_audience"),
        ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 900}, "token_expired"),
        ({"iss": "https://ci.elsewhere.example"}, "token_unknown_issuer"),
    ],
)
def test_token_exchange_refuses_tokens_the_rule_does_not_trust(
    server: Server, idp_key: Key, overrides: dict[str, Any], expected: str
) -> None:
    response = exchange(server, pipeline_token(idp_key, **overrides))
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_grant"
    assert expected in body["error_description"]


def test_token_exchange_refuses_unknown_kid_and_alg_none(server: Server, idp_key: Key) -> None:
    other = rsa_key("not-published")
    response = exchange(server, pipeline_token(other))
    assert response.json()["error"] == "invalid_grant"
    assert "token_unknown_key" in response.json()["error_description"]
    unsigned = jwt.encode(
        claims(repository="octo-org/shop", ref="refs/heads/main"),
        None,
        algorithm="none",
        headers={"kid": "ci-1"},
    )
    response = exchange(server, unsigned)
    assert response.status_code == 400
    assert "token_alg_not_allowed" in response.json()["error_description"]


def test_token_exchange_refuses_a_revoked_token_replayed(server: Server, idp_key: Key) -> None:
    token = pipeline_token(idp_key)
    assert exchange(server, token).status_code == 200
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    revoked = server.client.post(
        "/v1/revocations",
        json={"kind": "credential", "target": jti, "reason": "leaked in a build log"},
        headers=server.admin,
    )
    assert revoked.status_code == 201
    response = exchange(server, token)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert "credential_revoked" in response.json()["error_description"]


@pytest.mark.parametrize(
    ("form", "content_type", "error"),
    [
        ({"grant_type": "client_credentials"}, None, "unsupported_grant_type"),
        ({"subject_token": ""}, None, "invalid_request"),
        ({"subject_token_type": "urn:x"}, None, "invalid_request"),
        (
            {"requested_token_type": "urn:ietf:params:oauth:token-type:saml2"},
            None,
            "invalid_request",
        ),
        ({}, "application/json", "invalid_request"),
    ],
)
def test_token_exchange_malformed_requests(
    server: Server, idp_key: Key, form: dict[str, str], content_type: str | None, error: str
) -> None:
    body = {
        "grant_type": EXCHANGE,
        "subject_token": pipeline_token(idp_key),
        "subject_token_type": JWT_TYPE,
        **form,
    }
    if content_type:
        response = server.client.post("/v1/token", json=body)
    else:
        response = server.client.post("/v1/token", data=body)
    assert response.status_code == 400
    assert response.json()["error"] == error
    repeated = server.client.post(
        "/v1/token",
        content=f"grant_type={EXCHANGE}&grant_type={EXCHANGE}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert "repeated" in repeated.json()["error_description"]


def test_entries_through_the_cli_and_the_workload_api(server: Server, socket_path: Path) -> None:
    exe = os.readlink(f"/proc/{os.getpid()}/exe")
    created = cli(
        server,
        "identity",
        "entry",
        "create",
        f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/tests",
        "--selector",
        f"unix:uid:{os.getuid()}",
        "--selector",
        f"unix:path:{exe}",
        "--jwt-ttl",
        "120",
        "--json",
    )
    listed = cli(server, "identity", "entry", "list", "--json")
    assert created["id"] in [e["id"] for e in listed["entries"]]
    with spiffe.WorkloadApiClient(socket_path=f"unix:{socket_path}") as client:
        svid = client.fetch_jwt_svid(audience={"payments"})
        assert str(svid.spiffe_id) == created["spiffe_id"]
        assert svid.expiry - time.time() <= 120
        assert str(client.fetch_x509_svid().spiffe_id) == created["spiffe_id"]
    cli(server, "identity", "entry", "delete", created["id"], "--json")
    with (
        spiffe.WorkloadApiClient(socket_path=f"unix:{socket_path}") as client,
        pytest.raises(Exception, match="no registration entry matches"),
    ):
        client.fetch_jwt_svid(audience={"payments"})


def test_bad_entries_are_refused_with_the_field_named(server: Server) -> None:
    for body, pointer, detail in [
        (
            {"spiffe_id": "spiffe://elsewhere.test/x", "selectors": ["unix:uid:0"]},
            "/spiffe_id",
            "trust domain",
        ),
        (
            {"spiffe_id": f"spiffe://{TRUST_DOMAIN}/x", "selectors": ["k8s:ns:x"]},
            "/selectors",
            "expected unix",
        ),
        ({"spiffe_id": f"spiffe://{TRUST_DOMAIN}/x", "selectors": []}, "/selectors", ""),
    ]:
        response = server.client.post("/v1/identity/entries", json=body, headers=server.admin)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["errors"][0]["pointer"] == pointer
        assert detail in problem["detail"]
    unauthenticated = server.client.post("/v1/identity/entries", json={})
    assert unauthenticated.status_code == 401
    result = run_cli(
        "identity",
        "entry",
        "delete",
        "no-such-entry",
        env={**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url},
    )
    # the id is resolved as a prefix of the registered entries' ids first: none starts so
    assert result.returncode == 2
    assert "no entry id starts with 'no-such-entry'" in result.stderr
    assert "Traceback" not in result.stderr


def test_rotation_through_the_cli_keeps_issued_tokens_verifiable(
    server: Server, idp_key: Key
) -> None:
    before = exchange(server, pipeline_token(idp_key)).json()["access_token"]
    prepared = cli(server, "identity", "rotate", "--json")
    assert [d.split()[0] for d in prepared["done"]] == ["prepared", "prepared"]
    bundle = server.client.get("/v1/identity/bundle").json()
    assert [k["use"] for k in bundle["keys"]].count("jwt-svid") == 2
    activated = cli(server, "identity", "rotate", "--json")
    assert [d.split()[0] for d in activated["done"]] == ["activated", "activated"]
    after = exchange(server, pipeline_token(idp_key)).json()["access_token"]
    assert jwt.get_unverified_header(before)["kid"] != jwt.get_unverified_header(after)["kid"]
    jwks_client = jwt.PyJWKClient(server.url + "/v1/identity/jwks")
    for token in (before, after):
        key = jwks_client.get_signing_key_from_jwt(token)
        jwt.decode(token, key.key, algorithms=["ES256"], audience="deploy-api")
    keys = cli(server, "identity", "keys", "--json")
    states = sorted(k["state"] for k in keys["keys"])
    assert states == ["active", "active", "superseded", "superseded"]
    refused = run_cli(
        "identity",
        "rotate",
        "--step",
        "activate",
        env={**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url},
    )
    assert refused.returncode == 2 and "no prepared" in refused.stderr


def test_inventory_flags_identities(server: Server, idp_key: Key) -> None:
    assert exchange(server, pipeline_token(idp_key)).status_code == 200
    report = cli(server, "identity", "inventory", "--long-lived", "300", "--json")
    by_principal = {i["principal"]: i for i in report["identities"]}
    ci = by_principal[f"spiffe://{TRUST_DOMAIN}/ci/octo-org/shop/deploy"]
    assert ci["kind"] == "ci" and ci["owner"] == "team-shop"
    assert ci["flags"] == ["long_lived"]  # 600 s > 300 s
    workload = by_principal.get(f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/tests")
    if workload is not None:  # registered without an owner by the entries test
        assert "no_owner" in workload["flags"]
    text = cli(server, "identity", "inventory")
    assert "flagged" in text
