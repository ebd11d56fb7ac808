"""Forward-auth against a real `trustplane serve`: called directly the way Traefik and Caddy
call it, and end to end through a real nginx (`auth_request`) in front of a small upstream app.

Tokens come from a real issuer on loopback (tests/issuer.py). The trusted proxy address is
127.0.0.2: nginx binds its auth subrequests there, and a test client that does the same speaks
as the proxy; a client from 127.0.0.1 is an untrusted caller.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SHOP
from tests.issuer import Jwks, Key, claims, issuer_settings, rsa_key, user_token
from tests.support import (
    REPO,
    Server,
    free_port,
    required_binary,
    running_server,
    start_listening,
    stop_process,
    wait_for,
)
from tests.upstream import Upstream

pytestmark = pytest.mark.slow

PROXY = "127.0.0.2"


@pytest.fixture(scope="module")
def server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, issuer: Jwks
) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("state")
    with running_server(
        state,
        module_database_url,
        SHOP,
        policy__watch="false",
        pep__issuers=issuer_settings(issuer),
        server__trusted_proxies=[f"{PROXY}/32"],
        pep__identity_header="X-Forwarded-User",
    ) as srv:
        yield srv


def as_proxy(server: Server) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=PROXY)
    return httpx.Client(base_url=server.url, transport=transport, timeout=10)


def nginx_style(uri: str, method: str = "GET", **headers: str) -> dict[str, str]:
    return {"X-Original-URI": uri, "X-Original-Method": method, **headers}


def recorded(server: Server, decision_id: str) -> dict[str, Any] | None:
    """The ledger's record of a decision; None until the batch holding it is committed."""
    response = server.client.get(f"/v1/decisions/{decision_id}", headers=server.admin)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return dict(response.json())


def entity(record: dict[str, Any], role: str) -> str:
    ref = record["request"][role]
    return f'{ref["type"]}::"{ref["id"]}"'


def test_allowed_request_names_the_user_and_is_recorded(server: Server, key: Key) -> None:
    with as_proxy(server) as proxy:
        response = proxy.get(
            "/v1/forward-auth",
            headers=nginx_style(
                "/ops/services/checkout/logs?since=1h", authorization=f"Bearer {user_token(key)}"
            ),
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-auth-request-user"] == "alice"
    assert response.headers["x-trustplane-principal"] == 'User::"alice"'
    decision_id = response.headers["x-trustplane-decision-id"]
    record = wait_for(lambda: recorded(server, decision_id))
    assert record["decision"] == "allow"
    assert entity(record, "action") == 'Action::"ops:read-logs"'
    assert entity(record, "resource") == 'Service::"checkout"'


def test_policy_deny_is_403_with_reason_codes(server: Server, key: Key) -> None:
    with as_proxy(server) as proxy:
        # erin (support) signed in without MFA: the Tier 0/admin guardrail forbids.
        response = proxy.get(
            "/v1/forward-auth",
            headers=nginx_style(
                "/admin/users", authorization=f"Bearer {user_token(key, 'erin', mfa=False)}"
            ),
        )
        nothing_permits = proxy.get(
            "/v1/forward-auth",
            headers=nginx_style(
                "/payments/v1/transactions/42", authorization=f"Bearer {user_token(key, 'bob')}"
            ),
        )
    assert response.status_code == 403
    body = response.json()
    assert body["decision"] is False
    assert body["reasons"] == ["require-fresh-mfa-for-tier0-and-admin"]
    assert body["decision_id"] == response.headers["x-trustplane-decision-id"]
    assert nothing_permits.status_code == 403
    assert nothing_permits.json()["reasons"] == ["no_policy_permits"]


def test_traefik_and_caddy_headers_are_understood(server: Server, key: Key) -> None:
    with as_proxy(server) as proxy:
        response = proxy.get(
            "/v1/forward-auth",
            headers={
                "X-Forwarded-Method": "POST",
                "X-Forwarded-Uri": "/ops/services/checkout/restart",
                "X-Forwarded-Host": "ops.shop.example",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-For": "10.1.2.3",
                "Authorization": f"Bearer {user_token(key)}",
            },
        )
    assert response.status_code == 200, response.text
    record = wait_for(lambda: recorded(server, response.headers["x-trustplane-decision-id"]))
    assert entity(record, "action") == 'Action::"ops:restart"'


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda key: user_token(key, exp=int(time.time()) - 3600), "token_expired"),
        (lambda key: user_token(key, aud="someone-else"), "token_wrong_audience"),
        (lambda key: user_token(key, nbf=int(time.time()) + 3600), "token_not_yet_valid"),
        (lambda key: user_token(key)[:-6] + "AAAAAA", "token_bad_signature"),
        (lambda key: rsa_key("idp-1").sign(claims()), "token_bad_signature"),
        (lambda key: "not-a-jwt", "token_malformed"),
    ],
)
def test_bad_tokens_are_401_with_a_distinct_reason(
    server: Server, key: Key, make_token: Any, code: str
) -> None:
    with as_proxy(server) as proxy:
        response = proxy.get(
            "/v1/forward-auth",
            headers=nginx_style(
                "/ops/services/checkout/logs", authorization=f"Bearer {make_token(key)}"
            ),
        )
    assert response.status_code == 401
    assert response.json()["reasons"] == [code]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="trustplane"')
    assert f'error_description="{code}"' in challenge


def test_no_credential_is_401_and_recorded(server: Server) -> None:
    with as_proxy(server) as proxy:
        response = proxy.get("/v1/forward-auth", headers=nginx_style("/admin/"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="trustplane"'
    record = wait_for(lambda: recorded(server, response.headers["x-trustplane-decision-id"]))
    assert record["decision"] == "deny"
    assert entity(record, "principal") == 'Anonymous::"anonymous"'
    assert entity(record, "action") == 'Action::"admin:console-login"', "what was attempted"


def test_unmapped_route_is_denied_by_default(server: Server, key: Key) -> None:
    with as_proxy(server) as proxy:
        response = proxy.get(
            "/v1/forward-auth",
            headers=nginx_style("/internal/metrics", authorization=f"Bearer {user_token(key)}"),
        )
    assert response.status_code == 403
    assert response.json()["reasons"] == ["no_route_matched"]


def test_forwarded_headers_from_an_untrusted_caller_are_ignored(server: Server, key: Key) -> None:
    """From 127.0.0.1 (not a trusted proxy) the caller cannot say which request it makes, nor
    who it is through the identity header."""
    response = server.client.get(
        "/v1/forward-auth",
        headers=nginx_style(
            "/ops/services/checkout/logs", authorization=f"Bearer {user_token(key)}"
        ),
    )
    assert response.status_code == 403
    assert response.json()["reasons"] == ["no_route_matched"]
    spoofed = server.client.get(
        "/v1/forward-auth",
        headers=nginx_style("/inventory/v1/stock/sku-1", **{"X-Forwarded-User": "bob"}),
    )
    assert spoofed.status_code == 401


def test_identity_header_from_the_trusted_proxy_names_the_caller(server: Server) -> None:
    with as_proxy(server) as proxy:
        response = proxy.get(
            "/v1/forward-auth",
            headers=nginx_style("/inventory/v1/stock/sku-1", **{"X-Forwarded-User": "bob"}),
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-auth-request-user"] == "bob"


# -- through a real nginx ----------------------------------------------------------------------


def nginx_binary() -> str:
    return required_binary("nginx", "/usr/sbin/nginx")


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /_trustplane {{
      internal;
      proxy_pass {pdp}/v1/forward-auth;
      proxy_bind {proxy};
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
    location / {{
      auth_request /_trustplane;
      auth_request_set $tp_user $upstream_http_x_auth_request_user;
      auth_request_set $tp_decision $upstream_http_x_trustplane_decision_id;
      proxy_set_header X-Auth-Request-User $tp_user;
      proxy_set_header X-Trustplane-Decision-Id $tp_decision;
      proxy_pass http://127.0.0.1:{upstream};
    }}
  }}
}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    app = Upstream()
    yield app
    app.close()


def start_nginx(
    directory: Path, pdp_url: str, upstream: Upstream
) -> tuple[subprocess.Popen[bytes], str]:
    binary = nginx_binary()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=directory, port=port, pdp=pdp_url, proxy=PROXY, upstream=upstream.port
        )
    )
    check = subprocess.run(
        [binary, "-t", "-c", str(conf), "-p", str(directory)], capture_output=True
    )
    assert check.returncode == 0, check.stderr.decode()
    url = f"http://127.0.0.1:{port}"
    argv = [binary, "-c", str(conf), "-p", str(directory)]
    process = start_listening(argv, url, directory / "stdout.log")
    return process, url


@pytest.fixture(scope="module")
def nginx(
    server: Server, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    process, url = start_nginx(tmp_path_factory.mktemp("nginx"), server.url, upstream)
    yield url
    stop_process(process)


def test_nginx_lets_allowed_requests_through_with_the_user(nginx: str, key: Key) -> None:
    response = httpx.get(
        f"{nginx}/ops/services/checkout/logs",
        headers={"authorization": f"Bearer {user_token(key)}"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["path"] == "/ops/services/checkout/logs"
    assert body["user"] == "alice", "the upstream sees the authenticated user"
    assert body["decision"], "and the decision id"


def test_nginx_denies_and_challenges_without_reaching_the_app(
    nginx: str, key: Key, upstream: Upstream
) -> None:
    before = len(upstream.seen)
    denied = httpx.get(
        f"{nginx}/admin/users",
        headers={"authorization": f"Bearer {user_token(key, 'erin', False)}"},
    )
    unauthenticated = httpx.get(f"{nginx}/ops/services/checkout/logs")
    expired = httpx.get(
        f"{nginx}/ops/services/checkout/logs",
        headers={"authorization": f"Bearer {user_token(key, exp=int(time.time()) - 3600)}"},
    )
    assert denied.status_code == 403
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["www-authenticate"] == 'Bearer realm="trustplane"'
    assert expired.status_code == 401
    assert 'error_description="token_expired"' in expired.headers["www-authenticate"]
    assert len(upstream.seen) == before, "no denied request reached the app"


def test_nginx_fails_closed_when_the_pdp_is_down(
    upstream: Upstream, key: Key, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    process, url = start_nginx(tmp_path / "nginx", dead, upstream)
    try:
        before = len(upstream.seen)
        response = httpx.get(
            f"{url}/ops/services/checkout/logs",
            headers={"authorization": f"Bearer {user_token(key)}"},
        )
        assert response.status_code >= 500, "nginx answers an error, never the app's 200"
        assert len(upstream.seen) == before
    finally:
        stop_process(process)


def test_the_documented_nginx_configuration_is_valid(tmp_path: Path) -> None:
    """docs/examples/nginx-auth-request.conf, included as the docs say, passes `nginx -t`."""
    snippet = REPO / "docs" / "examples" / "nginx-auth-request.conf"
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {snippet};\n}}\n"
    )
    check = subprocess.run(
        [nginx_binary(), "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True
    )
    assert check.returncode == 0, check.stderr.decode()
