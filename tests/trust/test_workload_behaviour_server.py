"""Workload integrity and behaviour through a real server with the identity plane, on each
backend: a workload calling through Envoy is scored by whether a registration entry (the
Workload API's attestation) names it and whether its pinned digest is attested; a person's
first use of an action is novel; and on PostgreSQL, one replica's history reaches another."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SHOP, store_url
from tests.issuer import Jwks, Key, user_token
from tests.issuer import issuer_settings as issuers
from tests.support import Server, running_server
from tests.trust.test_trust_server import LOGS, PROXY, record, signals

pytestmark = pytest.mark.slow

DOMAIN = "shop.example"
CHECKOUT = f"spiffe://{DOMAIN}/ns/storefront/sa/checkout"  # Service::"checkout"
BILLING = f"spiffe://{DOMAIN}/ns/finance/sa/billing"  # no entry names it
EXE = "cd" * 32


def serve(state: Path, url: str, issuer: Jwks, kek_file: Path | None = None) -> Any:
    """A server of the shop with the identity plane; replicas of one store share `kek_file`."""
    kek_file = kek_file or state.parent / f"{state.name}.kek"
    if not kek_file.exists():
        from trustplane.identity.kek import new_kek

        kek_file.write_text(new_kek())
        kek_file.chmod(0o600)
    return running_server(
        state,
        url,
        SHOP,
        policy__watch="false",
        pep__issuers=issuers(issuer),
        server__trusted_proxies=[f"{PROXY}/32"],
        identity__trust_domain=DOMAIN,
        identity__kek_file=kek_file,
        identity__workload_socket=state / "workload.sock",
        trust='{"geoip": false, "behaviour_interval_ms": 100}',
    )


@pytest.fixture(scope="module")
def server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, issuer: Jwks
) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("state"), module_database_url, issuer) as srv:
        yield srv


def as_workload(server: Server, spiffe_id: str, path: str = "/inventory/v1/reservations") -> Any:
    """Envoy's HTTP ext_authz, from the proxy, for a caller whose mTLS identity it verified."""
    transport = httpx.HTTPTransport(local_address=PROXY)
    with httpx.Client(base_url=server.url, transport=transport, timeout=10) as envoy:
        return envoy.post(
            f"/v1/envoy/http{path}",
            headers={"X-Forwarded-Client-Cert": f"By=spiffe://{DOMAIN}/gw;URI={spiffe_id}"},
        )


def test_workload_integrity_from_registration_entries(server: Server) -> None:
    entry = {"spiffe_id": CHECKOUT, "selectors": ["unix:uid:0", f"unix:sha256:{EXE}"]}
    made = server.client.post("/v1/identity/entries", json=entry, headers=server.admin)
    assert made.status_code == 201, made.text
    registered = as_workload(server, CHECKOUT)
    integrity = signals(record(server, registered)["trust"])["workload_integrity"]
    assert integrity["mode"] == "observe" and integrity["points"] == 20
    assert integrity["source"] == "identity"
    assert f"no recorded attestation of sha256:{EXE[:12]}" in integrity["explanation"]

    rogue = as_workload(server, BILLING)
    integrity = signals(record(server, rogue)["trust"])["workload_integrity"]
    assert integrity["points"] == 40 and integrity["observed"]["drift"] == "unregistered"


def test_a_person_is_not_a_workload_and_novelty_is_per_principal(server: Server, key: Key) -> None:
    token = user_token(key, "alice")
    first = through_proxy(server, token, LOGS)
    trust = record(server, first)["trust"]
    assert {"workload_integrity", "novelty"} <= set(trust["quiet"])
    again = through_proxy(server, token, LOGS)
    assert "novelty" in record(server, again)["trust"]["quiet"]
    new = through_proxy(server, token, "/inventory/v1/stock/sku-1")
    novelty = signals(record(server, new)["trust"])["novelty"]
    assert novelty["mode"] == "observe" and novelty["points"] == 10
    assert 'Action::"inventory:read"' in novelty["explanation"]


def through_proxy(server: Server, token: str, path: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=PROXY)
    with httpx.Client(base_url=server.url, transport=transport, timeout=10) as proxy:
        return proxy.get(
            "/v1/forward-auth",
            headers={
                "X-Original-URI": path,
                "X-Original-Method": "GET",
                "authorization": f"Bearer {token}",
            },
        )


@pytest.mark.postgres
def test_behaviour_history_reaches_the_other_replica(
    tmp_path: Path, issuer: Jwks, key: Key
) -> None:
    """bob's first request on one replica; on the other, a second later, bob is known there
    too, so his first use of another action is novel (it would not be for a stranger)."""
    with (
        store_url("postgresql", tmp_path) as url,
        serve(tmp_path / "a", url, issuer, tmp_path / "shared.kek") as a,
        serve(tmp_path / "b", url, issuer, tmp_path / "shared.kek") as b,
    ):
        token = user_token(key, "bob")
        assert "novelty" in record(a, through_proxy(a, token, LOGS))["trust"]["quiet"]
        time.sleep(1)  # the write-behind interval is 0.1 s
        new = through_proxy(b, token, "/inventory/v1/stock/sku-2")
        novelty = signals(record(b, new)["trust"])["novelty"]
        assert novelty["points"] == 10, novelty
