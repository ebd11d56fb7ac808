"""Every admin call lands in the ledger, through a real server: successful reads, refusals
(401 with the principal the caller presented and why, 403 with the policies), each under the
action the gate's table names for its route — never a family guessed from the path."""

from __future__ import annotations

import uuid
from typing import Any

from tests.governance.test_governance_server import xfcc_for
from tests.issuer import claims, rsa_key
from tests.support import Server, wait_for


def admin_records(server: Server, principal: str) -> list[dict[str, Any]]:
    """The admin records of `principal`, newest first (itself a recorded admin read)."""
    response = server.client.get(
        "/v1/decisions", params={"principal": principal, "limit": 1000}, headers=server.admin
    )
    assert response.status_code == 200, response.text
    return [r for r in response.json()["decisions"] if r["kind"] == "admin"]


def recorded(server: Server, principal: str, marker: str) -> dict[str, Any]:
    """The one admin record of `principal` that mentions `marker` (batch durability queues
    reads like decisions: wait until it is committed)."""

    def find() -> dict[str, Any] | None:
        hits = [r for r in admin_records(server, principal) if marker in str(r)]
        assert len(hits) <= 1, hits
        return hits[0] if hits else None

    found = wait_for(find)
    assert found is not None, f"no admin record of {principal} mentions {marker}"
    return found


def test_a_successful_admin_read_is_recorded(server: Server) -> None:
    marker = uuid.uuid4().hex
    response = server.client.get(
        "/v1/decisions", params={"principal": f"User::{marker}", "limit": 7}, headers=server.admin
    )
    assert response.status_code == 200 and response.json() == {"decisions": []}
    record = recorded(server, "bootstrap", marker)
    assert record["action"] == "decisions:read" and record["decision"] == "allow"
    assert record["target"] == "decisions"
    assert record["details"]["status"] == 200 and "limit=7" in record["details"]["query"]


def test_an_admin_401_is_recorded_with_the_presented_principal_and_the_reason(
    server: Server,
) -> None:
    intruder = f"mallory-{uuid.uuid4().hex}"
    forged = rsa_key("not-trusted").sign(claims(sub=intruder))
    response = server.client.get("/v1/bundle", headers={"authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    record = recorded(server, "unauthenticated", intruder)
    assert record["action"] == "bundle:read" and record["decision"] == "deny"
    details = record["details"]
    assert details["status"] == 401 and details["presented"] == f"{intruder} (unverified)"
    assert details["refused"] == response.json()["detail"]

    bare = server.client.delete(f"/v1/identity/entries/{intruder}")  # no credential at all
    assert bare.status_code == 401
    record = recorded(server, "unauthenticated", f"identity:{intruder}")
    assert record["action"] == "identity:write" and record["details"]["presented"] is None
    assert "authentication required" in record["details"]["refused"]


def test_an_admin_403_is_recorded_with_the_policies(server: Server) -> None:
    robot = f"spiffe://trustplane.local/ops/robot-{uuid.uuid4().hex[:8]}"
    headers = {"x-forwarded-client-cert": xfcc_for(robot, 0xBEEF)}
    response = server.client.post("/v1/bundle/reload", headers=headers)
    assert response.status_code == 403 and robot in response.json()["detail"]
    record = recorded(server, robot, "403")
    assert record["action"] == "bundle:write" and record["decision"] == "deny"
    assert record["details"]["refused"] == response.json()["detail"]


def test_attestations_are_authorized_and_recorded_as_attestations(server: Server) -> None:
    """Once authorized and audited as `bundle:read` (the prefix guess's fallback)."""
    marker = uuid.uuid4().hex
    listed = server.client.get("/v1/attestations", params={"signer": marker}, headers=server.admin)
    assert listed.status_code == 404, "this server has no identity plane"
    record = recorded(server, "bootstrap", marker)
    assert record["action"] == "attestation:read" and record["target"] == "attestation"
    assert record["details"]["status"] == 404 and record["decision"] == "allow"

    robot = f"spiffe://trustplane.local/ops/robot-{marker[:8]}"
    headers = {"x-forwarded-client-cert": xfcc_for(robot, 0xFEED)}
    refused = server.client.get("/v1/attestations", headers=headers)
    assert refused.status_code == 403 and "attestation:read" in refused.json()["detail"]
