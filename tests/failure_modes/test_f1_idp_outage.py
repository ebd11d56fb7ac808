"""F1 identity-provider outage: a loopback OIDC issuer (its JWKS over HTTP) is stopped. The keys
already fetched keep verifying for a bounded time (`jwks_max_stale_seconds` after the last
successful fetch), after which the issuer's tokens are refused (fail closed); a token naming a
key that is not cached is refused at once with its own reason, `token_issuer_unreachable`, not
`token_unknown_key`. Both in-process with a clock the test moves (the exact bound) and in a
real server behind forward-auth (the 401 and the recorded decision)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SHOP
from tests.identity.conftest import Clock
from tests.issuer import AUDIENCE, ISSUER, Jwks, Key, claims, rsa_key, user_token
from tests.support import Server, running_server, wait_for
from trustplane.identity.tokens import Issuer, TokenRejected, TokenVerifier

PROXY = "127.0.0.2"  # forward-auth trusts this address as the proxy


@pytest.fixture(scope="module")
def key() -> Key:
    return rsa_key("idp-1")


def refused(verifier: TokenVerifier, token: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as caught:
        verifier.verify(token)
    return caught.value


def test_cached_keys_verify_for_a_bounded_time_then_fail_closed(key: Key) -> None:
    issuer = Jwks()
    issuer.keys = [key.jwk()]
    port = issuer.server.server_port
    clock = Clock(1000.0)
    verifier = TokenVerifier(
        [
            Issuer(
                ISSUER,
                issuer.uri,
                (AUDIENCE,),
                jwks_cache_seconds=60,
                jwks_max_stale_seconds=600,
            )
        ],
        min_refresh_seconds=10,
        clock=clock,
    )
    token = user_token(key)
    assert verifier.verify(token).subject == "alice"
    issuer.close()  # the identity provider is down: connections are refused

    clock.now += 120  # the cache is due for a refresh, which fails
    assert verifier.verify(token).subject == "alice", "cached keys keep verifying"
    unknown = refused(verifier, rsa_key("idp-2").sign({"iss": ISSUER}))
    assert unknown.code == "token_issuer_unreachable", unknown
    assert "'idp-2' is not among the cached keys" in unknown.detail

    clock.now = 1000.0 + 599
    assert verifier.verify(token).subject == "alice", "still within jwks_max_stale_seconds"
    clock.now = 1000.0 + 600
    stale = refused(verifier, token)
    assert stale.code == "token_issuer_unreachable"
    assert "last loaded 600 s ago" in stale.detail and "jwks_max_stale_seconds" in stale.detail

    back = Jwks(port=port)  # the provider recovers at the same address
    try:
        back.keys = [key.jwk()]
        clock.now += 60
        assert verifier.verify(token).subject == "alice", "verifying again once it answers"
        new_key = rsa_key("idp-3")
        back.keys.append(new_key.jwk())
        clock.now += 10
        assert verifier.verify(new_key.sign(claims())).key_id == "idp-3"
        missing = refused(verifier, rsa_key("idp-4").sign(claims()))
        assert missing.code == "token_unknown_key", "issuer up: the key does not exist"
    finally:
        back.close()


@pytest.fixture
def issuer(key: Key) -> Iterator[Jwks]:
    jwks = Jwks()
    jwks.keys = [key.jwk()]
    yield jwks
    jwks.close()


@pytest.fixture
def server(database_url: str, tmp_path: Path, issuer: Jwks) -> Iterator[Server]:
    with running_server(
        tmp_path / "state",
        database_url,
        SHOP,
        policy__watch="false",
        pep__issuers=[
            {
                "issuer": ISSUER,
                "jwks_uri": issuer.uri,
                "audiences": [AUDIENCE],
                "jwks_cache_seconds": 1,
                "jwks_max_stale_seconds": 20,
            }
        ],
        server__trusted_proxies=[f"{PROXY}/32"],
    ) as running:
        yield running


def forward_auth(server: Server, token: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=PROXY)
    with httpx.Client(base_url=server.url, transport=transport, timeout=10) as proxy:
        return proxy.get(
            "/v1/forward-auth",
            headers={
                "X-Original-URI": "/ops/services/checkout/logs",
                "X-Original-Method": "GET",
                "authorization": f"Bearer {token}",
            },
        )


def reasons(response: httpx.Response) -> list[str]:
    return list(response.json().get("reasons", [])) if response.content else []


@pytest.mark.slow
def test_a_real_server_fails_closed_with_the_reason_once_the_issuer_is_gone(
    server: Server, issuer: Jwks, key: Key
) -> None:
    token = user_token(key)
    assert forward_auth(server, token).status_code == 200
    issuer.close()

    cached = forward_auth(server, token)
    assert cached.status_code == 200, "cached keys keep verifying while the issuer is down"

    # within a second of the last good fetch a new kid is not looked up (rate limit), so the
    # server does not know yet that the issuer is gone: it says so once a lookup has failed
    rotated = user_token(rsa_key("idp-rotated"))
    unknown = wait_for(
        lambda: (
            (r := forward_auth(server, rotated)).status_code == 401
            and reasons(r) == ["token_issuer_unreachable"]
            and r
        ),
        timeout=30,
        interval=0.25,
    )
    assert 'error_description="token_issuer_unreachable"' in unknown.headers["www-authenticate"]
    record = wait_for(
        lambda: _recorded(server, unknown.headers["x-trustplane-decision-id"]), timeout=20
    )
    assert record["decision"] == "deny"
    assert "token_issuer_unreachable" in json.dumps(record), "the ledger says why"

    # beyond jwks_max_stale_seconds every token of the issuer is refused
    expired = wait_for(
        lambda: (r := forward_auth(server, token)).status_code == 401 and r,
        timeout=60,
        interval=0.5,
    )
    assert reasons(expired) == ["token_issuer_unreachable"]


def _recorded(server: Server, decision_id: str) -> dict[str, Any] | None:
    response = server.client.get(f"/v1/decisions/{decision_id}", headers=server.admin)
    return dict(response.json()) if response.status_code == 200 else None
