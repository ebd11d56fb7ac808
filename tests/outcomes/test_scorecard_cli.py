"""`trustplane scorecard` through the real CLI: against a served shop (`--url`, admin API) and
on its store, in every format, with its snapshot, and refusing what it cannot compute."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SHOP
from tests.support import Server, authzen, run_cli, running_server

pytestmark = pytest.mark.slow

FRESH = {"mfa": True, "auth_age_seconds": 120, "risk_score": 10}


@pytest.fixture(scope="module")
def served(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        SHOP,
        policy__watch="false",
        ledger__durability="sync",
        ledger__checkpoint_interval_ms=300,
    ) as server:
        for mfa in (True, True, False):  # alice, a standing sre, queries a database
            body = authzen(
                ("User", "alice"),
                "db:query",
                ("Database", "orders-db-staging"),
                {**FRESH, "mfa": mfa},
            )
            assert server.client.post("/access/v1/evaluation", json=body).status_code == 200
        yield server


def cli(server: Server, tmp_path: Path, *args: str, remote: bool, code: int = 0) -> str:
    if remote:
        where = tmp_path / "elsewhere"
        where.mkdir(exist_ok=True)
        result = run_cli(
            *args,
            "--url",
            server.url,
            cwd=where,
            env={"TRUSTPLANE_CLI__ADMIN_TOKEN": server.token, "COLUMNS": "80"},
        )
    else:
        result = run_cli(*args, env={**server.env, "COLUMNS": "80"})
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout if code == 0 else result.stderr


@pytest.mark.parametrize("remote", [True, False], ids=["server", "store"])
def test_the_month_from_a_server_and_the_store(
    served: Server, tmp_path: Path, remote: bool
) -> None:
    card = json.loads(cli(served, tmp_path, "scorecard", "--json", remote=remote))
    figures = {f["key"]: f for f in card["figures"]}
    assert figures["standing_privilege"]["verdict"] == "not met"  # alice and carol standing
    assert 'User::"alice" in Role::"sre"' in figures["standing_privilege"]["evidence"]
    # the shop's sre policies ask for MFA, so the refused third query is no privileged action
    assert figures["mfa_privileged"]["evidence"].startswith("2 of 2 ")
    assert figures["mfa_privileged"]["verdict"] == "met"
    assert figures["lateral_movement"]["verdict"] == "not measured"
    assert all(f["query"] or f["to_measure"] for f in card["figures"])
    assert {s["pillar"] for s in card["stages"]} >= {"Identity", "Devices", "Data"}

    table = cli(served, tmp_path, "scorecard", remote=remote)
    assert "(M8)" in table and "not met" in table
    assert [line for line in table.splitlines() if len(line) > 80] == []

    markdown = cli(served, tmp_path, "scorecard", "--format", "md", remote=remote)
    assert markdown.startswith("# Zero Trust scorecard ") and "| figure | value |" in markdown

    page = tmp_path / "scorecard.html"
    cli(served, tmp_path, "scorecard", "--format", "html", "-o", str(page), remote=remote)
    assert "<svg" in page.read_text() or "one month" in page.read_text()


def test_snapshots_and_refusals(served: Server, tmp_path: Path) -> None:
    cli(served, tmp_path, "scorecard", "--save", "--period", "2026-10", "--json", remote=True)
    listed = served.client.get("/v1/scorecard?period=2026-10", headers=served.admin).json()
    assert listed["period"] == "2026-10"

    error = cli(served, tmp_path, "scorecard", "--period", "2026-13", remote=False, code=2)
    assert "YYYY-MM" in error
    refused = served.client.get("/v1/scorecard?period=11/2026", headers=served.admin)
    assert refused.status_code == 400 and "YYYY-MM" in refused.json()["detail"]
    shape = served.client.get("/v1/scorecard?format=pdf", headers=served.admin)
    assert shape.status_code == 400
    assert served.client.get("/v1/scorecard").status_code == 401
