"""`trustplane decisions` and `trustplane audit verify` from anywhere: against a server (`--url`,
with only an admin token, from a directory with no store) and against the local store, with the
same filters, reason codes, determining policies and verification report; and a missing store
explained without sending people who are in the wrong directory to `init`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from tests.conftest import SHOP
from tests.support import (
    Server,
    authzen,
    newest_checkpoint_size,
    run_cli,
    running_server,
    wait_for,
)
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions

pytestmark = pytest.mark.slow

FRESH = {"mfa": True, "auth_age_seconds": 120, "risk_score": 10}
ERIN_REFUND = (("User", "erin"), "payments:refund", ("Api", "payments.refund"))
FORBIDDING = "require-fresh-mfa-for-tier0-and-admin"


@pytest.fixture(scope="module")
def served(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict[str, str]]]:
    """A server with decisions of each kind: (server, {decision id: what it was})."""
    with running_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        SHOP,
        policy__watch="false",
        ledger__durability="sync",
        ledger__checkpoint_interval_ms=300,
        server__trusted_proxies=["127.0.0.1/32"],
        pep__identity_header="X-Forwarded-User",
    ) as server:
        made: dict[str, str] = {}
        for name, body in (
            ("allow", authzen(*ERIN_REFUND, FRESH)),
            ("forbid", authzen(*ERIN_REFUND, {**FRESH, "mfa": False})),
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
            made[response.headers["x-trustplane-decision-id"]] = name
        yield server, made


def remote(server: Server, tmp_path: Path, *args: str, code: int = 0) -> str:
    """`trustplane ARGS --url` from an empty directory, with only the admin token."""
    where = tmp_path / "elsewhere"
    where.mkdir(exist_ok=True)
    result = run_cli(
        *args, "--url", server.url, cwd=where, env={"TRUSTPLANE_CLI__ADMIN_TOKEN": server.token}
    )
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout if code == 0 or "--json" in args else result.stderr


def local(server: Server, *args: str, code: int = 0, **env: str) -> str:
    """`trustplane ARGS` on the server's store."""
    result = run_cli(*args, env={**server.env, **env})
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout if code == 0 or "--json" in args else result.stderr


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_decisions_show_reason_codes_and_policies_from_a_server_and_the_store(
    served: tuple[Server, dict[str, str]], tmp_path: Path
) -> None:
    server, made = served
    args = ("decisions", "--kind", "decision", "--limit", "50", "--json")
    for rows in (lines(remote(server, tmp_path, *args)), lines(local(server, *args))):
        codes = {made[r["decision_id"]]: r["reason_code"] for r in rows if r["decision_id"] in made}
        assert codes == {
            "allow": "policy_permits",
            "forbid": "policy_forbids",
            "missing": "credential_missing",
            "token": "token_unknown_issuer",
            "unrouted": "no_route_matched",
        }
        forbid = next(r for r in rows if made.get(r["decision_id"]) == "forbid")
        assert forbid["determining_policies"] == [FORBIDDING]
        assert forbid["time"].endswith("Z")  # RFC 3339 in JSON

    table = remote(server, tmp_path, "decisions", "--kind", "decision", "--limit", "50")
    for code in ("credential_missing", "no_route_matched", "token_unknown_issuer"):
        assert code in table, table
    for decision_id in made:  # the decision id, folded: its first line is a prefix to type back
        assert decision_id[:18] in table and decision_id[18:] in table, table
    table = " ".join(table.split())
    assert "policy_forbids" in table
    assert FORBIDDING[:12] in table  # the determining policy (folded to fit 80 columns)


def test_filters_are_the_same_remotely_and_locally(
    served: tuple[Server, dict[str, str]], tmp_path: Path
) -> None:
    server, made = served
    hour_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    in_an_hour = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    cases: list[tuple[tuple[str, ...], list[str]]] = [
        (("--action", "payments:refund"), ["allow", "forbid"]),
        (("--resource", 'Api::"payments.refund"', "--decision", "deny"), ["forbid"]),
        (("--since", "1h", "--action", "payments:refund"), ["allow", "forbid"]),
        (("--since", hour_ago, "--until", in_an_hour, "--principal", "erin"), ["allow", "forbid"]),
        (("--since", in_an_hour), []),
        (("--until", "2000-01-01T00:00:00Z"), []),
    ]
    for filters, expected in cases:
        args = ("decisions", "--kind", "decision", *filters, "--json")
        for rows in (lines(remote(server, tmp_path, *args)), lines(local(server, *args))):
            assert sorted(made[r["decision_id"]] for r in rows) == expected, filters


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--since", "yesterday"), "--since"),
        (("--until", "2026-12-03T10:00:00"), "--until"),
        (("--since", "1h", "--until", "2h"), "--until"),
        (("--kind", "audit"), "--kind"),
        (("--decision", "maybe"), "--decision"),
    ],
)
def test_a_bad_filter_is_a_cli_error_naming_the_option(
    served: tuple[Server, dict[str, str]], tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    server, _ = served
    for message in (
        remote(server, tmp_path, "decisions", *args, code=2),
        local(server, "decisions", *args, code=2),
    ):
        assert message.startswith(f"error: {named}: "), message
        assert len(message.strip().splitlines()) == 1, message


def test_audit_verify_from_a_server_reports_what_the_store_verify_reports(
    served: tuple[Server, dict[str, str]], tmp_path: Path
) -> None:
    server, made = served
    wait_for(lambda: newest_checkpoint_size(server.env["TRUSTPLANE_STORE__URL"]))
    far = json.loads(remote(server, tmp_path, "audit", "verify", "--json"))
    near = json.loads(local(server, "audit", "verify", "--json"))
    assert far["ok"] and far["intact"] and near["ok"] and near["intact"]
    assert set(near) == set(far)  # the same report, saying where it came from
    assert far["source"] == server.url and far["verifier_keys_from"] == "server"
    assert near["verifier_keys_from"] == "state_dir"
    assert far["records"] >= len(made) and far["checkpoints"] >= 1
    people = remote(server, tmp_path, "audit", "verify")
    assert "ledger intact" in people and "verifier keys from the server" in " ".join(people.split())

    engine = create_store_engine(server.env["TRUSTPLANE_STORE__URL"])
    victim = next(i for i, name in made.items() if name == "forbid")
    try:
        with engine.begin() as connection:
            connection.execute(
                update(decisions).where(decisions.c.decision_id == victim).values(decision="allow")
            )
        far = json.loads(remote(server, tmp_path, "audit", "verify", "--json", code=1))
    finally:
        with engine.begin() as connection:
            connection.execute(
                update(decisions).where(decisions.c.decision_id == victim).values(decision="deny")
            )
        engine.dispose()
    assert not far["intact"]
    assert [m["decision_id"] for m in far["column_mismatches"]] == [victim]


def test_a_missing_store_in_the_wrong_directory_points_to_url_not_init(tmp_path: Path) -> None:
    stray = tmp_path / "stray"
    stray.mkdir()
    for args in (("decisions",), ("audit", "verify")):
        result = run_cli(*args, cwd=stray)
        assert result.returncode == 2, result.stderr
        message = result.stderr
        assert "Traceback" not in message
        assert str(stray / ".trustplane" / "trustplane.db") in message  # where it looked
        assert "--url" in message and "TRUSTPLANE_STATE_DIR" in message
        assert "trustplane init" not in message

    project = tmp_path / "project"
    project.mkdir()
    (project / "trustplane.toml").write_text('[policy]\nbundle_dir = "policies"\n')
    result = run_cli("decisions", cwd=project)
    assert result.returncode == 2
    assert "trustplane init" in result.stderr
    assert str(project / ".trustplane" / "trustplane.db") in result.stderr
