"""`trustplane serve` with several worker processes: one ledger for all of them, metrics summed
across them, and a bundle activated through one worker served by every worker."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.decision.test_bundle_lifecycle import edit_description
from tests.support import Server, ledger_rows, run_cli, running_server, wait_for

pytestmark = pytest.mark.slow

WORKERS = 2


def refund(n: int) -> dict[str, Any]:
    return {
        "subject": {"type": "User", "id": "erin"},
        "action": {"name": "payments:refund"},
        "resource": {"type": "Api", "id": "payments.refund"},
        "context": {"mfa": True, "auth_age_seconds": 120, "risk_score": 10, "amount_cents": n},
    }


def fresh(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request on a new connection, so the kernel may hand it to any worker."""
    return httpx.request(method, server.url + path, timeout=10, **kwargs)


def revisions_seen(server: Server, tries: int = 12) -> set[str]:
    return {fresh(server, "GET", "/readyz").json()["revision"] for _ in range(tries)}


def decisions_total(server: Server) -> float:
    text = fresh(server, "GET", "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("trustplane_decisions_total{") and 'mode="enforced"' in line
    )


def test_workers_share_one_ledger_metrics_and_active_bundle(
    tmp_path: Path, database_url: str, shop_copy: Path
) -> None:
    state = tmp_path / "state"
    with running_server(
        state,
        database_url,
        shop_copy,
        policy__watch="false",
        # The rollback below leaves the directory ahead of the active revision: drift, which
        # the periodic check would record (tests/rollout/test_replay_server.py); this test
        # counts every ledger record.
        policy__drift_check_seconds="0",
        server__workers=WORKERS,
    ) as server:
        # A worker is whole once its ext_authz gRPC listens (it starts after HTTP listens).
        wait_for(lambda: server.log().count("ext_authz gRPC on") == WORKERS, timeout=30)
        pids = set(re.findall(r"Started server process \[(\d+)\]", server.log()))
        assert len(pids) == WORKERS, server.log()

        ids = [
            fresh(server, "POST", "/access/v1/evaluation", json=refund(n)).json()["context"][
                "decision_id"
            ]
            for n in range(40)
        ]
        assert len(set(ids)) == len(ids)
        # Counters from both workers are summed, whichever worker answers /metrics.
        wait_for(lambda: decisions_total(server) == len(ids))

        first = revisions_seen(server)
        assert len(first) == 1
        edit_description(shop_copy, "(workers)")
        reloaded = fresh(server, "POST", "/v1/bundle/reload", headers=server.admin)
        assert reloaded.status_code == 200, reloaded.text
        second = reloaded.json()["active"]["revision"]
        assert {second} != first
        wait_for(lambda: revisions_seen(server) == {second}, timeout=15)

        rolled = fresh(server, "POST", "/v1/bundle/rollback", headers=server.admin)
        assert rolled.status_code == 200, rolled.text
        wait_for(lambda: revisions_seen(server) == first, timeout=15)
        history = fresh(server, "GET", "/v1/bundle/revisions", headers=server.admin).json()
        reasons = [a["reason"] for a in history["activations"]]
        assert reasons == ["rollback", "api", "startup"], "the supervisor records startup once"

        # Batch durability commits within ledger.flush_interval_ms: let the last answers (the
        # history read included) reach the store before a worker is killed with them in its queue.
        wait_for(lambda: ledger_rows(database_url) == len(ids) + 3, timeout=15)

        # A worker that dies is replaced; the new one serves the rollback, not the directory.
        victim = int(sorted(pids)[0])
        os.kill(victim, signal.SIGKILL)
        # A new worker imports the whole app before it says so: as long as the first start.
        wait_for(
            lambda: len(re.findall(r"Started server process", server.log())) > WORKERS, timeout=30
        )
        wait_for(lambda: server.log().count("ext_authz gRPC on") > WORKERS, timeout=30)
        assert revisions_seen(server, tries=20) == first

        # SIGHUP to the supervisor reloads the directory for every worker.
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: revisions_seen(server) == {second}, timeout=15)

    assert "Traceback" not in server.log()
    report = json.loads(run_cli("audit", "verify", "--json", env=server.env).stdout)
    assert report["ok"] is True and report["problems"] == []
    # Every answer from every worker, and the three admin calls (reload, rollback, the history).
    assert report["records"] == len(ids) + 3, "every answer from every worker is in the ledger"
    assert report["records_after_last_checkpoint"] == 0
