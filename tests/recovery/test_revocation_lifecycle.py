"""The revocation lifecycle through a real server (SQLite and PostgreSQL): a revocation with an
expiry stops denying by itself and its expiry is recorded in the ledger; a revocation is lifted
by a unique id prefix with a reason, recorded with who and why; a principal nobody knows needs
`force`. Two replicas on one PostgreSQL: expiry and lift reach the other within a second, and
the expiry is recorded once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import SHOP, store_url
from tests.support import Server, authzen, run_cli, running_server, wait_for
from trustplane.recovery.revocation import EXPIRY_ACTOR
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions

CTX = {"mfa": True, "auth_age_seconds": 60, "risk_score": 0}
ALICE_LOGS = authzen(("User", "alice"), "ops:read-logs", ("Service", "checkout"), CTX)
CAROL_EXPORT = authzen(("User", "carol"), "audit:export", ("Dataset", "audit-log"), CTX)
HOUSEKEEPING = {"policy__watch": "false", "governance__interval_ms": 200}


@pytest.fixture(scope="module")
def server(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("state"), module_database_url, SHOP, **HOUSEKEEPING
    ) as srv:
        yield srv


def allowed(server: Server, request: dict[str, Any]) -> bool:
    answer = server.client.post("/access/v1/evaluation", json=request)
    assert answer.status_code == 200, answer.text
    return bool(answer.json()["decision"])


def revoke(server: Server, **body: Any) -> httpx.Response:
    body.setdefault("reason", "test")
    return server.client.post("/v1/revocations", json=body, headers=server.admin)


def lift(server: Server, revocation_id: str, reason: str | None = "test") -> httpx.Response:
    body = {} if reason is None else {"reason": reason}
    path = f"/v1/revocations/{revocation_id}/lift"
    return server.client.post(path, json=body, headers=server.admin)


def admin_records(server: Server, action: str) -> list[dict[str, Any]]:
    """The ledger's admin records of `action`, read from the store (asking the admin API would
    add a record of its own)."""
    engine = create_store_engine(server.env["TRUSTPLANE_STORE__URL"])
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(decisions.c.record)
                .where(decisions.c.kind == "admin")
                .order_by(decisions.c.seq)
            ).all()
    finally:
        engine.dispose()
    records = [json.loads(bytes(row.record)) for row in rows]
    return [r for r in records if r["action"] == action]


def test_a_revocation_with_an_expiry_ends_by_itself_and_the_ledger_says_so(
    server: Server,
) -> None:
    assert allowed(server, ALICE_LOGS)
    made = revoke(server, kind="principal", target='User::"alice"', expires="3s")
    assert made.status_code == 201, made.text
    revocation = made.json()
    assert revocation["state"] == "in-force"
    assert revocation["expires_at"] == pytest.approx(time.time() + 3, abs=2)
    assert not allowed(server, ALICE_LOGS)
    listed = server.client.get("/v1/revocations", headers=server.admin).json()["revocations"]
    assert revocation["id"] in [r["id"] for r in listed]
    wait_for(lambda: allowed(server, ALICE_LOGS), timeout=10)
    assert time.time() >= revocation["expires_at"], "not before its expiry"
    expired = wait_for(lambda: admin_records(server, "revocation:expire"), timeout=10)
    assert [r["details"]["revocation"] for r in expired] == [revocation["id"]]
    assert expired[0]["actor"] == EXPIRY_ACTOR
    assert expired[0]["target"] == 'principal:User::"alice"'
    history = server.client.get(
        "/v1/revocations", params={"ended": "true"}, headers=server.admin
    ).json()["revocations"]
    (ended,) = [r for r in history if r["id"] == revocation["id"]]
    assert (ended["state"], ended["ended_by"]) == ("expired", EXPIRY_ACTOR)
    listed = server.client.get("/v1/revocations", headers=server.admin).json()["revocations"]
    assert revocation["id"] not in [r["id"] for r in listed], "no longer in force"


def test_a_revocation_is_lifted_by_id_prefix_and_the_ledger_says_who_and_why(
    server: Server,
) -> None:
    assert allowed(server, CAROL_EXPORT)
    made = revoke(server, kind="principal", target='User::"carol"', reason="phished")
    assert made.status_code == 201, made.text
    revocation_id = made.json()["id"]
    assert not allowed(server, CAROL_EXPORT)
    lifted = lift(server, revocation_id[:8], "false alarm: the login was hers")
    assert lifted.status_code == 200, lifted.text
    assert lifted.json()["lifted"] is True and lifted.json()["id"] == revocation_id
    assert lifted.json()["state"] == "lifted"
    assert allowed(server, CAROL_EXPORT)
    again = lift(server, revocation_id, "twice")
    assert again.status_code == 200 and again.json()["lifted"] is False
    first_lift = again.json()["end_reason"]
    assert first_lift == "false alarm: the login was hers", "the first lift stands"
    records = [
        r
        for r in admin_records(server, "revocation:write")
        if r["details"].get("revocation") == revocation_id
    ]
    steps = [(r["details"]["step"], r["reason"]) for r in records]
    assert steps == [
        ("revoke", "phished"),
        ("lift", "false alarm: the login was hers"),
        ("lift", "twice"),
    ]
    assert {r["target"] for r in records} == {'principal:User::"carol"'}
    assert all(r["actor"] and r["decision"] == "allow" for r in records)


def test_a_principal_nobody_knows_needs_force(server: Server) -> None:
    refused = revoke(server, kind="principal", target='User::"alcie"')
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("unknown-principal")
    assert 'User::"alcie"' in refused.json()["detail"]
    forced = revoke(server, kind="principal", target='User::"alcie"', force=True)
    assert forced.status_code == 201, forced.text
    known = revoke(server, kind="credential", target="jti-unknown-is-fine")
    assert known.status_code == 201, "credentials are not checked against the inventory"


@pytest.mark.parametrize(
    ("body", "pointer", "detail"),
    [
        ({"kind": "credential", "target": "t1", "expires": "soon"}, "/expires", "duration"),
        ({"kind": "credential", "target": "t2", "expires": "2001-01-01T00:00Z"}, "/expires", ""),
        ({"kind": "grant", "target": "g", "expires": "1h"}, "/expires", "cannot expire"),
        ({"kind": "credential", "target": "t3", "force": "yes"}, "/force", ""),
    ],
)
def test_bad_lifecycle_requests_are_422_naming_the_field(
    server: Server, body: dict[str, Any], pointer: str, detail: str
) -> None:
    response = revoke(server, **body)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert pointer in [e["pointer"] for e in errors]
    assert detail in response.json()["detail"]


def test_lifting_what_is_not_there_names_the_problem(server: Server) -> None:
    missing = lift(server, "0000dead")
    assert missing.status_code == 404 and "no revocation 0000dead" in missing.json()["detail"]
    assert lift(server, "not-hex!").status_code == 422
    made = revoke(server, kind="credential", target="jti-lift-no-reason").json()
    no_reason = lift(server, made["id"], None)
    assert no_reason.status_code == 422
    assert "/reason" in [e["pointer"] for e in no_reason.json()["errors"]]


# -- two replicas on one PostgreSQL -------------------------------------------------------------


def within(seconds: float, predicate: Any) -> float:
    """How long `predicate` took to hold; fails past `seconds` (plus slack to report it)."""
    started = time.monotonic()
    while not predicate():
        elapsed = time.monotonic() - started
        assert elapsed < seconds + 4, f"still not true after {elapsed:.1f}s"
        time.sleep(0.005)
    return time.monotonic() - started


@pytest.mark.postgres
def test_expiry_and_lift_reach_every_replica_and_expiry_is_recorded_once(
    tmp_path: Path,
) -> None:
    with (
        store_url("postgresql", tmp_path) as url,
        running_server(tmp_path / "a", url, SHOP, **HOUSEKEEPING) as a,
        running_server(tmp_path / "b", url, SHOP, **HOUSEKEEPING) as b,
    ):
        assert allowed(b, ALICE_LOGS) and allowed(b, CAROL_EXPORT)
        made = revoke(a, kind="principal", target='User::"alice"', expires="3s").json()
        assert within(1.0, lambda: not allowed(b, ALICE_LOGS)) < 1.0
        wait_for(lambda: allowed(a, ALICE_LOGS) and allowed(b, ALICE_LOGS), timeout=10)
        expired = wait_for(lambda: admin_records(a, "revocation:expire"), timeout=10)
        time.sleep(1)  # both replicas' housekeeping has run again since
        expired = admin_records(a, "revocation:expire")
        assert [r["details"]["revocation"] for r in expired] == [made["id"]], "recorded once"

        carol = revoke(a, kind="principal", target='User::"carol"', reason="phished").json()
        assert within(1.0, lambda: not allowed(b, CAROL_EXPORT)) < 1.0
        lifted = lift(b, carol["id"][:10], "false alarm")
        assert lifted.status_code == 200 and lifted.json()["lifted"] is True
        took = within(1.0, lambda: allowed(a, CAROL_EXPORT))
        assert took < 1.0, f"replica a still denied {took:.3f}s after the lift"
        records = admin_records(a, "revocation:write")
        (lift_record,) = [r for r in records if r["details"].get("step") == "lift"]
        assert lift_record["reason"] == "false alarm"
        assert lift_record["details"]["revocation"] == carol["id"]
        assert a.client.get("/readyz").status_code == 200
        assert b.client.get("/readyz").status_code == 200


# -- the CLI ------------------------------------------------------------------------------------


def cli(server: Server, *args: str) -> Any:
    return run_cli(*args, env={**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url})


def test_the_cli_revokes_until_an_expiry_and_lifts_by_prefix(server: Server) -> None:
    done = cli(
        server, "revoke", "principal", 'User::"dave"', "--reason", "on leave", "--expires", "1h"
    )
    assert done.returncode == 0, done.stderr
    assert 'revoked principal User::"dave" until' in done.stdout
    listed = json.loads(cli(server, "revocations", "--json").stdout)["revocations"]
    (dave,) = [r for r in listed if r["target"] == 'User::"dave"']
    expires = datetime.fromisoformat(dave["expires_at"]).timestamp()  # RFC 3339 in CLI JSON
    assert dave["expires_at"].endswith("Z") and expires == pytest.approx(time.time() + 3600, abs=60)
    table = cli(server, "revocations")
    assert table.returncode == 0 and dave["id"] in table.stdout, "the whole id, to type back"
    lifted = cli(server, "revoke", "lift", dave["id"][:8], "--reason", "back early")
    assert lifted.returncode == 0, lifted.stderr
    assert 'lifted the revocation of principal User::"dave"' in lifted.stdout
    assert dave["id"] in lifted.stdout
    again = cli(server, "revoke", "lift", dave["id"], "--reason", "twice")
    assert again.returncode == 0 and "(it already was)" in again.stdout
    history = json.loads(cli(server, "revocations", "--all", "--json").stdout)["revocations"]
    (ended,) = [r for r in history if r["id"] == dave["id"]]
    assert (ended["state"], ended["end_reason"]) == ("lifted", "back early")
    in_force = json.loads(cli(server, "revocations", "--json").stdout)["revocations"]
    assert dave["id"] not in [r["id"] for r in in_force]


def test_the_cli_warns_about_an_unknown_principal_and_needs_force(server: Server) -> None:
    refused = cli(server, "revoke", "principal", 'User::"daev"', "--reason", "typo")
    assert refused.returncode == 2
    assert 'warning: principal User::"daev" is not known' in refused.stderr
    assert "nothing was revoked" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    forced = cli(server, "revoke", "principal", 'User::"daev"', "--reason", "sure", "--force")
    assert forced.returncode == 0, forced.stderr
    assert 'revoked principal User::"daev"' in forced.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("revoke", "lift", "0000dead", "--reason", "r"), "no revocation id starts with"),
        (("revoke", "lift", "0000dead"), "--reason is required"),
        (("revoke", "credential", "j", "--reason", "r", "--expires", "soon"), "duration"),
        (("revoke", "lift", "0000dead", "--reason", "r", "--force"), "not to lifting"),
        (("revoke", "person", "x", "--reason", "r"), "KIND must be one of"),
    ],
)
def test_the_cli_names_what_is_wrong(server: Server, args: tuple[str, ...], message: str) -> None:
    done = cli(server, *args)
    assert done.returncode == 2, done.stdout
    assert message in done.stderr
    assert "Traceback" not in done.stderr
