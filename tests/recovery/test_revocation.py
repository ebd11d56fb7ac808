"""Revocation: the store and the in-memory list (SQLite and PostgreSQL), the admin API and CLI
of a real server, the enforcement path (a revoked JWT id is refused whatever its signature),
and two replicas on one PostgreSQL: revoked on one, denied by the other within a second."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from tests.conftest import SHOP, store_url
from tests.issuer import Key, claims
from tests.support import Server, authzen, run_cli, running_server
from trustplane.model import EntityRef
from trustplane.recovery.revocation import (
    RevocationError,
    RevocationKind,
    RevocationList,
    RevocationStore,
)

CTX = {"mfa": True, "auth_age_seconds": 60, "risk_score": 0}
LOGS = authzen(("User", "alice"), "ops:read-logs", ("Service", "checkout"), CTX)


# -- the store and the list --------------------------------------------------------------------


def test_revoke_is_idempotent_and_the_list_follows_the_store(engine: Engine) -> None:
    store = RevocationStore(engine)
    listed = RevocationList(store)
    listed.refresh()
    assert listed.epoch == 0 and listed.principal(EntityRef("User", "alice")) is None
    first, created = store.revoke(RevocationKind.PRINCIPAL, 'User::"alice"', "left", "ops")
    again, created_again = store.revoke(
        RevocationKind.PRINCIPAL, ' User::"alice" ', "left again", "ops"
    )
    assert created and not created_again
    assert again.id == first.id and again.reason == "left", "the first revocation stands"
    store.revoke(RevocationKind.CREDENTIAL, "jti-123", "token leaked", "ops")
    listed.refresh()
    assert listed.epoch == 2
    assert listed.principal(EntityRef("User", "alice")) is not None
    assert listed.principal(EntityRef("User", "bob")) is None
    assert listed.credential("jti-123") is not None
    assert listed.credential(None) is None


@pytest.mark.parametrize(
    ("kind", "target", "reason", "expected"),
    [
        (RevocationKind.PRINCIPAL, "alice", "r", "entity reference"),
        (RevocationKind.PRINCIPAL, "  ", "r", "empty"),
        (RevocationKind.CREDENTIAL, "x" * 600, "r", "512"),
        (RevocationKind.CREDENTIAL, "jti", "  ", "reason"),
    ],
)
def test_bad_revocations_are_refused_naming_the_problem(
    engine: Engine, kind: RevocationKind, target: str, reason: str, expected: str
) -> None:
    with pytest.raises(RevocationError, match=expected):
        RevocationStore(engine).revoke(kind, target, reason, "ops")


# -- a real server -----------------------------------------------------------------------------


def revoke(server: Server, kind: str, target: str, reason: str = "test") -> httpx.Response:
    return server.client.post(
        "/v1/revocations",
        json={"kind": kind, "target": target, "reason": reason},
        headers=server.admin,
    )


def test_a_revoked_principal_is_denied_before_any_policy(server: Server) -> None:
    carol = authzen(("User", "carol"), "audit:export", ("Dataset", "audit-log"), CTX)
    before = server.client.post("/access/v1/evaluation", json=carol).json()
    assert before["decision"] is True
    again = server.client.post("/access/v1/evaluation", json=carol).json()
    assert again["context"]["cached"] is True, "the allow is in the decision cache"
    created = revoke(server, "principal", 'User::"carol"', "laptop stolen")
    assert created.status_code == 201, created.text
    assert revoke(server, "principal", 'User::"carol"').status_code == 200, "idempotent"
    after = server.client.post("/access/v1/evaluation", json=carol).json()
    assert after["decision"] is False, "the cached allow does not survive the revocation"
    assert any("revoked" in e and "laptop stolen" in e for e in after["context"]["errors"])
    assert after["context"]["revocation_epoch"] > before["context"]["revocation_epoch"]


def test_a_revoked_token_is_refused_whatever_its_signature(server: Server, key: Key) -> None:
    token = key.sign(claims(sub="alice", jti="tok-42", amr=["pwd", "hwk"]))
    headers = {
        "authorization": f"Bearer {token}",
        "x-original-uri": "/ops/services/checkout/logs",
        "x-original-method": "GET",
    }
    assert server.client.get("/v1/forward-auth", headers=headers).status_code == 200
    assert revoke(server, "credential", "tok-42", "leaked in a log").status_code == 201
    refused = server.client.get("/v1/forward-auth", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["reasons"] == ["credential_revoked"]
    assert 'error_description="credential_revoked"' in refused.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"kind": "person", "target": 'User::"x"', "reason": "r"}, "/kind"),
        ({"kind": "principal", "target": "x", "reason": "r"}, "/target"),
        ({"kind": "principal", "target": 'User::"x"'}, "/reason"),
        ({"kind": "principal", "target": 'User::"x"', "reason": "r", "extra": 1}, "/extra"),
    ],
)
def test_bad_revocation_requests_are_422_naming_the_field(
    server: Server, body: dict[str, object], pointer: str
) -> None:
    response = server.client.post("/v1/revocations", json=body, headers=server.admin)
    assert response.status_code == 422, response.text
    assert pointer in [e["pointer"] for e in response.json()["errors"]]


def test_revoking_needs_the_admin_token(server: Server) -> None:
    response = server.client.post(
        "/v1/revocations", json={"kind": "credential", "target": "t", "reason": "r"}
    )
    assert response.status_code == 401


def test_cli_revokes_and_lists(server: Server) -> None:
    env = {**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url}
    done = run_cli("revoke", "principal", 'Service::"reconciler"', "--reason", "retired", env=env)
    assert done.returncode == 0, done.stderr
    assert "revoked principal" in done.stdout
    missing_reason = run_cli("revoke", "credential", "abc", env=env)
    assert missing_reason.returncode == 2 and "--reason" in missing_reason.stderr
    listed = run_cli("revocations", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    targets = [r["target"] for r in json.loads(listed.stdout)["revocations"]]
    assert 'Service::"reconciler"' in targets


# -- two replicas on one PostgreSQL -------------------------------------------------------------


@pytest.mark.postgres
def test_a_revocation_on_one_replica_is_enforced_by_the_other_within_a_second(
    tmp_path: Path,
) -> None:
    with (
        store_url("postgresql", tmp_path) as url,
        running_server(tmp_path / "a", url, SHOP, policy__watch="false") as a,
        running_server(tmp_path / "b", url, SHOP, policy__watch="false") as b,
    ):
        assert b.client.post("/access/v1/evaluation", json=LOGS).json()["decision"]
        started = time.monotonic()
        assert revoke(a, "principal", 'User::"alice"', "offboarded").status_code == 201
        while True:
            answer = b.client.post("/access/v1/evaluation", json=LOGS).json()
            elapsed = time.monotonic() - started
            if answer["decision"] is False:
                break
            assert elapsed < 5, "replica b still allows 5 s after the revocation"
            time.sleep(0.005)
        assert elapsed < 1.0, f"replica b denied after {elapsed:.3f}s"
        assert b.client.get("/readyz").status_code == 200
