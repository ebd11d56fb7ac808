"""Bundle lifecycle on a running server: reload on change, SIGHUP and API; refusal keeps the
last good bundle; rollback; restore from the store at startup."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support import Server, run_cli, running_server, wait_for

pytestmark = pytest.mark.slow

REFUND = {
    "subject": {"type": "User", "id": "erin"},
    "action": {"name": "payments:refund"},
    "resource": {"type": "Api", "id": "payments.refund"},
    "context": {"mfa": True, "auth_age_seconds": 120, "risk_score": 10},
}
POLICY_FILE = "humans.cedar"


def revision(server: Server) -> str:
    return str(server.client.get("/readyz").json()["revision"])


def status(server: Server) -> dict[str, Any]:
    return dict(server.client.get("/v1/bundle", headers=server.admin).json())


def edit_description(bundle: Path, marker: str) -> None:
    """A change that keeps every test passing: a policy description."""
    path = bundle / POLICY_FILE
    text = path.read_text()
    new = re.sub(
        r'@description\("([^"]*)"\)', lambda m: f'@description("{m[1]} {marker}")', text, count=1
    )
    assert new != text
    path.write_text(new)


def break_bundle(bundle: Path) -> None:
    path = bundle / POLICY_FILE
    path.write_text(path.read_text() + '\n@id("broken")\npermit (principal, action, resource\n')


def test_file_change_reloads_and_broken_change_keeps_last_good(
    tmp_path: Path, database_url: str, shop_copy: Path
) -> None:
    assert (shop_copy / POLICY_FILE).exists()
    with running_server(tmp_path / "state", database_url, shop_copy) as server:
        first = revision(server)
        edit_description(shop_copy, "(edited)")
        second = wait_for(lambda: (r := revision(server)) != first and r, timeout=15)
        assert "(edited)" in str(status(server)["active"]["policies"])

        break_bundle(shop_copy)
        wait_for(lambda: status(server)["last_error"], timeout=15)
        problems = status(server)["last_error"]
        assert any(p["file"] == POLICY_FILE and p["line"] for p in problems)
        assert revision(server) == second, "a broken bundle must never become active"
        answer = server.client.post("/access/v1/evaluation", json=REFUND).json()
        assert answer["decision"] is True and answer["context"]["revision"] == second
        metrics = server.client.get("/metrics").text
        assert 'trustplane_bundle_loads_total{result="failure"}' in metrics


def test_sighup_and_api_reload_with_watch_off(
    tmp_path: Path, database_url: str, shop_copy: Path
) -> None:
    with running_server(
        tmp_path / "state", database_url, shop_copy, policy__watch="false"
    ) as server:
        first = revision(server)
        edit_description(shop_copy, "(hup)")
        server.process.send_signal(signal.SIGHUP)
        second = wait_for(lambda: (r := revision(server)) != first and r, timeout=15)

        edit_description(shop_copy, "(api)")
        reloaded = server.client.post("/v1/bundle/reload", headers=server.admin)
        assert reloaded.status_code == 200
        third = reloaded.json()["active"]["revision"]
        assert third not in (first, second) and revision(server) == third

        break_bundle(shop_copy)
        refused = server.client.post("/v1/bundle/reload", headers=server.admin)
        assert refused.status_code == 422
        assert any(POLICY_FILE in e["detail"] for e in refused.json()["errors"])
        assert revision(server) == third


def test_rollback_and_activate_stored_revisions(
    tmp_path: Path, database_url: str, shop_copy: Path
) -> None:
    with running_server(
        tmp_path / "state", database_url, shop_copy, policy__watch="false"
    ) as server:
        first = revision(server)
        edit_description(shop_copy, "(v2)")
        second = server.client.post("/v1/bundle/reload", headers=server.admin).json()
        second_rev = second["active"]["revision"]

        rolled = server.client.post("/v1/bundle/rollback", headers=server.admin)
        assert rolled.status_code == 200
        assert revision(server) == first

        by_prefix = server.client.post(
            "/v1/bundle/activate", json={"revision": second_rev[:10]}, headers=server.admin
        )
        assert by_prefix.status_code == 200 and revision(server) == second_rev

        unknown = server.client.post(
            "/v1/bundle/activate", json={"revision": "ffffffffff"}, headers=server.admin
        )
        assert unknown.status_code == 409 and "unknown" in unknown.json()["detail"]

        history = server.client.get("/v1/bundle/revisions", headers=server.admin).json()
        reasons = [a["reason"] for a in history["activations"]]
        assert reasons[:3] == ["api", "rollback", "api"] and reasons[-1] == "startup"

        cli = run_cli("policy", "rollback", "--json", env=server.env)
        assert cli.returncode == 0, cli.stderr
        assert revision(server) == first


def test_startup_with_broken_bundle_restores_last_activated_revision(
    tmp_path: Path, database_url: str, shop_copy: Path
) -> None:
    state = tmp_path / "state"
    with running_server(state, database_url, shop_copy, policy__watch="false") as server:
        good = revision(server)
    break_bundle(shop_copy)
    with running_server(state, database_url, shop_copy, policy__watch="false") as server:
        assert revision(server) == good
        refused = status(server)["last_error"]
        assert any(p["file"] == POLICY_FILE for p in refused), "why the directory is not serving"
        assert "refused" in server.log()
        assert server.client.post("/access/v1/evaluation", json=REFUND).json()["decision"]


def test_no_bundle_at_all_is_not_ready_and_denies(
    tmp_path: Path, database_url: str, shop_copy: Path
) -> None:
    break_bundle(shop_copy)
    with running_server(
        tmp_path / "state", database_url, shop_copy, policy__watch="false", wait_path="/healthz"
    ) as server:
        assert server.client.get("/readyz").status_code == 503
        answer = server.client.post("/access/v1/evaluation", json=REFUND).json()
        assert answer["decision"] is False
        assert "no active policy bundle" in answer["context"]["errors"][0]
        assert status(server)["last_error"]
