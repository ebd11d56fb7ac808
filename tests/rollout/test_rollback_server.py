"""Automatic rollback through a real server (SQLite and PostgreSQL): a valid bundle (it loads;
its tests went with the misdeploy) wrongly forbids the busy refunds route. After the activation
the route's deny rate by that forbid jumps past governance.deny_jump_ratio with at least
deny_jump_min_denies denies: the alarm is raised (counter, ledger record, webhook) and, with
governance.auto_rollback on, the previous revision serves again; with it off, only the alarm."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.governance.test_governance_server import Webhook
from tests.rollout.test_rollout_server import admin_records
from tests.support import Server, running_server, wait_for

pytestmark = pytest.mark.slow

MIN_DENIES = 10
FREEZE = """@id("freeze-refunds")
@owner("payments")
@description("misdeploy: meant for the staging refunds API, matches production's")
forbid (principal, action == Action::"payments:refund", resource);
"""
CTX = {"mfa": True, "auth_age_seconds": 120, "risk_score": 10}


def refund(server: Server) -> bool:
    body = {
        "subject": {"type": "User", "id": "erin"},
        "action": {"name": "payments:refund"},
        "resource": {"type": "Api", "id": "payments.refund"},
        "context": {**CTX, "amount_cents": 1000},
    }
    return bool(server.client.post("/access/v1/evaluation", json=body).json()["decision"])


def stock(server: Server) -> bool:
    body = {
        "subject": {"type": "User", "id": "erin"},
        "action": {"name": "inventory:read"},
        "resource": {"type": "Api", "id": "inventory.stock"},
        "context": CTX,
    }
    return bool(server.client.post("/access/v1/evaluation", json=body).json()["decision"])


def revision(server: Server) -> str:
    return str(server.client.get("/v1/bundle", headers=server.admin).json()["active"]["revision"])


def jumps(server: Server) -> list[dict[str, Any]]:
    return list(server.client.get("/v1/bundle", headers=server.admin).json()["deny_jumps"])


def counter(server: Server, outcome: str) -> float:
    prefix = f'trustplane_deny_jumps_total{{outcome="{outcome}"}} '
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def misdeploy(server: Server, bundle: Path) -> str:
    """Traffic on a busy and a quiet route, then the bad bundle activated; its revision."""
    assert all(refund(server) for _ in range(40))
    for _ in range(5):
        stock(server)
    shutil.rmtree(bundle / "tests")
    (bundle / "freeze.cedar").write_text(FREEZE)
    reloaded = server.client.post("/v1/bundle/reload", headers=server.admin)
    assert reloaded.status_code == 200, reloaded.text
    return str(reloaded.json()["active"]["revision"])


def start(tmp_path: Path, url: str, bundle: Path, hook: Webhook, auto: bool) -> Any:
    return running_server(
        tmp_path / "state",
        url,
        bundle,
        policy__watch="false",
        governance__auto_rollback=json.dumps(auto),
        governance__deny_jump_min_denies=MIN_DENIES,
        governance__deny_jump_ratio=3,
        governance__webhook_url=hook.url,
        governance__interval_ms=100,
    )


def test_a_bad_activation_is_rolled_back(
    tmp_path: Path, database_url: str, shop_copy: Path, webhook: Webhook
) -> None:
    with start(tmp_path, database_url, shop_copy, webhook, auto=True) as server:
        good = revision(server)
        bad = misdeploy(server, shop_copy)
        assert bad != good
        answers = [refund(server) for _ in range(MIN_DENIES)]
        assert answers == [False] * MIN_DENIES  # denied until the jump is judged
        wait_for(lambda: revision(server) == good, timeout=30)
        assert refund(server), "the previous revision serves again"

        # The guard records the jump once the rollback is made: wait for its account.
        (jump,) = wait_for(lambda: jumps(server), timeout=30)
        assert jump["outcome"] == "rolled_back" and jump["rolled_back_to"] == good
        assert (jump["revision"], jump["policy"]) == (bad, "freeze-refunds")
        assert jump["route"] == 'Api::"payments.refund"'
        assert (jump["denies_before"], jump["decisions_before"]) == (0, 40)
        assert jump["denies_after"] == MIN_DENIES and jump["rate_after"] == 1.0
        assert counter(server, "rolled_back") == 1

        (record,) = admin_records(server, "bundle:deny-jump")
        assert record["actor"] == "trustplane:rollback-guard"
        assert record["target"] == f"bundle:{bad}"
        assert record["details"]["outcome"] == "rolled_back"
        assert (
            'freeze-refunds denied 10 of 10 decisions on Api::"payments.refund"'
            in (record["reason"])
        )
        history = server.client.get("/v1/bundle/revisions", headers=server.admin).json()
        newest = history["activations"][0]
        assert (newest["revision"], newest["reason"]) == (good, "rollback")
        assert newest["actor"] == "trustplane:rollback-guard"

        wait_for(lambda: "bundle.deny_jump" in webhook.events(), timeout=30)
        (body,) = [b for b in webhook.bodies if b["event"] == "bundle.deny_jump"]
        assert body["subject"]["revision"] == bad
        assert body["subject"]["outcome"] == "rolled_back"


def test_without_auto_rollback_only_the_alarm_is_raised(
    tmp_path: Path, database_url: str, shop_copy: Path, webhook: Webhook
) -> None:
    with start(tmp_path, database_url, shop_copy, webhook, auto=False) as server:
        bad = misdeploy(server, shop_copy)
        assert [refund(server) for _ in range(MIN_DENIES + 5)] == [False] * (MIN_DENIES + 5)
        (jump,) = wait_for(lambda: jumps(server), timeout=30)
        assert jump["outcome"] == "alarm_only" and jump["revision"] == bad
        assert revision(server) == bad, "the bundle keeps serving: nobody asked to roll back"
        assert counter(server, "alarm_only") == 1
        (record,) = admin_records(server, "bundle:deny-jump")
        assert "governance.auto_rollback is off" in record["reason"]
        wait_for(lambda: "bundle.deny_jump" in webhook.events(), timeout=30)
