"""The trust plane through a real server, on each backend: forward-auth requests scored from
the token and the forwarded address, impossible travel refused with its explanation, the score
in the record and in the AuthZEN answer, caller-supplied trust ignored, and a broken database
that fails closed instead of failing the request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SHOP, store_url
from tests.issuer import Jwks, Key, user_token
from tests.issuer import issuer_settings as issuers
from tests.support import Server, authzen, running_server, wait_for
from tests.trust.test_network_travel import LONDON, NEW_YORK, city_database

pytestmark = pytest.mark.slow

PROXY = "127.0.0.2"
LOGS = "/ops/services/checkout/logs"  # ops:read-logs, Tier 1: alice (SRE) with MFA may


def scored(state: Path, files: Path, url: str, issuer: Jwks) -> Any:
    """A server of the shop with a city database and a known-bad list, behind PROXY."""
    (files / "bad.txt").write_text("203.0.113.0/24\n")
    trust = {
        "city_database": str(city_database(files / "city.mmdb")),
        "bad_networks_files": [str(files / "bad.txt")],
    }
    return running_server(
        state,
        url,
        SHOP,
        policy__watch="false",
        pep__issuers=issuers(issuer),
        server__trusted_proxies=[f"{PROXY}/32"],
        trust=json.dumps(trust),
    )


@pytest.fixture(scope="module")
def server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, issuer: Jwks
) -> Iterator[Server]:
    files = tmp_path_factory.mktemp("trust")
    with scored(tmp_path_factory.mktemp("state"), files, module_database_url, issuer) as srv:
        yield srv


def through_proxy(server: Server, token: str, client: str, path: str = LOGS) -> httpx.Response:
    """nginx's auth subrequest for a client at `client` (X-Forwarded-For, from the proxy)."""
    transport = httpx.HTTPTransport(local_address=PROXY)
    with httpx.Client(base_url=server.url, transport=transport, timeout=10) as proxy:
        return proxy.get(
            "/v1/forward-auth",
            headers={
                "X-Original-URI": path,
                "X-Original-Method": "GET",
                "X-Forwarded-For": client,
                "authorization": f"Bearer {token}",
            },
        )


def record(server: Server, response: httpx.Response) -> dict[str, Any]:
    decision_id = response.headers["x-trustplane-decision-id"]

    def found() -> dict[str, Any] | None:
        answer = server.client.get(f"/v1/decisions/{decision_id}", headers=server.admin)
        return dict(answer.json()) if answer.status_code == 200 else None

    return dict(wait_for(found))


def signals(trust: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in trust["signals"]}


def test_impossible_travel_is_refused_with_its_explanation(server: Server, key: Key) -> None:
    token = user_token(key, "alice")
    home = through_proxy(server, token, LONDON)
    assert home.status_code == 200, home.text
    trust = record(server, home)["trust"]
    assert trust["score"] == 0 and trust["level"] == "low" and trust["signals"] == []
    assert {"mfa_strength", "country", "impossible_travel"} <= set(trust["quiet"])

    away = through_proxy(server, token, NEW_YORK)  # seconds later, 5,570 km away
    assert away.status_code == 403, away.text
    assert away.json()["reasons"] == ["forbid-high-risk"]
    trust = record(server, away)["trust"]
    assert trust["summary"] == "risk 80: impossible_travel +65, new_country +15"
    travel = signals(trust)["impossible_travel"]
    assert travel["source"] == "store" and travel["observed"]["km"] > 5000
    assert "km/h > 1000" in travel["explanation"]


def test_a_known_bad_network_is_critical_on_its_own(server: Server, key: Key) -> None:
    response = through_proxy(server, user_token(key, "bob"), "203.0.113.50")
    assert response.status_code == 403
    trust = record(server, response)["trust"]
    assert trust["score"] == 80 and trust["level"] == "critical"
    bad = signals(trust)["bad_network"]
    assert bad["observed"] == "203.0.113.0/24" and bad["source"] == "token"


def test_the_authzen_answer_shows_the_score_and_ignores_callers_trust(server: Server) -> None:
    body = authzen(
        ("User", "alice"),
        "ops:read-logs",
        ("Service", "checkout"),
        {"mfa": True, "auth_age_seconds": 60, "trust": {"score": 0, "signals": {}}},
    )
    answer = server.client.post("/access/v1/evaluation", json=body)
    assert answer.status_code == 200, answer.text
    trust = answer.json()["context"]["trust"]
    assert trust["score"] == 0 and trust["summary"] == "risk 0"
    assert "not a PEP trusted to supply trust values" in trust["ignored"]
    assert "mfa_strength" in trust["quiet"]  # no token: nothing to weigh


def test_a_broken_city_database_fails_closed_not_500(
    module_database_url: str, tmp_path: Path, issuer: Jwks, key: Key
) -> None:
    broken = tmp_path / "city.mmdb"
    broken.write_bytes(b"not a MaxMind database")
    with running_server(
        tmp_path / "state",
        module_database_url,
        SHOP,
        policy__watch="false",
        pep__issuers=issuers(issuer),
        server__trusted_proxies=[f"{PROXY}/32"],
        trust=json.dumps({"city_database": str(broken)}),
    ) as srv:
        response = through_proxy(srv, user_token(key, "carol"), LONDON)
        assert response.status_code == 403, response.text
        trust = record(srv, response)["trust"]
        failed = [s for s in trust["signals"] if "error" in s]
        assert {s["name"] for s in failed} >= {"impossible_travel", "new_country"}
        assert all(s["source"] == "error" and s["points"] == s["weight"] for s in failed)
        assert trust["score"] >= 80


@pytest.mark.postgres
def test_travel_between_two_replicas_is_flagged(tmp_path: Path, issuer: Jwks, key: Key) -> None:
    """London on one replica, New York on the other a second later: the second sees the first."""
    (tmp_path / "files").mkdir()
    with (
        store_url("postgresql", tmp_path) as url,
        scored(tmp_path / "a", tmp_path / "files", url, issuer) as a,
        scored(tmp_path / "b", tmp_path / "files", url, issuer) as b,
    ):
        token = user_token(key, "alice")
        assert through_proxy(a, token, LONDON).status_code == 200
        time.sleep(1)
        away = through_proxy(b, token, NEW_YORK)
        assert away.status_code == 403, away.text
        trust = record(b, away)["trust"]
        assert trust["summary"] == "risk 80: impossible_travel +65, new_country +15"


def test_envoy_http_mode_is_scored_like_forward_auth(server: Server, key: Key) -> None:
    """Envoy's HTTP ext_authz mode: the original request under /v1/envoy/http, from the proxy."""
    transport = httpx.HTTPTransport(local_address=PROXY)
    with httpx.Client(base_url=server.url, transport=transport, timeout=10) as envoy:
        response = envoy.get(
            f"/v1/envoy/http{LOGS}",
            headers={
                "X-Forwarded-For": "203.0.113.77",
                "authorization": f"Bearer {user_token(key, 'carol')}",
            },
        )
    assert response.status_code == 403, response.text
    trust = record(server, response)["trust"]
    assert trust["summary"] == "risk 80: bad_network +80"
