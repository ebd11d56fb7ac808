"""F7, latency: decision latency is exported per enforcement point, so the PEP whose answers
slow down is named by the metric rather than found by elimination.

A real `trustplane serve` with pep.auth = required and two registered PEPs: each asks over its
own endpoint (AuthZEN, Envoy gRPC), and /metrics shows `trustplane_pep_decision_seconds` for
both, counted call for call; callers that are not PEPs share the one `anonymous` series, so no
caller can add series to the metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from prometheus_client import CollectorRegistry

from tests.conftest import SHOP
from tests.support import Server, authzen, run_cli, running_server, wait_for
from trustplane.enforcement.pep import PepLatency

pytestmark = pytest.mark.slow

QUESTION = authzen(("User", "alice"), "view", ("Document", "d1"))


@pytest.fixture(scope="module")
def server(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        SHOP,
        policy__watch="false",
        pep__auth="required",
    ) as srv:
        yield srv


def _add(server: Server, name: str) -> str:
    added = run_cli("pep", "add", name, "--json", env=server.env)
    assert added.returncode == 0, added.stderr
    token = str(json.loads(added.stdout)["token"])
    wait_for(lambda: _ask(server, token).status_code == 200)  # the server has heard of it
    return token


def _ask(server: Server, token: str) -> Any:
    return server.client.post(
        "/access/v1/evaluation", json=QUESTION, headers={"authorization": f"Bearer {token}"}
    )


def _counts(server: Server) -> dict[str, float]:
    text = server.client.get("/metrics").text
    pattern = r'^trustplane_pep_decision_seconds_count\{pep="([^"]*)"\} (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)}


def _refusals(server: Server) -> dict[str, float]:
    text = server.client.get("/metrics").text
    pattern = r'^trustplane_pep_refusals_total\{reason="([^"]*)"\} (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)}


def _check() -> external_auth_pb2.CheckRequest:
    ctx = attribute_context_pb2.AttributeContext
    return external_auth_pb2.CheckRequest(
        attributes=ctx(
            request=ctx.Request(http=ctx.HttpRequest(method="GET", path="/", host="shop.example"))
        )
    )


def test_metrics_show_decision_latency_for_each_pep(server: Server) -> None:
    gateway = _add(server, "api-gateway")
    mesh = _add(server, "mesh-envoy")
    before = _counts(server)
    refusals_before = _refusals(server)
    for _ in range(3):
        assert _ask(server, gateway).status_code == 200
    port = int(server.env["TRUSTPLANE_GRPC__PORT"])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for _ in range(2):
            answer = stub.Check(_check(), metadata=[("authorization", f"Bearer {mesh}")])
            assert "pep_" not in answer.denied_response.body  # let in, then judged
    assert _ask(server, "tpp_not-a-registered-token").status_code == 401
    assert server.client.post("/access/v1/evaluation", json=QUESTION).status_code == 401

    after = _counts(server)
    assert after["api-gateway"] - before.get("api-gateway", 0) == 3
    assert after["mesh-envoy"] - before.get("mesh-envoy", 0) == 2
    assert after["anonymous"] - before.get("anonymous", 0) == 2  # refused callers: one series
    assert set(after) == {"api-gateway", "mesh-envoy", "anonymous"}
    refusals_after = _refusals(server)
    for reason in ("pep_token_unknown", "pep_credential_missing"):  # and why they were refused
        assert refusals_after[reason] - refusals_before.get(reason, 0) == 1
    text = server.client.get("/metrics").text
    assert re.search(r'trustplane_pep_decision_seconds_bucket\{le="[^"]+",pep="mesh-envoy"\}', text)


def test_names_past_the_bound_share_one_series() -> None:
    registry = CollectorRegistry()
    latency = PepLatency(registry)
    for index in range(PepLatency.MAX_LABELS + 10):
        latency.observe(f"pep-{index}", 0.001)
    labels = {
        sample.labels["pep"]
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name.endswith("_count")
    }
    assert len(labels) == PepLatency.MAX_LABELS + 1
    assert "other" in labels
