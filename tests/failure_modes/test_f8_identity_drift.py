"""F8 identity drift: registration entries against the SPIFFE IDs observed in use. A real
server sees workloads at forward-auth (their identity in the `X-Forwarded-Client-Cert` a
trusted proxy forwards); one with no registration entry, one from another trust domain, and
one whose entry was deleted while it kept calling are logged, counted in
`trustplane_identity_drift_total{kind}` and flagged in the inventory (`/v1/identity/inventory`,
`trustplane identity inventory`), where an entry nothing ever used shows as `not_observed`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.failure_modes.identity_support import (
    TRUST_DOMAIN,
    identity_server,
    metric_samples,
    register_this_process,
)
from tests.support import Server, run_cli

pytestmark = pytest.mark.slow

PROXY = "127.0.0.2"  # forward-auth trusts this address as the proxy
CHECKOUT = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout"
IDLE = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/idle"
ROGUE = f"spiffe://{TRUST_DOMAIN}/ns/rogue/sa/miner"
FOREIGN = "spiffe://elsewhere.test/ns/shop/sa/checkout"
DRIFT = "trustplane_identity_drift_total"


@pytest.fixture(scope="module")
def server(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with identity_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        server__trusted_proxies=[f"{PROXY}/32"],
    ) as running:
        yield running


def call_as(server: Server, spiffe_id: str) -> httpx.Response:
    """A request from a workload whose mTLS identity the proxy forwards."""
    transport = httpx.HTTPTransport(local_address=PROXY)
    with httpx.Client(base_url=server.url, transport=transport, timeout=10) as proxy:
        response = proxy.get(
            "/v1/forward-auth",
            headers={
                "X-Original-URI": "/ops/services/checkout/logs",
                "X-Original-Method": "GET",
                "X-Forwarded-Client-Cert": f'By=spiffe://{TRUST_DOMAIN}/proxy;URI="{spiffe_id}"',
            },
        )
    assert response.status_code in (200, 403), response.text  # authenticated either way
    return response


def inventory(server: Server) -> dict[str, dict[str, Any]]:
    response = server.client.get("/v1/identity/inventory", headers=server.admin)
    assert response.status_code == 200, response.text
    return {item["principal"]: item for item in response.json()["identities"]}


def test_registered_identities_against_those_in_use(server: Server) -> None:
    checkout = register_this_process(server, "/ns/shop/sa/checkout", owner="team-shop")
    register_this_process(server, "/ns/shop/sa/idle", owner="team-shop")
    call_as(server, CHECKOUT)
    assert metric_samples(server, DRIFT) == {}, "a registered identity is no drift"

    for _ in range(3):
        call_as(server, ROGUE)
    call_as(server, FOREIGN)
    drift = metric_samples(server, DRIFT)
    assert drift['{kind="unregistered"}'] == 3
    assert drift['{kind="foreign_trust_domain"}'] == 1
    log = server.log()
    assert log.count(f"identity drift: {ROGUE} is in use but no registration entry") == 1
    assert f"identity drift: {FOREIGN} is in use but it is not of trust domain" in log

    items = inventory(server)
    assert "unregistered" in items[ROGUE]["flags"]
    assert "foreign_trust_domain" in items[FOREIGN]["flags"]
    assert not {"unregistered", "not_observed"} & set(items[CHECKOUT]["flags"])
    idle = items[IDLE]
    assert idle["flags"] == ["not_observed"] and idle["issued"] == 0
    assert idle["owner"] == "team-shop" and idle["last_seen"] is None

    # an entry deleted while its workload keeps calling: drift from then on
    deleted = server.client.delete(f"/v1/identity/entries/{checkout['id']}", headers=server.admin)
    assert deleted.status_code == 200
    call_as(server, CHECKOUT)
    assert metric_samples(server, DRIFT)['{kind="unregistered"}'] == 4
    assert "unregistered" in inventory(server)[CHECKOUT]["flags"]

    env = {**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url}
    listed = run_cli("identity", "inventory", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    by_principal = {i["principal"]: i for i in json.loads(listed.stdout)["identities"]}
    assert "unregistered" in by_principal[ROGUE]["flags"]
    table = run_cli("identity", "inventory", env={**env, "COLUMNS": "250"})
    assert table.returncode == 0, table.stderr
    assert "not_observed" in table.stdout and "never" in table.stdout
