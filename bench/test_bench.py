"""Checks of the benchmark's own machinery (run with `pytest bench`). No timing is asserted:
the machine is shared and noisy; these only check that the tools measure what they claim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpbench
import run
import spyprofile
from common import authzen_body, load_shop, percentile, request_mix, write_bodies


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99.9) == 7.0


def test_bodies_map_back_to_the_same_requests() -> None:
    from trustplane.server.authzen import EvaluationRequest, to_access_request

    requests = request_mix(load_shop())
    assert requests and all(r.action.type == "Action" for r in requests)
    for request in requests:
        body = EvaluationRequest.model_validate_json(json.dumps(authzen_body(request)))
        again = to_access_request(body.subject, body.action, body.resource, body.context)
        assert again == request


def test_docs_section_is_replaced_not_appended(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text(f"# T\n\nintro\n\n{run.START}\nold\n{run.END}\n\ntrailer\n")
    run.write_docs("new figures", doc)
    run.write_docs("newer figures", doc)
    text = doc.read_text()
    assert "old" not in text and "new figures" not in text
    assert text.count(run.START) == 1 and "newer figures" in text and "trailer" in text


def test_profile_classification(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "main;AuthZenApi.evaluation (a.py:1);is_authorized_batch (cedarpy/__init__.py:3) 6\n"
        "main;Evaluator.evaluate (e.py:1);Evaluator._compile (e.py:2) 3\n"
        "Thread._bootstrap (t.py:1);DecisionRecorder._run (r.py:1);Ledger.append (l.py:1) 2\n"
        "main;RequestResponseCycle.run_asgi (u.py:1) 1\n"
    )
    parts, total = spyprofile.classify(raw)
    assert total == 12
    assert parts["Cedar is_authorized (cedarpy)"] == 6
    assert parts["policy sets compiled per request (stale generation)"] == 3
    assert parts["writer: SQLite insert + commit (SQLAlchemy)"] == 2


@pytest.mark.slow
def test_load_generator_against_the_noop_server(tmp_path: Path) -> None:
    """Open and closed loop both answer every request they send to the no-op baseline."""
    bodies = write_bodies(request_mix(load_shop())[:5], tmp_path / "bodies.jsonl")
    server = httpbench.start_server("noop", tmp_path, use_cli=False)
    try:
        fixed = httpbench.run_loadgen(server, bodies, rate=200, seconds=1, connections=4, grace=5)
        closed = httpbench.run_loadgen(server, bodies, rate=0, seconds=1, connections=2, grace=5)
    finally:
        httpbench.stop_server(server)
    assert fixed["offered"] == 200 and fixed["answered"] == 200 and fixed["lost"] == 0
    assert fixed["statuses"] == {"200": 200}
    assert closed["answered"] > 0 and closed["errors"] == 0


def test_load_generator_refuses_other_hosts(tmp_path: Path) -> None:
    bodies = tmp_path / "b.jsonl"
    bodies.write_text("{}\n")
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("loadgen.py")),
            "--host",
            "10.0.0.1",
            "--port",
            "80",
            "--bodies",
            str(bodies),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "loopback" in done.stderr


def test_get_requests_carry_their_headers() -> None:
    import loadgen

    (request,) = loadgen.build_requests("127.0.0.1", 80, "/a?b=1", [], ["X-Forwarded-User: bob"])
    assert request.startswith(b"GET /a?b=1 HTTP/1.1\r\n")
    assert b"\r\nX-Forwarded-User: bob\r\n" in request
    assert request.endswith(b"\r\n\r\n")


def test_grpc_load_against_the_noop_server() -> None:
    """The gRPC generator answers every call it offers, against the no-op baseline server."""
    import enforcement

    with_tmp = httpbench.free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "enforcement.py"),
            "--serve-noop-grpc",
            str(with_tmp),
        ]
    )
    try:
        result = enforcement.grpcload(with_tmp, rate=200, seconds=0.5)
        assert result["offered"] == 100
        assert result["answered"] == 100 and result["errors"] == 0
        assert result["grpc_status_codes"] == {"0": 100}
        merged = enforcement.median_run([result, result, result])
        assert (
            merged["offered"] == 300 and merged["p99_each_run"] == [result["latency_ms"]["p99"]] * 3
        )
    finally:
        server.terminate()
        server.wait(10)


def test_identity_bench_measures_what_it_reports(tmp_path: Path) -> None:
    """Each identity figure comes from calls that succeeded: every offered FetchJWTSVID is
    answered by the attested agent, and issuance rates are positive."""
    import importlib

    identity = importlib.import_module("identity")
    rates = identity.issuance(runs=1, seconds=0.05)
    assert all(median > 0 for median, _ in rates.values())
    agent = identity.Agent(tmp_path)
    try:
        run = identity.fetch_latency(5, 20.0, 0.5, True, tmp_path, agent)
    finally:
        agent.close()
    assert run["errors"] == 0 and run["calls"] == 50


def test_admission_bench_object_and_report() -> None:
    import admission
    from trustplane.posture.engine import Engine, select
    from trustplane.posture.packs import load_pack

    obj = admission.deployment()
    assert len(obj["spec"]["template"]["spec"]["containers"]) == 10
    restricted = Engine(select(load_pack("pss-restricted").rules, None))
    assert restricted.evaluate(obj) == []  # it passes restricted: every rule runs to the end
    inproc = admission.in_process(quick=True)
    assert inproc["findings"] == [
        "zero-trust/egress-annotation",
        "zero-trust/image-attested",
        "zero-trust/image-digest",
    ]
    served = {
        "review": {"n": 2, "p50_ms": 3.0, "p99_ms": 12.0, "max_ms": 12.0},
        "healthz": {"n": 2, "p50_ms": 0.3, "p99_ms": 0.5, "max_ms": 0.5},
    }
    text = admission.report(inproc, served, "cmd")
    assert "| raw CEL" in text and "× raw CEL" in text
    assert "12.00 ms, FAIL" in text


def test_risk_cache_bench_never_reuses_tier_0_and_counts_every_request() -> None:
    """The risk-cache bench on a short stream: it exits 0 (no Tier 0 reuse, asserted by the
    bench itself) and its table accounts for every request of the stream."""
    bench = str(Path(__file__).parent / "risk_cache.py")
    done = subprocess.run(
        [sys.executable, bench, "--requests=400", "--no-docs"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| risk-aware | all | 400 |" in done.stdout
    assert "| risk-aware | 0 |" in done.stdout and "0 evaluator cache hits" in done.stdout
