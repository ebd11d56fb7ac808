"""The HTTP API of a real `trustplane serve` process, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import SHOP
from tests.support import Server, running_server, wait_for
from trustplane.telemetry.checkpoint import NoteVerifier, open_checkpoint
from trustplane.telemetry.merkle import leaf_hash, verify_consistency, verify_inclusion

pytestmark = pytest.mark.slow

CTX = {"mfa": True, "auth_age_seconds": 120, "risk_score": 10}


def refund(amount: int | None = None, user: str = "erin", **extra: Any) -> dict[str, Any]:
    context = {**CTX, **({"amount_cents": amount} if amount is not None else {}), **extra}
    return {
        "subject": {"type": "User", "id": user},
        "action": {"name": "payments:refund"},
        "resource": {"type": "Api", "id": "payments.refund"},
        "context": context,
    }


@pytest.fixture(scope="module")
def server(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("state")
    with running_server(
        state, module_database_url, SHOP, policy__watch="false", ledger__checkpoint_interval_ms=200
    ) as srv:
        yield srv


def evaluate(server: Server, body: Any) -> httpx.Response:
    return server.client.post("/access/v1/evaluation", json=body)


def test_allow_is_explained(server: Server) -> None:
    response = evaluate(server, refund(4999))
    assert response.status_code == 200
    body = response.json()
    assert body["decision"] is True
    details = body["context"]
    assert len(details["decision_id"]) == 36
    assert [r["policy"] for r in details["reasons"]] == ["support-refunds-with-mfa"]
    assert details["reasons"][0]["owner"] == "payments"
    assert details["reasons"][0]["description"]
    assert len(details["revision"]) == 64
    assert details["shadow"]["decision"] == "allow"


def test_observe_mode_policy_shows_in_shadow_only(server: Server) -> None:
    details = evaluate(server, refund(90000)).json()
    assert details["decision"] is True
    shadow = details["context"]["shadow"]
    assert shadow["decision"] == "deny"
    assert [r["policy"] for r in shadow["would_change"]] == ["forbid-large-refunds"]
    assert shadow["would_change"][0]["mode"] == "observe"


def test_default_deny_and_missing_mfa(server: Server) -> None:
    body = evaluate(server, refund(100, mfa=False)).json()
    assert body["decision"] is False
    unknown = evaluate(server, refund(100, user="mallory")).json()
    assert unknown["decision"] is False
    assert unknown["context"]["errors"], "an unknown principal without attributes is an error"


def test_request_not_matching_schema_fails_closed(server: Server) -> None:
    body = refund(100)
    body["context"]["risk_score"] = "low"
    response = evaluate(server, body)
    assert response.status_code == 200
    assert response.json()["decision"] is False
    assert "context" in response.json()["context"]["errors"][0]


def test_evaluations_defaults_overrides_and_semantics(server: Server) -> None:
    batch = {
        "subject": {"type": "User", "id": "erin"},
        "action": {"name": "payments:refund"},
        "context": CTX,
        "evaluations": [
            {"resource": {"type": "Api", "id": "payments.refund"}},
            {
                "resource": {"type": "Api", "id": "payments.refund"},
                "context": {**CTX, "mfa": False},
            },
            {"resource": {"type": "Api", "id": "payments.refund"}},
        ],
    }
    all_results = server.client.post("/access/v1/evaluations", json=batch).json()
    assert [e["decision"] for e in all_results["evaluations"]] == [True, False, True]

    batch["options"] = {"evaluations_semantic": "deny_on_first_deny"}
    stopped = server.client.post("/access/v1/evaluations", json=batch).json()
    assert [e["decision"] for e in stopped["evaluations"]] == [True, False]

    batch["options"] = {"evaluations_semantic": "permit_on_first_permit"}
    first = server.client.post("/access/v1/evaluations", json=batch).json()
    assert [e["decision"] for e in first["evaluations"]] == [True]


def test_evaluations_item_without_default_names_the_item(server: Server) -> None:
    batch = {
        "action": {"name": "payments:refund"},
        "evaluations": [
            {"subject": {"type": "User", "id": "erin"}, "resource": {"type": "Api", "id": "x"}},
            {"resource": {"type": "Api", "id": "x"}},
        ],
    }
    response = server.client.post("/access/v1/evaluations", json=batch)
    assert response.status_code == 422
    assert response.json()["errors"][0]["pointer"] == "/evaluations/1/subject"


def test_well_known_configuration(server: Server) -> None:
    config = server.client.get("/.well-known/authzen-configuration").json()
    assert config["policy_decision_point"] == server.url
    assert config["access_evaluation_endpoint"] == f"{server.url}/access/v1/evaluation"
    assert config["access_evaluations_endpoint"] == f"{server.url}/access/v1/evaluations"


@pytest.mark.parametrize(
    ("content", "status", "pointer"),
    [
        (b'{"subject": ', 400, None),
        (b"", 400, None),
        (b"[1, 2]", 422, ""),
        (
            b'{"subject": {"type": "User", "id": 7}, "action": {"name": "a"}, '
            b'"resource": {"type": "Api", "id": "x"}}',
            422,
            "/subject/id",
        ),
        (
            b'{"subject": {"type": "User", "id": "a"}, "action": {"name": "a"}, '
            b'"resource": {"type": "Api", "id": "x"}, "tenant": "t"}',
            422,
            "/tenant",
        ),
        (
            b'{"subject": {"type": "User", "id": "a"}, "action": {"verb": "a"}, '
            b'"resource": {"type": "Api", "id": "x"}}',
            422,
            "/action/verb",
        ),
        (b'{"action": {"name": "a"}, "resource": {"type": "Api", "id": "x"}}', 422, "/subject"),
    ],
)
def test_bad_input_is_a_problem_naming_the_field(
    server: Server, content: bytes, status: int, pointer: str | None
) -> None:
    response = server.client.post(
        "/access/v1/evaluation", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["detail"]
    if pointer is not None:
        assert pointer in [e["pointer"] for e in problem["errors"]]


def test_oversize_body_is_refused(server: Server) -> None:
    body = refund(1)
    body["context"]["padding"] = "x" * 2_000_000
    response = evaluate(server, body)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_unknown_route_and_method_are_problems(server: Server) -> None:
    assert server.client.get("/nope").json()["status"] == 404
    wrong = server.client.get("/access/v1/evaluation")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/problem+json"


def test_admin_api_requires_the_token(server: Server) -> None:
    missing = server.client.get("/v1/bundle")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = server.client.get("/v1/bundle", headers={"authorization": "Bearer tpa_wrong"})
    assert wrong.status_code == 401
    status = server.client.get("/v1/bundle", headers=server.admin)
    assert status.status_code == 200
    active = status.json()["active"]
    assert active["name"] == "shop"
    assert active["tests"]["passed"] == active["tests"]["total"] > 0
    assert {p["id"] for p in active["policies"]} >= {"forbid-large-refunds"}


def test_decisions_are_recorded_masked_and_queryable(server: Server) -> None:
    secret = "eyJ-super-secret-token"
    body = refund(77, token=secret)
    decision_id = evaluate(server, body).json()["context"]["decision_id"]

    def recorded() -> Any:
        response = server.client.get(f"/v1/decisions/{decision_id}", headers=server.admin)
        return response.json() if response.status_code == 200 else None

    record = wait_for(recorded)
    assert record["decision_id"] == decision_id
    assert "token" not in record["request"]["context"]
    assert record["masked"] == ["/context/token"]
    assert secret not in str(record)
    rows = server.client.get(
        "/v1/decisions", params={"principal": 'User::"erin"', "limit": 500}, headers=server.admin
    ).json()["decisions"]
    assert decision_id in {r["decision_id"] for r in rows}
    assert all(r["request"]["principal"]["id"] == "erin" for r in rows)
    bad = server.client.get("/v1/decisions", params={"decision": "maybe"}, headers=server.admin)
    assert bad.status_code == 400 and "decision" in bad.json()["detail"]


def test_inclusion_and_consistency_proofs_verify(server: Server) -> None:
    first_id = evaluate(server, refund(1)).json()["context"]["decision_id"]
    verifier = NoteVerifier.from_verifier_key(
        wait_for(
            lambda: server.client.get("/v1/ledger/checkpoints", headers=server.admin).json()[
                "verifier_key"
            ]
        )
    )

    def proof_for(decision_id: str) -> Any:
        response = server.client.get(
            "/v1/ledger/proof/inclusion", params={"decision_id": decision_id}, headers=server.admin
        )
        return response.json() if response.status_code == 200 else None

    proof = wait_for(lambda: proof_for(first_id))
    checkpoint = open_checkpoint(proof["checkpoint"], verifier)
    assert checkpoint.size == proof["tree_size"]
    record = server.client.get(f"/v1/decisions/{first_id}", headers=server.admin).json()
    assert proof["leaf_index"] == record["seq"]
    path = [base64.b64decode(h) for h in proof["inclusion_path"]]
    leaf = base64.b64decode(proof["leaf_hash"])
    assert verify_inclusion(leaf, proof["leaf_index"], checkpoint.size, path, checkpoint.root_hash)
    assert not verify_inclusion(
        leaf_hash(b"forged"), proof["leaf_index"], checkpoint.size, path, checkpoint.root_hash
    )

    old_size = checkpoint.size
    for amount in range(3):
        evaluate(server, refund(amount))
    newer = wait_for(
        lambda: (
            (c := server.client.get("/v1/ledger/checkpoint", headers=server.admin).json())[
                "tree_size"
            ]
            > old_size
            and c
        )
    )
    consistency = server.client.get(
        "/v1/ledger/proof/consistency",
        params={"first": old_size, "second": newer["tree_size"]},
        headers=server.admin,
    ).json()
    new_cp = open_checkpoint(consistency["second_checkpoint"], verifier)
    assert verify_consistency(
        old_size,
        new_cp.size,
        checkpoint.root_hash,
        new_cp.root_hash,
        [base64.b64decode(h) for h in consistency["consistency_path"]],
    )
    missing = server.client.get(
        "/v1/ledger/proof/inclusion", params={"decision_id": "nope"}, headers=server.admin
    )
    assert missing.status_code == 404


def metric(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def test_metrics_count_decisions_and_shadow_mismatches(server: Server) -> None:
    evaluate(server, refund(90000))
    text = server.client.get("/metrics").text
    assert 'trustplane_decisions_total{decision="allow",mode="enforced",pep="anonymous"}' in text
    assert 'trustplane_shadow_mismatches_total{policy="forbid-large-refunds"}' in text
    assert 'trustplane_bundle_loads_total{result="success"} 1.0' in text
    assert "trustplane_evaluation_seconds_bucket" in text
    assert "trustplane_ledger_records" in text


def test_metrics_show_the_bundle_the_feed_and_the_checkpoints(server: Server) -> None:
    evaluate(server, refund(100))
    text = wait_for(
        lambda: (
            (t := server.client.get("/metrics").text)
            and "trustplane_ledger_last_checkpoint_timestamp_seconds " in t
            and metric(t, "trustplane_ledger_last_checkpoint_timestamp_seconds") > 0
            and t
        )
    )
    revision = server.client.get("/readyz").json()["revision"]
    assert f'trustplane_bundle_info{{name="shop",revision="{revision}"}} 1.0' in text
    assert metric(text, "trustplane_change_feed_up") == 1
    assert 0 <= metric(text, "trustplane_change_feed_lag_seconds") < 60


def test_repeated_request_is_answered_from_the_cache_and_still_recorded(server: Server) -> None:
    body = {  # a low-risk Tier 2 read: Tier 0 (a refund) is never answered from the cache
        "subject": {"type": "User", "id": "bob"},
        "action": {"name": "inventory:read"},
        "resource": {"type": "Api", "id": "inventory.stock"},
        "context": CTX,
    }
    before = metric(server.client.get("/metrics").text, "trustplane_decision_cache_hits_total")
    first = evaluate(server, body).json()
    again = evaluate(server, body).json()
    assert again["context"]["cached"] is True
    assert again["context"]["decision_id"] != first["context"]["decision_id"]
    assert again["decision"] == first["decision"]
    assert again["context"]["reasons"] == first["context"]["reasons"]
    after = metric(server.client.get("/metrics").text, "trustplane_decision_cache_hits_total")
    assert after >= before + 1
    for decision_id in (first["context"]["decision_id"], again["context"]["decision_id"]):
        url = f"/v1/decisions/{decision_id}"
        # A cached answer is recorded like any other.
        assert wait_for(lambda u=url: server.client.get(u, headers=server.admin).status_code == 200)


def test_health_readiness_and_openapi(server: Server) -> None:
    assert server.client.get("/healthz").json() == {"status": "ok"}
    assert server.client.get("/readyz").json()["status"] == "ready"
    spec = server.client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert "/access/v1/evaluation" in spec["paths"]
    assert "EvaluationRequest" in spec["components"]["schemas"]


def test_request_id_is_echoed(server: Server) -> None:
    response = server.client.post(
        "/access/v1/evaluation", json=refund(1), headers={"x-request-id": "req-42"}
    )
    assert response.headers["x-request-id"] == "req-42"


def test_server_log_has_no_tracebacks(server: Server) -> None:
    assert "Traceback" not in server.log()
