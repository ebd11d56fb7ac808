"""Governance through a real server: people sign in to the admin API with OIDC tokens, every
admin action is authorized by the admin Cedar policies and recorded in the ledger, grants and
exceptions change answers at once and stop when revoked, notifications reach a webhook, and two
replicas on one PostgreSQL agree within a second."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SHOP, store_url
from tests.issuer import Jwks, Key, issuer_settings, user_token
from tests.support import Server, authzen, run_cli, running_server, wait_for

CTX = {"mfa": True, "auth_age_seconds": 60, "risk_score": 10}
BOB_LOGS = authzen(("User", "bob"), "ops:read-logs", ("Service", "checkout"), CTX)
SRE = 'Role::"sre"'


class Webhook:
    """A webhook receiver on loopback that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                hook.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [b["event"] for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def governed(state: Path, url: str, issuer: Jwks, hook: Webhook | None = None, **extra: Any) -> Any:
    state.mkdir(parents=True, exist_ok=True)
    bad = state / "bad-networks.txt"
    bad.write_text("203.0.113.0/24  # a scanner's network\n")
    # The loopback test client (pep.auth off: the PEP `anonymous`) may supply trust inputs.
    trust = {"trusted_peps": ["anonymous"], "bad_networks_files": [str(bad)]}
    settings: dict[str, Any] = {
        "trust": json.dumps(trust),
        "policy__watch": "false",
        "pep__issuers": issuer_settings(issuer),
        "admin__issuers": issuer_settings(issuer),
        "governance__interval_ms": 100,
        "server__trusted_proxies": ["127.0.0.1/32"],  # an mTLS-terminating proxy on loopback
        **extra,
    }
    if hook is not None:
        settings["governance__webhook_url"] = hook.url
    return running_server(state, url, SHOP, **settings)


@pytest.fixture(scope="module")
def server(
    module_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    issuer: Jwks,
    webhook: Webhook,
) -> Iterator[Server]:
    with governed(tmp_path_factory.mktemp("state"), module_database_url, issuer, webhook) as srv:
        yield srv


def as_user(key: Key, name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {user_token(key, name)}"}


def decide(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    response = server.client.post("/access/v1/evaluation", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def ask(server: Server, key: Key, who: str, role: str = SRE, **body: Any) -> httpx.Response:
    payload = {"role": role, "duration": "1h", "reason": "INC-1 checkout", "ticket": "INC-1"}
    payload.update(body)
    return server.client.post("/v1/access/requests", json=payload, headers=as_user(key, who))


# -- JIT access over the API -------------------------------------------------------------------


def test_an_approved_grant_changes_answers_at_once_and_its_revoke_ends_it(
    server: Server, key: Key, webhook: Webhook
) -> None:
    assert decide(server, BOB_LOGS)["decision"] is False
    asked = ask(server, key, "bob")
    assert asked.status_code == 201, asked.text
    request_id = asked.json()["id"]
    assert asked.json()["principal"] == 'User::"bob"', "the requester is who signed in"
    approved = server.client.post(
        f"/v1/access/requests/{request_id}/approve",
        json={"comment": "on call"},
        headers=as_user(key, "alice"),
    )
    assert approved.status_code == 200, approved.text
    grant = approved.json()["grant"]
    assert grant["principal"] == 'User::"bob"' and grant["role"] == SRE
    answer = decide(server, BOB_LOGS)
    assert answer["decision"] is True
    assert answer["context"]["grants"] == [grant["id"]]

    activity = wait_for(
        lambda: server.client.get(
            f"/v1/access/grants/{grant['id']}/activity", headers=as_user(key, "bob")
        ).json()["decisions"]
    )
    assert activity[0]["grants"] == [grant["id"]] and activity[0]["decision"] == "allow"

    body = {"kind": "grant", "target": grant["id"], "reason": "incident over"}
    revoked = server.client.post("/v1/revocations", json=body, headers=as_user(key, "carol"))
    assert revoked.status_code == 201, revoked.text
    again = server.client.post("/v1/revocations", json=body, headers=as_user(key, "carol"))
    assert again.status_code == 200, "revoking twice is the same revocation"
    after = decide(server, BOB_LOGS)
    assert after["decision"] is False and "grants" not in after["context"]
    assert after["context"]["revocation_epoch"] > answer["context"]["revocation_epoch"]
    wait_for(
        lambda: {"access.requested", "access.approved", "access.revoked"} <= set(webhook.events())
    )


def test_the_admin_api_authenticates_and_authorizes_every_caller(server: Server, key: Key) -> None:
    assert server.client.get("/v1/access/requests").status_code == 401
    forged = server.client.get("/v1/bundle", headers={"authorization": "Bearer not-a-jwt"})
    assert forged.status_code == 401
    assert server.client.get("/v1/bundle", headers=server.admin).status_code == 200, "bootstrap"
    assert server.client.get("/v1/bundle", headers=as_user(key, "bob")).status_code == 200
    reload = server.client.post("/v1/bundle/reload", headers=as_user(key, "bob"))
    assert reload.status_code == 403, reload.text
    assert "bundle:write" in reload.json()["detail"]

    asked = ask(server, key, "bob", reason="deploy", ticket="CHG-9")
    assert asked.status_code == 201, asked.text
    request_id = asked.json()["id"]
    own = server.client.post(
        f"/v1/access/requests/{request_id}/approve", json={}, headers=as_user(key, "bob")
    )
    assert own.status_code == 403 and "no-self-approval" in own.json()["detail"]
    boot = server.client.post(
        f"/v1/access/requests/{request_id}/approve", json={}, headers=server.admin
    )
    assert boot.status_code == 403 and "bootstrap token" in boot.json()["detail"]
    outsider = server.client.post(
        f"/v1/access/requests/{request_id}/approve", json={}, headers=as_user(key, "dave")
    )
    assert outsider.status_code == 403 and "approvers" in outsider.json()["detail"]
    denied = server.client.post(
        f"/v1/access/requests/{request_id}/deny",
        json={"reason": "not on call"},
        headers=as_user(key, "alice"),
    )
    assert denied.status_code == 200 and denied.json()["request"]["status"] == "denied"
    late = server.client.post(
        f"/v1/access/requests/{request_id}/approve", json={}, headers=as_user(key, "alice")
    )
    assert late.status_code == 409 and "already denied" in late.json()["detail"]

    # Who, what and why: refusals and decisions on requests are in the ledger.
    def admin_records() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = server.client.get(
            "/v1/decisions", params={"policy": "admin:access:approve"}, headers=server.admin
        ).json()["decisions"]
        return rows

    records = wait_for(lambda: len(admin_records()) >= 3 and admin_records())
    refused = [r for r in records if r["decision"] == "deny"]
    assert {r["actor"] for r in refused} >= {'User::"bob"'}
    deny_rows = server.client.get(
        "/v1/decisions", params={"policy": "admin:access:deny"}, headers=server.admin
    ).json()["decisions"]
    assert deny_rows[0]["actor"] == 'User::"alice"' and deny_rows[0]["reason"] == "not on call"


@pytest.mark.parametrize(
    ("body", "pointer", "status"),
    [
        ({"duration": "forever"}, "/duration", 422),
        ({"duration": "9h"}, "/duration", 422),
        ({"role": 'Role::"root"'}, "/role", 422),
        ({"role": "root"}, "/role", 422),
        ({"extra": 1}, "/extra", 422),
    ],
)
def test_bad_access_requests_are_4xx_naming_the_field(
    server: Server, key: Key, body: dict[str, Any], pointer: str, status: int
) -> None:
    response = ask(server, key, "bob", **body)
    assert response.status_code == status, response.text
    assert pointer in [e["pointer"] for e in response.json()["errors"]]


def test_unknown_ids_are_404(server: Server, key: Key) -> None:
    alice = as_user(key, "alice")
    for path, body in (
        ("/v1/access/requests/nope/approve", {}),
        ("/v1/access/grants/nope/revoke", {"reason": "r"}),
        ("/v1/break-glass/nope/review", {"notes": "n"}),
        ("/v1/exceptions/nope/approve", {}),
    ):
        response = server.client.post(path, json=body, headers=alice)
        assert response.status_code == 404, (path, response.text)


# -- break-glass and exceptions ----------------------------------------------------------------


def test_break_glass_over_the_api_is_loud_and_reviewed_by_another(
    server: Server, key: Key, webhook: Webhook
) -> None:
    db = authzen(("User", "alice"), "db:admin", ("Database", "payments-db-prod"), CTX)
    over = server.client.post(
        "/v1/break-glass",
        json={"profile": "payments-db", "reason": "INC-5", "duration": "2h"},
        headers=as_user(key, "alice"),
    )
    assert over.status_code == 422 and "hard cap" in over.json()["detail"]
    opened = server.client.post(
        "/v1/break-glass",
        json={"profile": "payments-db", "reason": "INC-5 payments db locked"},
        headers=as_user(key, "alice"),
    )
    assert opened.status_code == 201, opened.text
    session = opened.json()["session"]
    answer = decide(server, db)
    assert answer["decision"] is True and session["id"] in answer["context"]["grants"]
    metrics = server.client.get("/metrics").text
    assert 'trustplane_break_glass_opened_total{profile="payments-db"} 1.0' in metrics
    wait_for(lambda: "break_glass.opened" in webhook.events())
    assert "BREAK-GLASS" in server.log()

    own = server.client.post(
        f"/v1/break-glass/{session['id']}/review",
        json={"notes": "fine"},
        headers=as_user(key, "alice"),
    )
    assert own.status_code == 403
    listed = server.client.get("/v1/break-glass", headers=as_user(key, "carol")).json()
    assert listed["overdue"] == 0 and listed["sessions"][0]["session"]["id"] == session["id"]
    closed = server.client.post(
        f"/v1/break-glass/{session['id']}/review",
        json={"notes": "lock cleared, runbook updated"},
        headers=as_user(key, "carol"),
    )
    assert closed.status_code == 200 and closed.json()["review"]["closed_by"] == 'User::"carol"'


def test_an_approved_exception_lets_a_flow_through_one_forbid(server: Server, key: Key) -> None:
    # The nightly reconciliation reads invoices from a network listed as known-bad (a false
    # positive): the trust plane scores it 80, which trips forbid-high-risk.
    inputs = {"source_ip": "203.0.113.9", "workload": True}
    export = authzen(
        ("Service", "reconciler"),
        "billing:read",
        ("Api", "billing.invoices"),
        {"mfa": False, "auth_age_seconds": 1800, "trust": {"inputs": inputs}},
    )
    denied = decide(server, export)
    assert denied["decision"] is False
    assert denied["context"]["trust"]["summary"] == "risk 80: bad_network +80"
    body = {
        "policy": "forbid-high-risk",
        "principal": 'Service::"reconciler"',
        "action": "billing:read",
        "owner": "finance",
        "reason": "scoring false positive during the migration",
        "ticket": "FIN-2300",
        "duration": "3d",
    }
    created = server.client.post("/v1/exceptions", json=body, headers=as_user(key, "alice"))
    assert created.status_code == 201, created.text
    exception_id = created.json()["id"]
    assert decide(server, export)["decision"] is False, "pending exceptions do not apply"
    approved = server.client.post(
        f"/v1/exceptions/{exception_id}/approve", json={}, headers=as_user(key, "carol")
    )
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    answer = decide(server, export)
    assert answer["decision"] is True and answer["context"]["exceptions"] == [exception_id]
    tier0 = {**body, "policy": "forbid-elevated-risk-on-tier0"}
    refused = server.client.post("/v1/exceptions", json=tier0, headers=as_user(key, "alice"))
    assert refused.status_code == 403 and "tier0-exceptions-by-security-only" in refused.text
    permanent = {**body, "duration": "400d"}
    assert (
        server.client.post("/v1/exceptions", json=permanent, headers=as_user(key, "carol"))
    ).status_code == 422
    expiring = server.client.get(
        "/v1/exceptions", params={"expiring": "7d"}, headers=as_user(key, "bob")
    ).json()["exceptions"]
    assert [e["id"] for e in expiring] == [exception_id]
    revoke = {"kind": "exception", "target": exception_id, "reason": "fixed"}
    assert (
        server.client.post("/v1/revocations", json=revoke, headers=as_user(key, "carol"))
    ).status_code == 201
    assert decide(server, export)["decision"] is False


def xfcc_for(spiffe_id: str, serial: int) -> str:
    """What an mTLS-terminating proxy (Envoy) forwards about its client: URI and Cert."""
    import datetime as dt
    from urllib.parse import quote

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), False
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return f'By=spiffe://trustplane.local/proxy;Cert="{quote(pem)}";URI={spiffe_id}'


def test_an_mtls_workload_is_an_admin_caller_until_its_certificate_is_revoked(
    server: Server,
) -> None:
    robot = {"x-forwarded-client-cert": xfcc_for("spiffe://trustplane.local/ops/robot", 0xC0FFEE)}
    assert server.client.get("/v1/bundle", headers=robot).status_code == 403, "workloads may not"
    witness = server.client.get("/v1/ledger/checkpoints", headers=robot)
    assert witness.status_code == 200, "workloads may witness the ledger"
    write = server.client.post("/v1/bundle/reload", headers=robot)
    assert write.status_code == 403 and "spiffe://trustplane.local/ops/robot" in write.text
    body = {"kind": "certificate", "target": "00:c0:ff:ee", "reason": "robot key leaked"}
    assert server.client.post("/v1/revocations", json=body, headers=server.admin).status_code == 201
    refused = server.client.get("/v1/ledger/checkpoints", headers=robot)
    assert refused.status_code == 401 and "robot key leaked" in refused.json()["detail"]


# -- the command line --------------------------------------------------------------------------


def test_cli_requests_approves_and_lists(server: Server, key: Key) -> None:
    def cli(who: str, *args: str) -> Any:
        env = {
            **server.env,
            "TRUSTPLANE_CLI__SERVER_URL": server.url,
            "TRUSTPLANE_CLI__ADMIN_TOKEN": user_token(key, who),
            "COLUMNS": "80",
        }
        return run_cli(*args, env=env)

    asked = cli("bob", "access", "request", SRE, "--duration", "30m", "--reason", "deploy",
                "--ticket", "CHG-11", "--json")  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    request_id = json.loads(asked.stdout)["id"]
    assert json.loads(asked.stdout)["expires_at"].endswith("Z"), "RFC 3339 in CLI JSON"
    pending = cli("alice", "access", "list", "--status", "pending", "--json")
    assert request_id in [r["id"] for r in json.loads(pending.stdout)["requests"]]
    listed = cli("alice", "access", "list", "--status", "pending")
    wide = max(map(len, listed.stdout.splitlines()))
    assert request_id in listed.stdout and wide <= 80, "the whole id, in 80 columns"
    approved = cli("alice", "access", "approve", request_id[:8])  # any unique prefix
    assert approved.returncode == 0 and "granted" in approved.stdout, approved.stderr
    grants = json.loads(cli("bob", "access", "list", "--active", "--json").stdout)["grants"]
    grant_id = next(g["id"] for g in grants if g["request_id"] == request_id)
    assert decide(server, BOB_LOGS)["decision"] is True
    activity = cli("bob", "access", "activity", grant_id[:6])
    assert activity.returncode == 0 and "decision(s)" in activity.stdout
    not_security = cli("alice", "revoke", "grant", grant_id, "--reason", "deployed")
    assert not_security.returncode == 2 and "revocation:write" in not_security.stderr
    revoked = cli("carol", "revoke", "grant", grant_id, "--reason", "deployed")
    assert revoked.returncode == 0 and "revoked grant" in revoked.stdout, revoked.stderr
    own = cli("bob", "access", "revoke", grant_id, "--reason", "again")  # one's own grant
    assert own.returncode == 0 and "already was" in own.stdout, own.stderr

    bad = cli("bob", "access", "request", 'Role::"root"', "--duration", "1h", "--reason", "x")
    assert bad.returncode == 2 and bad.stderr.count("not requestable") == 1, bad.stderr
    nothing = cli("bob", "access", "activity", "zz")
    assert nothing.returncode == 2 and "no grant id starts with 'zz'" in nothing.stderr
    assert "Traceback" not in bad.stderr
    listed = cli("bob", "exceptions", "list", "--expiring", "7d", "--json")
    assert listed.returncode == 0 and "exceptions" in json.loads(listed.stdout)
    overdue = cli("carol", "break-glass", "list", "--overdue")
    assert overdue.returncode == 0 and "overdue review(s)" in overdue.stdout


def test_the_bootstrap_token_can_be_turned_off(
    tmp_path: Path, database_url: str, issuer: Jwks, key: Key
) -> None:
    with governed(tmp_path / "s", database_url, issuer, admin__bootstrap_token="false") as srv:
        refused = srv.client.get("/v1/bundle", headers=srv.admin)
        assert refused.status_code == 401 and "turned off" in refused.json()["detail"]
        assert srv.client.get("/v1/bundle", headers=as_user(key, "carol")).status_code == 200


# -- two replicas on one PostgreSQL ------------------------------------------------------------


def first_change(server: Server, body: dict[str, Any], expected: bool, started: float) -> float:
    while True:
        answer = decide(server, body)
        elapsed = time.monotonic() - started
        if answer["decision"] is expected:
            return elapsed
        assert elapsed < 5, f"replica still answers {not expected} 5 s later"
        time.sleep(0.005)


@pytest.mark.postgres
def test_a_grant_approved_on_one_replica_applies_on_the_other_and_so_does_its_revoke(
    tmp_path: Path, issuer: Jwks, key: Key
) -> None:
    with (
        store_url("postgresql", tmp_path) as url,
        governed(tmp_path / "a", url, issuer) as a,
        governed(tmp_path / "b", url, issuer) as b,
    ):
        assert decide(b, BOB_LOGS)["decision"] is False
        request_id = ask(a, key, "bob").json()["id"]
        started = time.monotonic()
        approved = a.client.post(
            f"/v1/access/requests/{request_id}/approve", json={}, headers=as_user(key, "alice")
        )
        assert approved.status_code == 200, approved.text
        granted_after = first_change(b, BOB_LOGS, True, started)
        assert granted_after < 1.0, f"replica b applied the grant after {granted_after:.3f}s"
        grant_id = approved.json()["grant"]["id"]
        started = time.monotonic()
        revoked = a.client.post(
            f"/v1/access/grants/{grant_id}/revoke",
            json={"reason": "done"},
            headers=as_user(key, "carol"),
        )
        assert revoked.status_code == 201, revoked.text
        revoked_after = first_change(b, BOB_LOGS, False, started)
        assert revoked_after < 1.0, f"replica b still allowed {revoked_after:.3f}s after revoke"
        assert b.client.get("/readyz").status_code == 200


def test_a_server_with_broken_admin_policies_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "admin.cedar").write_text(
        'permit (principal, action == Action::"everything", resource);\n'
    )
    env = {
        "TRUSTPLANE_STATE_DIR": str(tmp_path / "state"),
        "TRUSTPLANE_ADMIN__POLICY_DIR": str(tmp_path / "policies"),
        "TRUSTPLANE_POLICY__BUNDLE_DIR": str(SHOP),
        "TRUSTPLANE_POLICY__WATCH": "false",
    }
    assert run_cli("init", env=env).returncode == 0
    started = run_cli("serve", "--port", "0", env=env)
    assert started.returncode == 2, started.stderr
    assert "do not validate against the admin schema" in started.stderr
    assert "Traceback" not in started.stderr
