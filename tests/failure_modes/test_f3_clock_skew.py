"""F3 clock skew: token issuers whose clocks run two minutes ahead of and behind the server's.
A token is accepted while its time claims miss by no more than the issuer's `leeway_seconds`
and refused beyond it, with a reason that names the claim (`exp`, `iat`/`nbf`) and by how much
it missed; the skew each issuer's JWKS `Date` header shows is exported as
`trustplane_issuer_clock_skew_seconds{issuer}`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import SHOP
from tests.failure_modes.identity_support import metric_samples
from tests.issuer import AUDIENCE, Jwks, Key, rsa_key
from tests.support import Server, running_server, wait_for

pytestmark = pytest.mark.slow

PROXY = "127.0.0.2"  # forward-auth trusts this address as the proxy
SKEW = 120  # seconds
AHEAD, BEHIND = "https://ahead.idp.test", "https://behind.idp.test"
LENIENT = "-lenient"  # the same issuer, trusted with a leeway wider than its skew


@pytest.fixture(scope="module")
def key() -> Key:
    return rsa_key("skewed-1")


@pytest.fixture(scope="module")
def issuers(key: Key) -> Iterator[dict[str, Jwks]]:
    ahead, behind = Jwks(), Jwks()
    ahead.clock_offset, behind.clock_offset = SKEW, -SKEW
    ahead.keys = behind.keys = [key.jwk()]
    yield {AHEAD: ahead, BEHIND: behind}
    ahead.close()
    behind.close()


@pytest.fixture(scope="module")
def server(
    module_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    issuers: dict[str, Jwks],
) -> Iterator[Server]:
    trusted = [
        {"issuer": name + suffix, "jwks_uri": jwks.uri, "audiences": [AUDIENCE],
         "leeway_seconds": leeway}
        for name, jwks in issuers.items()
        for suffix, leeway in (("", 60), (LENIENT, 180))
    ]  # fmt: skip
    with running_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        SHOP,
        policy__watch="false",
        pep__issuers=trusted,
        server__trusted_proxies=[f"{PROXY}/32"],
    ) as running:
        yield running


def token(key: Key, issuer: str, offset: int, lifetime: int = 300) -> str:
    """A token as an issuer whose clock is `offset` seconds off mints it, now."""
    theirs = int(time.time()) + offset
    return key.sign(
        {
            "iss": issuer,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": theirs,
            "nbf": theirs,
            "exp": theirs + lifetime,
            "amr": ["pwd", "hwk"],
            "auth_time": theirs - 60,
        }
    )


def forward_auth(server: Server, bearer: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=PROXY)
    with httpx.Client(base_url=server.url, transport=transport, timeout=10) as proxy:
        return proxy.get(
            "/v1/forward-auth",
            headers={
                "X-Original-URI": "/ops/services/checkout/logs",
                "X-Original-Method": "GET",
                "authorization": f"Bearer {bearer}",
            },
        )


def recorded_reason(server: Server, response: httpx.Response) -> str:
    decision_id = response.headers["x-trustplane-decision-id"]

    def fetch() -> dict[str, Any] | None:
        found = server.client.get(f"/v1/decisions/{decision_id}", headers=server.admin)
        return dict(found.json()) if found.status_code == 200 else None

    return json.dumps(wait_for(fetch, timeout=20))


def test_an_issuer_two_minutes_ahead(server: Server, key: Key) -> None:
    beyond = forward_auth(server, token(key, AHEAD, SKEW))
    assert beyond.status_code == 401
    assert beyond.json()["reasons"] == ["token_not_yet_valid"]
    reason = recorded_reason(server, beyond)
    assert "iat is 1" in reason and "s ahead of this server's clock" in reason, reason
    assert "beyond the leeway of 60 s" in reason

    within = forward_auth(server, token(key, AHEAD + LENIENT, SKEW))
    assert within.status_code == 200, within.text


def test_an_issuer_two_minutes_behind(server: Server, key: Key) -> None:
    # a 30 s token minted two minutes ago by the issuer's clock expired 90 s ago by ours
    beyond = forward_auth(server, token(key, BEHIND, -SKEW, lifetime=30))
    assert beyond.status_code == 401
    assert beyond.json()["reasons"] == ["token_expired"]
    reason = recorded_reason(server, beyond)
    assert "exp was" in reason and "beyond the leeway of 60 s" in reason, reason
    # expired 20 s ago: within the 60 s leeway
    within = forward_auth(server, token(key, BEHIND, -SKEW, lifetime=100))
    assert within.status_code == 200, within.text
    lenient = forward_auth(server, token(key, BEHIND + LENIENT, -SKEW, lifetime=30))
    assert lenient.status_code == 200, lenient.text


def test_the_observed_skew_is_exported(server: Server, key: Key) -> None:
    for name, offset in ((AHEAD, SKEW), (BEHIND, -SKEW)):
        forward_auth(server, token(key, name, offset))  # makes sure its JWKS was fetched
    skew = metric_samples(server, "trustplane_issuer_clock_skew_seconds")
    ahead = skew[f'{{issuer="{AHEAD}"}}']
    behind = skew[f'{{issuer="{BEHIND}"}}']
    # the Date header has a resolution of one second
    assert SKEW - 2 <= ahead <= SKEW + 1, skew
    assert -SKEW - 2 <= behind <= -SKEW + 1, skew
    assert "its clock is" in server.log() and "beyond its leeway of 60 s" in server.log()
