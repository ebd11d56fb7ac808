"""Envoy ext_authz against a real `trustplane serve`: the gRPC Authorization/Check service
through a real gRPC client with Envoy's own protos (xds-protos), over both transports (the
compiled front and grpcio's server), and Envoy's HTTP mode."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import yaml
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

from tests.conftest import SHOP
from tests.issuer import Jwks, Key, issuer_settings, user_token
from tests.support import REPO, Server, extauthz_front, free_port, running_server
from trustplane.config import GrpcSettings

pytestmark = pytest.mark.slow

CHECKOUT = "spiffe://shop.example/ns/storefront/sa/checkout"


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module", params=["native", "python"])
def transport(request: pytest.FixtureRequest) -> str:
    if request.param == "native":
        extauthz_front()
    return str(request.param)


@pytest.fixture(scope="module")
def server(
    module_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    issuer: Jwks,
    grpc_port: int,
    transport: str,
) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("state")
    with running_server(
        state,
        module_database_url,
        SHOP,
        policy__watch="false",
        pep__issuers=issuer_settings(issuer),
        grpc__port=grpc_port,
        grpc__transport=transport,
        pep__strip_credential="true",
    ) as srv:
        assert f"({transport} transport)" in srv.log()
        yield srv


@pytest.fixture(scope="module")
def stub(server: Server, grpc_port: int) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield external_auth_pb2_grpc.AuthorizationStub(channel)


def check(
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    principal: str = "",
    host: str = "shop.example",
) -> external_auth_pb2.CheckRequest:
    ctx = attribute_context_pb2.AttributeContext
    return external_auth_pb2.CheckRequest(
        attributes=ctx(
            source=ctx.Peer(principal=principal),
            request=ctx.Request(
                http=ctx.HttpRequest(
                    method=method, path=path, host=host, headers=headers or {}, scheme="https"
                )
            ),
        )
    )


def headers_of(options: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


def test_bearer_token_allowed_with_identity_headers_and_credential_removed(
    stub: Any, key: Key
) -> None:
    response = stub.Check(
        check(
            "GET",
            "/ops/services/checkout/logs?tail=100",
            {"authorization": f"Bearer {user_token(key)}"},
        )
    )
    assert response.status.code == code_pb2.OK
    sent = headers_of(response.ok_response.headers)
    assert sent["x-auth-request-user"] == "alice"
    assert sent["x-trustplane-principal"] == 'User::"alice"'
    assert len(sent["x-trustplane-decision-id"]) == 36
    assert list(response.ok_response.headers_to_remove) == ["authorization"]


def test_spiffe_peer_is_the_workload_entity(stub: Any, server: Server) -> None:
    allowed = stub.Check(check("POST", "/payments/v1/charges", principal=CHECKOUT))
    assert allowed.status.code == code_pb2.OK
    assert headers_of(allowed.ok_response.headers)["x-trustplane-principal"] == (
        'Service::"checkout"'
    ), "the SPIFFE ID is mapped to the Service entity that carries it"
    stranger = stub.Check(
        check("POST", "/payments/v1/charges", principal="spiffe://shop.example/ns/x/sa/unknown")
    )
    assert stranger.status.code == code_pb2.PERMISSION_DENIED
    assert stranger.denied_response.status.code == 403


def test_policy_deny_is_403_with_a_json_body(stub: Any, key: Key) -> None:
    response = stub.Check(
        check("GET", "/admin/users", {"authorization": f"Bearer {user_token(key, 'erin', False)}"})
    )
    assert response.status.code == code_pb2.PERMISSION_DENIED
    denied = response.denied_response
    assert denied.status.code == 403
    body = json.loads(denied.body)
    assert body["reasons"] == ["require-fresh-mfa-for-tier0-and-admin"]
    assert headers_of(denied.headers)["content-type"] == "application/json"


def test_no_or_bad_credential_is_401_with_a_challenge(stub: Any, key: Key) -> None:
    missing = stub.Check(check("GET", "/ops/services/checkout/logs"))
    assert missing.status.code == code_pb2.UNAUTHENTICATED
    assert missing.denied_response.status.code == 401
    assert headers_of(missing.denied_response.headers)["www-authenticate"] == (
        'Bearer realm="trustplane"'
    )
    expired = stub.Check(
        check(
            "GET",
            "/ops/services/checkout/logs",
            {"authorization": f"Bearer {user_token(key, exp=int(time.time()) - 600)}"},
        )
    )
    assert expired.denied_response.status.code == 401
    assert json.loads(expired.denied_response.body)["reasons"] == ["token_expired"]


def test_an_empty_check_request_is_denied_not_crashed(stub: Any) -> None:
    response = stub.Check(external_auth_pb2.CheckRequest())
    assert response.status.code == code_pb2.UNAUTHENTICATED
    assert response.denied_response.status.code == 401


def test_bytes_that_are_not_a_check_request_are_refused_by_name_on_every_transport(
    server: Server, grpc_port: int
) -> None:
    """Found by the fuzz suite: grpcio's transport answered a corrupt frame UNKNOWN (an error
    that Envoy's failure_mode_allow would let through) where the compiled front refuses it."""
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        for frame in (b"\xff\xff\xff\xff not protobuf", b'\n\x06\n\x04"\x02\xc3('):
            with pytest.raises(grpc.RpcError) as raised:
                call(frame, timeout=5)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed CheckRequest" in (raised.value.details() or "")


def test_unmapped_route_is_denied(stub: Any, key: Key) -> None:
    response = stub.Check(
        check("DELETE", "/payments/v1/charges", {"authorization": f"Bearer {user_token(key)}"})
    )
    assert response.status.code == code_pb2.PERMISSION_DENIED
    assert json.loads(response.denied_response.body)["reasons"] == ["no_route_matched"]


def test_http_mode_allows_and_asks_envoy_to_drop_the_credential(server: Server, key: Key) -> None:
    allowed = server.client.post(
        "/v1/envoy/http/ops/services/checkout/restart",
        headers={"authorization": f"Bearer {user_token(key)}", "host": "ops.shop.example"},
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["x-envoy-auth-headers-to-remove"] == "authorization"
    assert allowed.headers["x-auth-request-user"] == "alice"
    denied = server.client.get(
        "/v1/envoy/http/payments/v1/transactions/1",
        headers={"authorization": f"Bearer {user_token(key, 'bob')}"},
    )
    assert denied.status_code == 403
    assert "x-envoy-auth-headers-to-remove" not in denied.headers
    assert denied.json()["reasons"] == ["no_policy_permits"]
    unauthenticated = httpx.get(f"{server.url}/v1/envoy/http/admin/")
    assert unauthenticated.status_code == 401


def test_the_documented_envoy_configuration_parses_with_envoys_protos() -> None:
    """docs/examples/envoy.yaml is a valid Envoy v3 bootstrap (every field and typed_config
    checked by protobuf), and it points ext_authz at trustplane's gRPC port, failing closed."""
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
    from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 (registers type)
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2,
    )
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
    from google.protobuf import json_format

    document = yaml.safe_load((REPO / "docs" / "examples" / "envoy.yaml").read_text())
    bootstrap = json_format.ParseDict(document, bootstrap_pb2.Bootstrap())
    manager = http_connection_manager_pb2.HttpConnectionManager()
    bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(manager)
    ext_authz = ext_authz_pb2.ExtAuthz()
    manager.http_filters[0].typed_config.Unpack(ext_authz)
    assert ext_authz.failure_mode_allow is False
    assert ext_authz.grpc_service.envoy_grpc.cluster_name == "trustplane"
    cluster = next(c for c in bootstrap.static_resources.clusters if c.name == "trustplane")
    port = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert port.socket_address.port_value == GrpcSettings.model_fields["port"].default


def test_the_documented_istio_policy_uses_the_custom_provider() -> None:
    """No Istio parser exists here: check the YAML and the fields Istio requires for CUSTOM."""
    operator, policy = yaml.safe_load_all((REPO / "docs" / "examples" / "istio.yaml").read_text())
    provider = operator["spec"]["meshConfig"]["extensionProviders"][0]
    assert provider["envoyExtAuthzGrpc"]["port"] == GrpcSettings.model_fields["port"].default
    assert provider["envoyExtAuthzGrpc"]["failOpen"] is False
    assert policy["kind"] == "AuthorizationPolicy"
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == provider["name"]


def _certificate(serial: int) -> str:
    """A client certificate with `serial`, URL-encoded PEM as Envoy's `source.certificate`."""
    import datetime
    from urllib.parse import quote

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shop")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(CHECKOUT)]), False
        )
        .sign(key, hashes.SHA256())
    )
    return quote(cert.public_bytes(serialization.Encoding.PEM).decode(), safe="")


def _with_certificate(request: external_auth_pb2.CheckRequest, encoded: str) -> Any:
    request.attributes.source.certificate = encoded
    return request


def test_a_revoked_client_certificate_is_refused_whatever_its_spiffe_id(
    stub: Any, server: Server
) -> None:
    # Fresh serials: the store (and its revocations) outlives this module's server.
    revoked_serial, other_serial = secrets.randbits(63) | 1 << 62, secrets.randbits(63) | 1 << 62
    charge = ("POST", "/payments/v1/charges")
    before = stub.Check(
        _with_certificate(check(*charge, principal=CHECKOUT), _certificate(revoked_serial))
    )
    assert before.status.code == code_pb2.OK
    body = {"kind": "certificate", "target": f"{revoked_serial:X}", "reason": "key leaked"}
    response = server.client.post("/v1/revocations", json=body, headers=server.admin)
    assert response.status_code in (200, 201), response.text

    refused = stub.Check(
        _with_certificate(check(*charge, principal=CHECKOUT), _certificate(revoked_serial))
    )
    assert refused.status.code == code_pb2.UNAUTHENTICATED
    assert refused.denied_response.status.code == 401
    assert "credential_revoked" in json.loads(refused.denied_response.body)["reasons"]
    # The same workload with another certificate is still served.
    other = stub.Check(
        _with_certificate(check(*charge, principal=CHECKOUT), _certificate(other_serial))
    )
    assert other.status.code == code_pb2.OK


def test_a_forwarded_certificate_that_does_not_parse_is_refused(stub: Any) -> None:
    request = _with_certificate(check("POST", "/payments/v1/charges", principal=CHECKOUT), "junk")
    answer = stub.Check(request)
    assert answer.status.code == code_pb2.UNAUTHENTICATED
    assert "certificate_invalid" in json.loads(answer.denied_response.body)["reasons"]
