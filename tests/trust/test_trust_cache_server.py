"""The decision cache and the trust plane through a real server, on each backend: a scored
request's reuse follows its risk (a critical one evaluated live, a fresh low-risk read reused
for its tier's bound and no longer than its token), and the signals that fired are counted."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.issuer import Jwks, Key, user_token
from tests.support import Server
from tests.trust.test_trust_server import LONDON, scored, through_proxy

pytestmark = pytest.mark.slow

STOCK = "/inventory/v1/stock/sku-1"  # inventory:read on a Tier 2 API: bob (developer) may


@pytest.fixture(scope="module")
def server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, issuer: Jwks
) -> Iterator[Server]:
    files = tmp_path_factory.mktemp("trust")
    with scored(tmp_path_factory.mktemp("state"), files, module_database_url, issuer) as srv:
        yield srv


def fired(server: Server) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(server.client.get("/metrics").text):
        if family.name == "trustplane_trust_signals_fired":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[(sample.labels["signal"], sample.labels["mode"])] = sample.value
    return found


def test_a_critical_request_is_live_and_its_signals_are_counted(server: Server, key: Key) -> None:
    before = fired(server)
    response = through_proxy(server, user_token(key, "bob"), "203.0.113.9", STOCK)
    assert response.status_code == 403, response.text
    assert "x-trustplane-cache-ttl" not in response.headers, "only an allow is reusable"
    after = fired(server)
    assert after[("bad_network", "enforce")] == before.get(("bad_network", "enforce"), 0) + 1


def test_a_low_risk_read_is_reused_for_its_tier_and_never_past_its_token(
    server: Server, key: Key
) -> None:
    # A fresh phishing-resistant sign-in from London: risk 0, a Tier 2 read, reused up to 60 s.
    response = through_proxy(server, user_token(key, "bob"), LONDON, STOCK)
    assert response.status_code == 200, response.text
    assert 50 <= int(response.headers["x-trustplane-cache-ttl"]) <= 60
    assert int(response.headers["x-trustplane-cache-epoch"]) >= 0
    # The same with a token that ends in 20 s: the allow is not reused past it.
    brief = user_token(key, "bob", exp=int(time.time()) + 20)
    response = through_proxy(server, brief, LONDON, STOCK)
    assert response.status_code == 200, response.text
    assert 0 < int(response.headers["x-trustplane-cache-ttl"]) <= 20
