"""PEP authentication against a real `trustplane serve` on loopback (issue 13, defect 12):
the decision endpoints answer registered enforcement points only (a `trustplane pep add`
token, an mTLS client certificate or a JWT-SVID of the trust domain), over HTTP and over both
gRPC transports; each decision record names its PEP; `serve` refuses to listen beyond
loopback without PEP authentication."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

from tests.conftest import DB_PARAMS, SHOP, store_url
from tests.support import (
    TRUSTPLANE,
    Server,
    authzen,
    extauthz_front,
    free_port,
    run_cli,
    server_env,
    wait_for,
    wait_ready,
)
from trustplane.config import Settings
from trustplane.enforcement.asgi import RemotePdp
from trustplane.enforcement.sdk import Client
from trustplane.identity.kek import load_kek, new_kek
from trustplane.identity.keys import IdentityKeys
from trustplane.identity.spiffe_id import SpiffeId
from trustplane.identity.svid import issue_jwt_svid, issue_x509_svid
from trustplane.store.database import create_store_engine

pytestmark = pytest.mark.slow

TRUST_DOMAIN = "example.test"
MESH_PEP = f"spiffe://{TRUST_DOMAIN}/ns/mesh/sa/envoy"
STRANGER = f"spiffe://{TRUST_DOMAIN}/ns/apps/sa/stranger"
QUESTION = authzen(("User", "alice"), "view", ("Document", "d1"))
CTX = {"mfa": True, "auth_age_seconds": 60}  # a shop question the PDP answers without error


@pytest.fixture(scope="module", params=["native", "python"])
def transport(request: pytest.FixtureRequest) -> str:
    if request.param == "native":
        extauthz_front()
    return str(request.param)


@pytest.fixture(scope="module", params=DB_PARAMS)
def store(
    request: pytest.FixtureRequest, transport: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A store per backend and transport: each server has its own trust domain keys."""
    with store_url(request.param, tmp_path_factory.mktemp("store")) as url:
        yield url


@pytest.fixture(scope="module")
def server(
    store: str, tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[Server]:
    """HTTPS from the trust-domain CA, the identity plane, pep.auth = required; two PEPs
    registered while it serves (a token PEP and one known by SPIFFE ID)."""
    state = tmp_path_factory.mktemp("state")
    kek_file = state.parent / f"{state.name}.kek"
    kek_file.write_text(new_kek())
    kek_file.chmod(0o600)
    port = free_port()
    env = server_env(
        state,
        store,
        server__port=port,
        policy__bundle_dir=SHOP,
        policy__watch="false",
        identity__trust_domain=TRUST_DOMAIN,
        identity__kek_file=kek_file,
        tls__from_ca="true",
        tls__dns_names=["127.0.0.1"],
        pep__auth="required",
        grpc__transport=transport,
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
    srv = Server(f"https://127.0.0.1:{port}", env, process, log_path)
    srv.token = (state / "admin.token").read_text().strip()
    srv.client = httpx.Client(base_url=srv.url, timeout=10, verify=_trusting(ca_file))
    try:
        wait_ready(srv)
        assert f"({transport} transport)" in srv.log()
        yield srv
    finally:
        srv.stop()


def _trusting(ca_file: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


@pytest.fixture(scope="module")
def token(server: Server) -> str:
    """The token PEP `edge-nginx`, added while the server runs, once the server accepts it."""
    added = run_cli("pep", "add", "edge-nginx", "--json", env=server.env)
    assert added.returncode == 0, added.stderr
    value = str(json.loads(added.stdout)["token"])
    assert value.startswith("tpp_")
    wait_for(lambda: _evaluate(server, value).status_code == 200)
    return value


@pytest.fixture(scope="module")
def mesh(server: Server) -> str:
    added = run_cli("pep", "add", "mesh-envoy", "--spiffe-id", MESH_PEP, env=server.env)
    assert added.returncode == 0, added.stderr
    assert "tpp_" not in added.stdout  # no token for a PEP known by SPIFFE ID
    return "mesh-envoy"


def _keys(server: Server) -> Any:
    settings = Settings(
        state_dir=Path(server.env["TRUSTPLANE_STATE_DIR"]),
        store={"url": server.env["TRUSTPLANE_STORE__URL"]},
        identity={"kek_file": Path(server.env["TRUSTPLANE_IDENTITY__KEK_FILE"])},
    )
    engine = create_store_engine(settings.effective_database_url)
    try:
        return IdentityKeys(engine, load_kek(settings.identity), TRUST_DOMAIN).load()
    finally:
        engine.dispose()


def _jwt_svid(server: Server, spiffe_id: str, audience: str = "trustplane-pep") -> str:
    return issue_jwt_svid(_keys(server), SpiffeId.parse(spiffe_id), [audience], 300).token


def _client_certificate(server: Server, spiffe_id: str, directory: Path) -> tuple[Path, Path]:
    svid = issue_x509_svid(_keys(server), SpiffeId.parse(spiffe_id), 600)
    pem = serialization.Encoding.PEM
    cert, key = directory / "pep.pem", directory / "pep.key"
    cert.write_bytes(svid.certificate.public_bytes(pem))
    key.write_bytes(
        svid.private_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def _evaluate(server: Server, credential: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {credential}"} if credential else {}
    return server.client.post("/access/v1/evaluation", json=QUESTION, headers=headers)


def _recorded_pep(server: Server, decision_id: str) -> Any:
    def fetched() -> Any:
        answer = server.client.get(f"/v1/decisions/{decision_id}", headers=server.admin)
        return answer.json() if answer.status_code == 200 else None

    return wait_for(fetched)["pep"]


def _refused(answer: httpx.Response, code: str) -> None:
    assert answer.status_code == 401, answer.text
    problem = answer.json()
    assert problem["type"] == "urn:trustplane:problem:pep-unauthenticated"
    assert problem["detail"].startswith(code), problem
    assert answer.headers["www-authenticate"].startswith('Bearer realm="trustplane-pep"')


def test_authzen_answers_a_registered_token_and_records_its_pep(server: Server, token: str) -> None:
    answer = _evaluate(server, token)
    assert answer.status_code == 200
    assert _recorded_pep(server, answer.json()["context"]["decision_id"]) == "edge-nginx"


def test_authzen_refuses_a_missing_or_wrong_credential(server: Server, token: str) -> None:
    _refused(_evaluate(server, None), "pep_credential_missing")
    _refused(_evaluate(server, "tpp_" + "x" * 43), "pep_token_unknown")
    _refused(_evaluate(server, token[:-2]), "pep_token_unknown")
    batch = server.client.post(
        "/access/v1/evaluations", json={"evaluations": [QUESTION]}, headers={}
    )
    _refused(batch, "pep_credential_missing")
    assert batch.status_code == 401  # the whole batch, not item by item


def test_the_cache_epoch_long_poll_answers_registered_peps_only(server: Server, token: str) -> None:
    _refused(server.client.get("/access/v1/epoch", headers={}), "pep_credential_missing")
    ca_file = Path(server.env["TRUSTPLANE_STATE_DIR"]) / "ca.pem"
    transport = httpx.HTTPTransport(verify=_trusting(ca_file))
    bearer = {"authorization": f"Bearer {token}"}
    with Client(server.url, headers=bearer, transport=transport) as pdp:
        first = pdp.check(("User", "bob"), "inventory:read", ("Api", "inventory.stock"), CTX)
        assert first.ttl_seconds > 0, first  # something cached: the client watches the epoch
        revoked = server.client.post(
            "/v1/revocations",
            json={"kind": "credential", "target": "pep-epoch-jti", "reason": "test"},
            headers=server.admin,
        )
        assert revoked.status_code in (200, 201), revoked.text
        # Only the long-poll, made with the PEP's token, can tell the client of it.
        wait_for(lambda: pdp.epoch > first.cache_epoch)
        assert pdp.watch_state == "live"


def test_a_removed_pep_is_refused(server: Server, token: str) -> None:
    added = run_cli("pep", "add", "short-lived", "--json", env=server.env)
    short = str(json.loads(added.stdout)["token"])
    wait_for(lambda: _evaluate(server, short).status_code == 200)
    listed = run_cli("pep", "list", "--json", env=server.env)
    assert "short-lived" in listed.stdout and short not in listed.stdout
    assert run_cli("pep", "remove", "short-lived", env=server.env).returncode == 0
    wait_for(lambda: _evaluate(server, short).status_code == 401)
    assert _evaluate(server, token).status_code == 200  # the others stay


def test_jwt_svid_of_a_registered_spiffe_id_is_accepted(server: Server, mesh: str) -> None:
    answer = wait_for(lambda: _ok(_evaluate(server, _jwt_svid(server, MESH_PEP))))
    assert _recorded_pep(server, answer.json()["context"]["decision_id"]) == mesh
    _refused(_evaluate(server, _jwt_svid(server, STRANGER)), "pep_not_registered")
    wrong_audience = _jwt_svid(server, MESH_PEP, audience="trustplane-admin")
    _refused(_evaluate(server, wrong_audience), "pep_token_wrong_audience")


def test_mtls_client_certificate_of_a_registered_spiffe_id_is_accepted(
    server: Server, mesh: str, tmp_path: Path
) -> None:
    ca_file = Path(server.env["TRUSTPLANE_STATE_DIR"]) / "ca.pem"
    pep_cert = _client_certificate(server, MESH_PEP, tmp_path)
    with httpx.Client(
        base_url=server.url, timeout=10, verify=_trusting(ca_file, pep_cert)
    ) as client:
        answer = wait_for(lambda: _ok(client.post("/access/v1/evaluation", json=QUESTION)))
        assert _recorded_pep(server, answer.json()["context"]["decision_id"]) == mesh
    (tmp_path / "other").mkdir()
    stranger = _client_certificate(server, STRANGER, tmp_path / "other")
    with httpx.Client(
        base_url=server.url, timeout=10, verify=_trusting(ca_file, stranger)
    ) as client:
        _refused(client.post("/access/v1/evaluation", json=QUESTION), "pep_not_registered")


def _ok(answer: httpx.Response) -> httpx.Response | None:
    return answer if answer.status_code == 200 else None


def test_forward_auth_takes_the_pep_credential_beside_the_users(server: Server, token: str) -> None:
    """`Authorization` there is the end user's: the PEP's token goes in its own header, and
    an unauthenticated PEP is refused before any decision."""
    _refused(server.client.get("/v1/forward-auth"), "pep_credential_missing")
    answer = server.client.get(
        "/v1/forward-auth",
        headers={"x-trustplane-pep-authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 401  # the end user presented nothing: a recorded decision
    assert answer.json()["reasons"] == ["credential_missing"]
    assert _recorded_pep(server, answer.json()["decision_id"]) == "edge-nginx"
    envoy_http = server.client.get(
        "/v1/envoy/http/orders", headers={"x-trustplane-pep-authorization": f"Bearer {token}"}
    )
    assert envoy_http.status_code == 401 and envoy_http.json()["decision_id"]
    _refused(server.client.get("/v1/envoy/http/orders"), "pep_credential_missing")


def _check() -> external_auth_pb2.CheckRequest:
    ctx = attribute_context_pb2.AttributeContext
    return external_auth_pb2.CheckRequest(
        attributes=ctx(
            request=ctx.Request(
                http=ctx.HttpRequest(method="GET", path="/orders", host="shop.example")
            )
        )
    )


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[Any]:
    port = int(server.env["TRUSTPLANE_GRPC__PORT"])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield external_auth_pb2_grpc.AuthorizationStub(channel)


def test_grpc_check_answers_registered_peps_only(
    server: Server, stub: Any, token: str, mesh: str
) -> None:
    missing = stub.Check(_check())
    assert missing.status.code == code_pb2.UNAUTHENTICATED
    assert missing.denied_response.status.code == 403
    assert "pep_credential_missing" in missing.denied_response.body
    wrong = stub.Check(_check(), metadata=[("authorization", "Bearer tpp_wrong")])
    assert wrong.status.code == code_pb2.UNAUTHENTICATED

    # Let in, the held request is judged: its end user presented nothing (a recorded 401).
    answered = stub.Check(_check(), metadata=[("authorization", f"Bearer {token}")])
    assert '"reasons":["credential_missing"]' in answered.denied_response.body
    decision_id = {h.header.key: h.header.value for h in answered.denied_response.headers}[
        "x-trustplane-decision-id"
    ]
    assert _recorded_pep(server, decision_id) == "edge-nginx"

    svid = _jwt_svid(server, MESH_PEP)
    by_svid = stub.Check(_check(), metadata=[("authorization", f"Bearer {svid}")])
    assert '"reasons":["credential_missing"]' in by_svid.denied_response.body


def test_serve_refuses_a_host_beyond_loopback_without_pep_auth(tmp_path: Path) -> None:
    env = {
        "TRUSTPLANE_STATE_DIR": str(tmp_path / "state"),
        "TRUSTPLANE_POLICY__BUNDLE_DIR": str(SHOP),
        "TRUSTPLANE_SERVER__HOST": "0.0.0.0",
    }
    refused = run_cli("serve", env=env)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "0.0.0.0" in lines[0] and "pep.auth" in lines[0], refused.stderr
    assert not (tmp_path / "state").exists()  # nothing started, nothing created


def test_the_override_flag_lets_serve_past_the_listening_rule(tmp_path: Path) -> None:
    """With --allow-unauthenticated-peps the rule passes, and serve goes on to its next
    check (here: no bundle), so nothing is bound in this test."""
    env = {"TRUSTPLANE_STATE_DIR": str(tmp_path / "state"), "TRUSTPLANE_SERVER__HOST": "0.0.0.0"}
    result = run_cli("serve", "--allow-unauthenticated-peps", env=env)
    assert result.returncode == 2
    assert "no bundle" in result.stderr and "pep.auth" not in result.stderr


def test_pep_cli_errors_are_one_line(tmp_path: Path) -> None:
    env = {"TRUSTPLANE_STATE_DIR": str(tmp_path / "state")}
    assert run_cli("init", env=env).returncode == 0
    for args, words in [
        (("pep", "add", "Edge Proxy"), "1-63 characters"),
        (("pep", "remove", "ghost"), "no PEP named 'ghost'"),
    ]:
        result = run_cli(*args, env=env)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], result.stderr
    added = run_cli("pep", "add", "edge", env=env)
    assert added.returncode == 0 and "tpp_" in added.stdout
    again = run_cli("pep", "add", "edge", env=env)
    assert again.returncode == 2 and "already registered" in again.stderr
    listed = run_cli("pep", "list", env=env)
    assert "edge" in listed.stdout and "tpp_" not in listed.stdout


def test_the_asgi_middleware_asks_as_a_pep(server: Server, token: str) -> None:
    """RemotePdp sends its PEP token beside the end user's credential; without one the
    server refuses it and the middleware fails closed (no answer, not a 401 of the user's)."""
    ca_file = Path(server.env["TRUSTPLANE_STATE_DIR"]) / "ca.pem"

    async def ask(pep_token: str | None) -> Any:
        transport = httpx.AsyncHTTPTransport(verify=_trusting(ca_file))
        pdp = RemotePdp(server.url, transport=transport, pep_token=pep_token, retries=0)
        try:
            return await pdp.enforce("GET", "/orders", {"host": "shop.example"}, "127.0.0.1")
        finally:
            await pdp.aclose()

    answer = asyncio.run(ask(token))
    assert answer.status == 401 and answer.reasons == ("credential_missing",)
    assert _recorded_pep(server, answer.decision_id) == "edge-nginx"
    with pytest.raises(httpx.HTTPStatusError):
        asyncio.run(ask(None))


def test_the_admission_webhook_answers_registered_peps_only(server: Server, token: str) -> None:
    """The kube-apiserver authenticates like any PEP (its webhook kubeconfig's token)."""
    from tests.enforcement.test_admission import RESTRICTED_POD, review

    body = review(RESTRICTED_POD, "uid-pep")
    _refused(server.client.post("/v1/admission", json=body), "pep_credential_missing")
    answer = server.client.post(
        "/v1/admission", json=body, headers={"authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["response"]["uid"] == "uid-pep"


def test_a_ca_rotated_in_while_serving_is_trusted_for_pep_certificates(
    server: Server, mesh: str, tmp_path: Path
) -> None:
    """Last in the module: it changes the trust domain's active CA."""
    for _ in range(2):  # prepare, then activate, a new CA
        rotated = server.client.post(
            "/v1/identity/rotate", json={"kind": "x509"}, headers=server.admin
        )
        assert rotated.status_code == 200, rotated.text
    ca_file = Path(server.env["TRUSTPLANE_STATE_DIR"]) / "ca.pem"
    pep_cert = _client_certificate(server, MESH_PEP, tmp_path)  # from the new CA

    def asked() -> httpx.Response | None:
        try:
            with httpx.Client(
                base_url=server.url, timeout=10, verify=_trusting(ca_file, pep_cert)
            ) as client:
                return _ok(client.post("/access/v1/evaluation", json=QUESTION))
        except httpx.TransportError:  # the handshake before the server reloaded its CAs
            return None

    answer = wait_for(asked)
    assert _recorded_pep(server, answer.json()["context"]["decision_id"]) == mesh
