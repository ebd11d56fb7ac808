"""Traces of decisions from a real `trustplane serve` to a loopback OTLP receiver the test runs
(tests/telemetry/otlp_receiver.py): the caller's W3C `traceparent` continued from AuthZEN,
forward-auth and Envoy's CheckRequest headers, a span per decision with its children, and the
trace id in the answer's headers and in the decision's record.

The server samples no new trace (`sample_ratio = 0`), so every exported span here is there
because the caller's `traceparent` said sampled: which is what honouring it means.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from typing import Any

import grpc
import orjson
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from tests.conftest import SHOP
from tests.issuer import Jwks, Key, issuer_settings, user_token
from tests.support import Server, free_port, running_server, wait_for
from tests.telemetry.otlp_receiver import OtlpReceiver, ReceivedSpan
from trustplane.model import DECISION_ID, TRACE_ID
from trustplane.telemetry.logs import JsonFormatter

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(
    module_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    receiver: OtlpReceiver,
    issuer: Jwks,
    grpc_port: int,
) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        SHOP,
        policy__watch="false",
        pep__issuers=issuer_settings(issuer),
        server__trusted_proxies=["127.0.0.1/32"],
        grpc__port=grpc_port,
        grpc__transport="python",
        tracing__enabled="true",
        tracing__endpoint=receiver.endpoint,
        tracing__sample_ratio="0",
        tracing__export_interval_ms="50",
        tracing__service_name="trustplane-test",
        log_format="json",
    ) as srv:
        yield srv


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def exported(receiver: OtlpReceiver, trace_id: str, names: set[str]) -> list[ReceivedSpan]:
    """The trace's spans once every span named in `names` has arrived."""
    return wait_for(
        lambda: (spans := receiver.trace(trace_id)) and names <= {s.name for s in spans} and spans
    )


def check_tree(spans: list[ReceivedSpan], root_name: str, caller_span: str) -> ReceivedSpan:
    """One server span, the caller's span its parent, every other span below it."""
    roots = [s for s in spans if s.name == root_name]
    assert len(roots) == 1
    root = roots[0]
    assert root.kind == SERVER_KIND
    assert root.parent_span_id == caller_span
    assert root.resource["service.name"] == "trustplane-test"
    by_id = {s.span_id: s for s in spans}
    for span in spans:
        if span is root:
            continue
        ancestor = span
        while ancestor.parent_span_id in by_id and ancestor is not root:
            ancestor = by_id[ancestor.parent_span_id]
        assert ancestor is root, f"{span.name} is not under {root_name}"
    return root


def record_of(server: Server, decision_id: str) -> dict[str, Any] | None:
    response = server.client.get(f"/v1/decisions/{decision_id}", headers=server.admin)
    return None if response.status_code == 404 else dict(response.json())


def test_an_authzen_decision_continues_the_callers_trace(
    server: Server, receiver: OtlpReceiver
) -> None:
    header, trace_id, span_id = traceparent()
    body = {
        "subject": {"type": "User", "id": "erin"},
        "action": {"name": "payments:refund"},
        "resource": {"type": "Api", "id": "payments.refund"},
        "context": {"mfa": True, "auth_age_seconds": 120, "risk_score": 10, "amount_cents": 5},
    }
    response = server.client.post(
        "/access/v1/evaluation", json=body, headers={"traceparent": header}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-trustplane-trace-id"] == trace_id
    decision_id = response.json()["context"]["decision_id"]

    names = {"POST /access/v1/evaluation", "trustplane.pep.authzen", "trustplane.evaluate"}
    spans = exported(receiver, trace_id, names | {"trustplane.record"})
    root = check_tree(spans, "POST /access/v1/evaluation", span_id)
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.route"] == "/access/v1/evaluation"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["trustplane.decision.id"] == decision_id
    evaluate = next(s for s in spans if s.name == "trustplane.evaluate")
    answer = "allow" if response.json()["decision"] else "deny"
    assert evaluate.attributes["trustplane.decision"] == answer
    assert "trustplane.trust" in {s.name for s in spans}  # the trust plane scores every request

    record = wait_for(lambda: record_of(server, decision_id))
    assert record["trace_id"] == trace_id


def test_forward_auth_traces_authentication(
    server: Server, receiver: OtlpReceiver, key: Key
) -> None:
    header, trace_id, span_id = traceparent()
    response = server.client.get(
        "/v1/forward-auth",
        headers={
            "X-Original-URI": "/ops/services/checkout/logs",
            "X-Original-Method": "GET",
            "authorization": f"Bearer {user_token(key)}",
            "traceparent": header,
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-trustplane-trace-id"] == trace_id
    names = {"GET /v1/forward-auth", "trustplane.pep.forward_auth", "trustplane.authenticate"}
    spans = exported(receiver, trace_id, names | {"trustplane.evaluate", "trustplane.record"})
    check_tree(spans, "GET /v1/forward-auth", span_id)
    authenticate = next(s for s in spans if s.name == "trustplane.authenticate")
    assert authenticate.attributes["trustplane.credential"].startswith("http")  # the issuer


def test_envoy_check_request_headers_carry_the_trace(
    server: Server, receiver: OtlpReceiver, key: Key, grpc_port: int
) -> None:
    header, trace_id, span_id = traceparent()
    ctx = attribute_context_pb2.AttributeContext
    request = external_auth_pb2.CheckRequest(
        attributes=ctx(
            request=ctx.Request(
                http=ctx.HttpRequest(
                    method="GET",
                    path="/ops/services/checkout/logs",
                    host="shop.example",
                    scheme="https",
                    headers={"authorization": f"Bearer {user_token(key)}", "traceparent": header},
                )
            )
        )
    )
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        answer = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)
    headers = {o.header.key: o.header.value for o in answer.ok_response.headers}
    assert headers["x-trustplane-trace-id"] == trace_id
    root_name = "envoy.service.auth.v3.Authorization/Check"
    spans = exported(receiver, trace_id, {root_name, "trustplane.pep.envoy_grpc"})
    root = check_tree(spans, root_name, span_id)
    assert root.attributes["rpc.system"] == "grpc"
    assert root.attributes["rpc.method"] == "Check"
    assert root.attributes["trustplane.decision.id"] == headers["x-trustplane-decision-id"]


def test_unsampled_traces_are_not_exported_but_still_named(
    server: Server, receiver: OtlpReceiver
) -> None:
    body = {
        "subject": {"type": "User", "id": "erin"},
        "action": {"name": "payments:refund"},
        "resource": {"type": "Api", "id": "payments.refund"},
    }
    unsampled, unsampled_id, _ = traceparent(sampled=False)
    quiet = server.client.post(
        "/access/v1/evaluation", json=body, headers={"traceparent": unsampled}
    )
    fresh = server.client.post("/access/v1/evaluation", json=body)  # ratio 0: not sampled
    # Both answers still name their trace (the caller's, or a new one) for logs and records.
    assert quiet.headers["x-trustplane-trace-id"] == unsampled_id
    fresh_id = fresh.headers["x-trustplane-trace-id"]
    assert len(fresh_id) == 32 and fresh_id != unsampled_id
    sampled, sampled_id, _ = traceparent()
    server.client.post("/access/v1/evaluation", json=body, headers={"traceparent": sampled})
    exported(receiver, sampled_id, {"POST /access/v1/evaluation"})  # exported after the others
    assert receiver.trace(unsampled_id) == []
    assert receiver.trace(fresh_id) == []


def test_json_logs_are_one_object_per_line(server: Server) -> None:
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert lines
    documents = [orjson.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= d.keys() for d in documents)
    assert any(d["logger"].startswith("uvicorn") for d in documents)  # uvicorn's lines too


def test_a_log_line_written_during_a_decision_names_it() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord(
        "trustplane.x", logging.WARNING, __file__, 1, "seen %s", ("it",), None
    )
    outside = orjson.loads(formatter.format(record))
    assert outside["message"] == "seen it" and "decision_id" not in outside
    decision_token = DECISION_ID.set("0190c8a2-0000-7000-8000-000000000001")
    trace_token = TRACE_ID.set("4bf92f3577b34da6a3ce929d0e0e4736")
    try:
        inside = orjson.loads(formatter.format(record))
    finally:
        DECISION_ID.reset(decision_token)
        TRACE_ID.reset(trace_token)
    assert inside["decision_id"] == "0190c8a2-0000-7000-8000-000000000001"
    assert inside["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert inside["level"] == "warning"
