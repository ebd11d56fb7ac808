"""The admin API's ledger routes on a real server: decisions with their reason codes and
determining policies, the filters (each bad value a 400 naming its parameter), and the record
pages a remote `audit verify` checks with the same verifier as the store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from tests.conftest import SHOP
from tests.support import Server, authzen, running_server
from trustplane.config import Settings
from trustplane.server.runtime import load_verifier
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions
from trustplane.telemetry.ledger import ApiSource, verify_ledger

pytestmark = pytest.mark.slow

FRESH = {"mfa": True, "auth_age_seconds": 120, "risk_score": 10}
ERIN_REFUND = (("User", "erin"), "payments:refund", ("Api", "payments.refund"))


@pytest.fixture(scope="module")
def served(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict[str, str]]]:
    """A server with a few decisions of each kind: (server, {decision id: what it was})."""
    with running_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        SHOP,
        policy__watch="false",
        ledger__durability="sync",  # every answer (and admin read) is committed before it returns
        server__trusted_proxies=["127.0.0.1/32"],
        pep__identity_header="X-Forwarded-User",
    ) as server:
        made: dict[str, str] = {}
        for name, body in (
            ("allow", authzen(*ERIN_REFUND, FRESH)),
            ("forbid", authzen(*ERIN_REFUND, {**FRESH, "mfa": False})),
            (
                "nothing",
                authzen(("User", "bob"), "db:query", ("Database", "payments-db-prod"), FRESH),
            ),
        ):
            answer = server.client.post("/access/v1/evaluation", json=body).json()
            made[answer["context"]["decision_id"]] = name
        for name, headers in (
            ("missing", {}),
            ("token", {"authorization": "Bearer not-a-token"}),
            ("unrouted", {"x-forwarded-user": "alice"}),
        ):
            uri = "/nowhere" if name == "unrouted" else "/payments/v1/transactions/1"
            response = server.client.get(
                "/v1/forward-auth",
                headers={"X-Original-URI": uri, "X-Original-Method": "GET", **headers},
            )
            assert response.status_code in (401, 403), response.text
            made[response.headers["x-trustplane-decision-id"]] = name
        yield server, made


def listed(server: Server, **params: Any) -> list[dict[str, Any]]:
    response = server.client.get("/v1/decisions", params=params, headers=server.admin)
    assert response.status_code == 200, response.text
    return list(response.json()["decisions"])


def test_decisions_carry_their_reason_code_and_determining_policies(
    served: tuple[Server, dict[str, str]],
) -> None:
    server, made = served
    rows = {r["decision_id"]: r for r in listed(server, kind="decision", limit=100)}
    codes = {made[i]: rows[i]["reason_code"] for i in made}
    assert codes == {
        "allow": "policy_permits",
        "forbid": "policy_forbids",
        "nothing": "no_policy_permits",
        "missing": "credential_missing",
        "token": "token_unknown_issuer",
        "unrouted": "no_route_matched",
    }
    forbid = next(i for i, name in made.items() if name == "forbid")
    assert rows[forbid]["determining_policies"] == ["require-fresh-mfa-for-tier0-and-admin"]
    one = server.client.get(f"/v1/decisions/{forbid}", headers=server.admin).json()
    assert one["reason_code"] == "policy_forbids"
    assert one["determining_policies"] == ["require-fresh-mfa-for-tier0-and-admin"]


def test_filters_by_time_action_resource_and_kind(served: tuple[Server, dict[str, str]]) -> None:
    server, made = served
    recent = {r["decision_id"] for r in listed(server, since="1h", kind="decision", limit=100)}
    assert set(made) <= recent
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert listed(server, since=future) == []
    assert listed(server, until="2000-01-01T00:00:00Z") == []
    refunds = listed(server, action="payments:refund", kind="decision")
    assert sorted(made[r["decision_id"]] for r in refunds) == ["allow", "forbid"]
    exact = listed(server, resource='Api::"payments.refund"', decision="deny")
    assert [made[r["decision_id"]] for r in exact] == ["forbid"]
    admin = listed(server, kind="admin", action="decisions:read", limit=5)
    assert admin and all(r["kind"] == "admin" for r in admin)
    assert all(r["reason_code"] == "admin_allowed" for r in admin)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-12-03T10:00:00"}, "until"),
        ({"since": "1h", "until": "2h"}, "until"),
        ({"action": ""}, "action"),
        ({"kind": "audit"}, "kind"),
        ({"decision": "maybe"}, "decision"),
        ({"limit": "0"}, "limit"),
        ({"resource": "x", "color": "red"}, "color"),
    ],
)
def test_a_bad_filter_is_a_400_problem_naming_its_parameter(
    served: tuple[Server, dict[str, str]], params: dict[str, str], named: str
) -> None:
    server, _ = served
    response = server.client.get("/v1/decisions", params=params, headers=server.admin)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["detail"].startswith(f"{named}: ")
    assert problem["errors"][0]["pointer"] == f"?{named}"


def test_record_pages_verify_with_the_store_verifier_and_show_tampering(
    served: tuple[Server, dict[str, str]],
) -> None:
    server, made = served

    def fetch(path: str, params: dict[str, str]) -> Any:
        response = server.client.get(path, params=params, headers=server.admin)
        assert response.status_code == 200, response.text
        return response.json()

    settings = Settings(state_dir=Path(server.env["TRUSTPLANE_STATE_DIR"]))
    verifier = load_verifier(settings)
    report = verify_ledger(ApiSource(fetch, page=3), verifier)  # several pages
    assert report.intact, report.problems
    assert report.records >= len(made)

    database_url = server.env["TRUSTPLANE_STORE__URL"]
    engine = create_store_engine(database_url)
    victim = next(i for i, name in made.items() if name == "forbid")
    try:
        with engine.begin() as connection:
            connection.execute(
                update(decisions).where(decisions.c.decision_id == victim).values(decision="allow")
            )
        tampered = verify_ledger(ApiSource(fetch, page=3), verifier)
        assert not tampered.intact
        assert any(victim in p and "query column decision" in p for p in tampered.problems or [])
    finally:
        with engine.begin() as connection:
            connection.execute(
                update(decisions).where(decisions.c.decision_id == victim).values(decision="deny")
            )
        engine.dispose()


def test_pages_refuse_unknown_and_malformed_parameters(
    served: tuple[Server, dict[str, str]],
) -> None:
    server, _ = served
    for path, params, named in (
        ("/v1/ledger/records", {"from_seq": "-1"}, "from_seq"),
        ("/v1/ledger/records", {"limit": "many"}, "limit"),
        ("/v1/ledger/quarantine", {"after": "3"}, "after"),
        ("/v1/ledger/checkpoints", {"from_size": "x"}, "from_size"),
    ):
        response = server.client.get(path, params=params, headers=server.admin)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["errors"][0]["pointer"] == f"?{named}"
