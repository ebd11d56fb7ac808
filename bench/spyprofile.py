"""Where a served decision's time goes: py-spy samples of the server under wrk load, sorted
into the parts of the request path (HTTP stack, validation, Cedar, recording ...).

Optional: needs `py-spy` on PATH (`pip install py-spy`); skipped otherwise. Profiling runs in
its own load run, so it never disturbs the measured figures.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpbench

SAMPLE_RATE = 250

# (label, frame substring); the first match in this order claims a main-thread sample.
MAIN_PARTS = [
    ("policy sets compiled per request (stale generation)", "Evaluator._compile"),
    ("Cedar is_authorized (cedarpy)", "is_authorized_batch (cedarpy"),
    ("request entities (with_added_json_str)", "Evaluator._entities_for"),
    ("rest of Evaluator.evaluate (ids, reasons)", "Evaluator.evaluate"),
    ("pydantic validation of the body", "model_validate_json"),
    ("Prometheus metrics", "PolicyDecisionPoint._observe"),
    ("recorder enqueue", "DecisionRecorder.record"),
    ("response body (decision_body, orjson)", "decision_body"),
    ("response body (decision_body, orjson)", "json_response"),
    ("reading the body", "read_body"),
]
WRITER_PARTS = [
    ("writer: building records (mask, canonical JSON, hash)", "DecisionRecorder._entry"),
    ("writer: SQLite insert + commit (SQLAlchemy)", "Ledger.append"),
    ("writer: signing checkpoints", "Ledger.checkpoint"),
]


def available() -> bool:
    return shutil.which("py-spy") is not None


def classify(raw: Path) -> tuple[Counter[str], int]:
    parts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        if "DecisionRecorder._run" in stack:
            label = next((lab for lab, key in WRITER_PARTS if key in stack), "writer: other")
        elif "Thread._bootstrap" in stack:
            label = "other threads"
        else:
            label = next(
                (lab for lab, key in MAIN_PARTS if key in stack),
                "uvicorn + starlette (HTTP parsing, routing, ASGI, event loop)",
            )
        parts[label] += n
    return parts, total


def profile_server(
    kind: str, workdir: Path, bodies: Path, seconds: float, use_cli: bool, log: Any
) -> dict[str, Any]:
    server = httpbench.start_server(kind, workdir, use_cli)
    raw = workdir / f"{kind}.pyspy.txt"
    try:
        httpbench.run_wrk(server, bodies, 4, 1)
        log(f"   profiling {kind} with py-spy for {seconds:g} s under wrk -c4")
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "-p",
                str(server.process.pid),
                "-d",
                str(round(seconds) + 1),
                "-r",
                str(SAMPLE_RATE),
                "-f",
                "raw",
                "-o",
                str(raw),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        time.sleep(0.5)
        load = httpbench.run_wrk(server, bodies, 4, seconds)
        spy.wait(seconds + 30)
    finally:
        httpbench.stop_server(server)
    if not raw.exists():
        return {"error": "py-spy wrote no samples (ptrace not permitted?)"}
    parts, total = classify(raw)
    answered = load["answered"]
    return {
        "requests": answered,
        "rps": load["rps"],
        "samples": total,
        "parts": [
            {
                "part": label,
                "share": round(n / total, 3),
                "us_per_request": round(n / SAMPLE_RATE / answered * 1e6, 1),
            }
            for label, n in parts.most_common()
        ],
    }
