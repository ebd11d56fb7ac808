"""Admission review cost: a 10-container Deployment through every shipped rule pack.

    .venv/bin/python bench/admission.py            # about a minute; updates docs/benchmarks.md
    .venv/bin/python bench/admission.py --quick --no-docs

In process, interleaved rounds (see "Ground rules" in docs/benchmarks.md) of:

- `raw CEL`: the baseline — the same compiled expressions executed on one prebuilt CEL
  context, nothing else (no null stripping, no pod extraction, no messages, no modes);
- `engine`: `Engine.evaluate` of the Deployment (every rule of pss-restricted, which includes
  pss-baseline, and zero-trust);
- `review`: the webhook's whole answer without HTTP: AdmissionReview JSON parsed and validated,
  reviewed in a namespace that enforces pss-restricted and warns zero-trust, the decision built,
  the answer encoded as JSON.

Over HTTPS on loopback, a real `trustplane serve` (TLS, the same modes, SQLite ledger in batch
durability): sequential `POST /v1/admission` on one keep-alive connection, interleaved in
chunks with the same server's `GET /healthz` (the no-op baseline: TLS, HTTP and routing only).
Floor: p99 ≤ 10 ms per review.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cel
import httpx
import orjson

from common import ROOT, Contender, interleaved, median_ratio, percentile, replace_section

sys.path.insert(0, str(ROOT))

from tests.tlscert import self_signed

from trustplane.config import AdmissionSettings
from trustplane.enforcement.admission import AdmissionReview, AdmissionWebhook
from trustplane.posture.engine import Engine
from trustplane.posture.functions import CUSTOM_FUNCTIONS
from trustplane.posture.image_attestations import unattested_function
from trustplane.posture.packs import PackRef, pack_names, selection
from trustplane.posture.rules import Mode
from trustplane.posture.workloads import pod_of

DOCS = ROOT / "docs" / "benchmarks.md"
MODES = {"enforce": ["pss-restricted"], "warn": ["zero-trust"], "audit": []}
PARAMS = {"approved_registries": ["registry.example.com/"]}
FLOOR_MS = 10.0


def deployment(containers: int = 10) -> dict[str, Any]:
    """A realistic Deployment: restricted-compliant, with zero-trust findings to report."""

    def container(i: int) -> dict[str, Any]:
        return {
            "name": f"app-{i}",
            "image": f"registry.example.com/shop/app-{i}:1.{i}",  # not pinned: a finding
            "ports": [{"containerPort": 8080 + i, "name": "http"}],
            "env": [{"name": f"VAR_{j}", "value": f"value-{j}"} for j in range(6)]
            + [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "p"}}}],
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"memory": "256Mi"},
            },
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": True,
            },
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080 + i}},
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080 + i}},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "shop",
            "namespace": "shop",
            "labels": {
                "trustplane.io/owner": "shop-team",
                "trustplane.io/data-classification": "internal",
            },
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},  # no egress annotation: a finding
                "spec": {
                    "serviceAccountName": "shop",
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container(i) for i in range(containers)],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def review_body(obj: dict[str, Any], uid: str) -> bytes:
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
                "namespace": "shop",
                "name": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "ci-deployer", "groups": ["system:authenticated"]},
                "object": obj,
                "dryRun": False,
            },
        }
    )


def in_process(quick: bool) -> dict[str, Any]:
    obj = deployment()
    every_pack = [(PackRef.parse(name), Mode.ENFORCE) for name in pack_names()]
    chosen = selection(every_pack)
    # zero-trust/image-attested asks the attestation index; an empty one here (the images are
    # not pinned, so none could be attested), as the webhook below has without a store.
    service = {"unattested": unattested_function(None)}
    engine = Engine(chosen, PARAMS, functions=service)
    pod = pod_of(obj)
    assert pod is not None
    variables = {
        "object": obj,
        "objectMetadata": obj["metadata"],
        "kind": "Deployment",
        "namespace": "shop",
        "params": PARAMS,
        "metadata": pod.metadata,
        "spec": pod.spec,
        "containers": pod.containers(),
    }
    programs = [s.variant.program for s in chosen]
    context = cel.Context(variables, functions={**CUSTOM_FUNCTIONS, **service})

    def raw(_: Any) -> None:
        for program in programs:
            program.execute(context)

    webhook = AdmissionWebhook(None, AdmissionSettings(**MODES, params=PARAMS))
    body = review_body(obj, "bench")

    def review(payload: bytes) -> bytes:
        parsed = AdmissionReview.model_validate_json(payload)
        answer, _decision, _findings = webhook.review(parsed.request)
        return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                             **answer})  # fmt: skip

    findings = engine.evaluate(obj)
    contenders = [
        Contender("raw CEL (same expressions, one prebuilt context)", raw, [None]),
        Contender("engine: Engine.evaluate", lambda o: engine.evaluate(o), [obj]),
        Contender("review: parse + review + encode", review, [body]),
    ]
    rounds, calls, seconds = (3, 300, 1.0) if quick else (7, 1000, 2.0)
    for c in contenders:  # warm-up
        c.fn(c.items[0])
    per_round = interleaved(contenders, rounds=rounds, max_calls=calls, max_seconds=seconds)
    base = contenders[0].name
    rows = []
    for c in contenders:
        summary = c.result.summary()
        summary["ratio"] = median_ratio(per_round, c.name, base)
        rows.append(summary)
    return {
        "rules": len(chosen),
        "expressions": len(programs),
        "findings": sorted({f.rule_id for f in findings}),
        "rows": rows,
    }


def served(quick: bool, workdir: Path) -> dict[str, Any]:
    cert, key = self_signed(workdir)
    state = workdir / "state"
    env = {
        **os.environ,
        "TRUSTPLANE_STATE_DIR": str(state),
        "TRUSTPLANE_POLICY__BUNDLE_DIR": str(ROOT / "examples" / "shop"),
        "TRUSTPLANE_POLICY__WATCH": "false",
        "TRUSTPLANE_GRPC__ENABLED": "false",
        "TRUSTPLANE_LOG_LEVEL": "warning",
        "TRUSTPLANE_TLS__CERT_FILE": str(cert),
        "TRUSTPLANE_TLS__KEY_FILE": str(key),
        "TRUSTPLANE_ADMISSION": json.dumps(MODES),
        "TRUSTPLANE_ADMISSION__PARAMS": json.dumps(PARAMS),
    }
    exe = [sys.executable, "-m", "trustplane"]
    subprocess.run([*exe, "init"], env=env, check=True, capture_output=True)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env["TRUSTPLANE_SERVER__PORT"] = str(port)
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen([*exe, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=str(cert))
    client = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context, timeout=10)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"server not ready: {(workdir / 'server.log').read_text()}")
            time.sleep(0.2)
        obj = deployment()
        bodies = [review_body(obj, f"uid-{i}") for i in range(64)]
        headers = {"content-type": "application/json"}
        answer = client.post("/v1/admission", content=bodies[0], headers=headers).json()
        timings: dict[str, list[float]] = {"review": [], "healthz": []}
        chunks, per_chunk = (4, 250) if quick else (10, 500)
        for _ in range(chunks):
            for i in range(per_chunk):
                t0 = time.perf_counter()
                response = client.post("/v1/admission", content=bodies[i % 64], headers=headers)
                timings["review"].append(time.perf_counter() - t0)
                assert response.status_code == 200
            for _ in range(per_chunk):
                t0 = time.perf_counter()
                client.get("/healthz")
                timings["healthz"].append(time.perf_counter() - t0)
        result = {}
        for name, values in timings.items():
            ordered = sorted(values)
            result[name] = {
                "n": len(ordered),
                "p50_ms": percentile(ordered, 50) * 1000,
                "p99_ms": percentile(ordered, 99) * 1000,
                "max_ms": ordered[-1] * 1000,
            }
        result["allowed"] = answer["response"]["allowed"]
        result["warnings"] = len(answer["response"].get("warnings", []))
        return result
    finally:
        client.close()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def report(inproc: dict[str, Any], http: dict[str, Any] | None, command: str) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}, load {load:.2f}); "
        f"command: `{command}`.",
        "",
        f"A 10-container Deployment; {inproc['rules']} rules of every shipped pack "
        f"({', '.join(pack_names())}). Findings: {', '.join(inproc['findings']) or 'none'}.",
        "",
        "| in process | median µs/review | p50 µs | p99 µs | × raw CEL |",
        "|---|---|---|---|---|",
    ]
    for row in inproc["rows"]:
        lines.append(
            f"| {row['name']} | {row['median_us']:,.1f} | {row['p50_call_us']:,.1f} | "
            f"{row['p99_call_us']:,.1f} | {row['ratio']:.2f}× |"
        )
    if http is not None:
        lines += [
            "",
            "| HTTPS on loopback, one connection | requests | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|",
        ]
        for name, label in (
            ("review", "POST /v1/admission (the Deployment)"),
            ("healthz", "GET /healthz (no-op baseline, same server)"),
        ):
            r = http[name]
            lines.append(
                f"| {label} | {r['n']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['max_ms']:.2f} |"
            )
        p99 = http["review"]["p99_ms"]
        verdict = "PASS" if p99 <= FLOOR_MS else "FAIL"
        lines += ["", f"Floor p99 ≤ {FLOOR_MS:.0f} ms per review (served): **{p99:.2f} ms, "
                  f"{verdict}**."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    args = parser.parse_args(argv)
    inproc = in_process(args.quick)
    http = None
    if not args.no_http:
        with tempfile.TemporaryDirectory(prefix="tp-admission-bench-") as tmp:
            http = served(args.quick, Path(tmp))
    command = ".venv/bin/python bench/admission.py" + (" --quick" if args.quick else "")
    text = report(inproc, http, command)
    print(text)
    if not args.no_docs:
        replace_section(DOCS, "admission", text, "Admission results")


if __name__ == "__main__":
    main()
