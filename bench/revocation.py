"""Revocation latency: from the revoke call on one replica to the first deny on another.

    .venv/bin/python bench/revocation.py            # about a minute; updates docs/benchmarks.md
    .venv/bin/python bench/revocation.py --trials 20 --no-docs

Two `trustplane serve` replicas share one PostgreSQL (a fresh schema in the `test` database at
127.0.0.1:5432). Each trial revokes a new principal on replica A (`POST /v1/revocations`) and
asks replica B the same allowed question in a tight loop until it denies; the latency is from
sending the revoke to receiving B's first deny. The baseline, in the same run, asks A itself
(the revoking node applies a revocation before it answers the call). Floor: p99 ≤ 1 s.

The bundle is a one-policy bundle that allows every read, so every principal starts allowed and
only the revocation can turn the answer; what is measured is propagation, not policy.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import httpbench
from common import ROOT, log, percentile, replace_section

DOCS = ROOT / "docs" / "benchmarks.md"
PG = "postgresql://127.0.0.1:5432/test"
BUNDLE = {
    "schema.cedarschema": "entity User;\nentity Doc;\n"
    "action read appliesTo { principal: User, resource: Doc };\n",
    "policies.cedar": '@id("anyone-reads") @owner("bench") @description("Every read.")\n'
    'permit (principal, action == Action::"read", resource);\n',
}


@contextmanager
def pg_schema() -> Iterator[str]:
    import psycopg

    schema = f"tp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def question(user: str) -> dict[str, Any]:
    return {
        "subject": {"type": "User", "id": user},
        "action": {"name": "read"},
        "resource": {"type": "Doc", "id": "d"},
    }


def trial(a: httpx.Client, b: httpx.Client, token: str, user: str) -> float:
    """Seconds from sending the revoke of `user` to A until B first denies `user`."""
    body = question(user)
    if b.post("/access/v1/evaluation", json=body).json()["decision"] is not True:
        raise RuntimeError(f"{user} is not allowed before the revocation")
    started = time.perf_counter()
    revoked = a.post(
        "/v1/revocations",
        json={"kind": "principal", "target": f'User::"{user}"', "reason": "bench"},
        headers={"authorization": f"Bearer {token}"},
    )
    if revoked.status_code != 201:
        raise RuntimeError(f"revoke failed: {revoked.status_code} {revoked.text}")
    while True:
        if b.post("/access/v1/evaluation", json=body).json()["decision"] is False:
            return time.perf_counter() - started
        if time.perf_counter() - started > 10:
            raise RuntimeError(f"{user} still allowed 10 s after the revocation")


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(percentile(ordered, 50) * 1000, 2),
        "p99_ms": round(percentile(ordered, 99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def run(trials: int, log: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tp-bench-revoke-") as tmp, pg_schema() as url:
        work = Path(tmp)
        bundle = work / "bundle"
        bundle.mkdir()
        for name, text in BUNDLE.items():
            (bundle / name).write_text(text)
        os.environ["TRUSTPLANE_STORE__URL"] = url  # init and serve both use the shared store
        log("starting replicas A and B on one PostgreSQL schema")
        a = httpbench.start_server("trustplane", work / "a", True, bundle=bundle)
        b = httpbench.start_server("trustplane", work / "b", True, bundle=bundle)
        assert a.admin_token
        try:
            with (
                httpx.Client(base_url=a.base, timeout=10) as ca,
                httpx.Client(base_url=b.base, timeout=10) as cb,
            ):
                cross, local = [], []
                for i in range(trials):
                    cross.append(trial(ca, cb, a.admin_token, f"cross-{i}"))
                    local.append(trial(ca, ca, a.admin_token, f"local-{i}"))
                log(f"{trials} trials each")
        finally:
            httpbench.stop_server(a)
            httpbench.stop_server(b)
    return {
        "trials": trials,
        "other_replica": summary(cross),
        "same_replica": summary(local),
    }


def report(result: dict[str, Any], trials: int) -> str:
    other, same = result["other_replica"], result["same_replica"]
    verdict = "PASS" if other["p99_ms"] <= 1000 else "FAIL"
    return "\n".join(
        [
            "",
            f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
            f"({os.cpu_count()} cores, Python {platform.python_version()}); command: "
            f"`.venv/bin/python bench/revocation.py --trials {trials}`.",
            "",
            "| revoke on A, first deny seen on | trials | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|",
            f"| replica B (same PostgreSQL, NOTIFY) | {trials} | {other['p50_ms']} | "
            f"{other['p99_ms']} | {other['max_ms']} |",
            f"| replica A itself (baseline) | {trials} | {same['p50_ms']} | {same['p99_ms']} | "
            f"{same['max_ms']} |",
            "",
            f"Floor p99 ≤ 1 s on the other replica: **{other['p99_ms']} ms, {verdict}**.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)

    result = run(args.trials, log)
    section = report(result, args.trials)
    print(section)
    if not args.no_docs:
        replace_section(DOCS, "revocation", section, "Revocation results")


if __name__ == "__main__":
    main()
