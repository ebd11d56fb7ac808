"""Revocation latency: from the revoke call on one replica to the first deny on another, and
from the lift call to the first allow again.

    .venv/bin/python bench/revocation.py            # about a minute; updates docs/benchmarks.md
    .venv/bin/python bench/revocation.py --trials 20 --no-docs

Two `trustplane serve` replicas share one PostgreSQL (a fresh schema in the `test` database at
127.0.0.1:5432). Each trial revokes a new principal on replica A (`POST /v1/revocations`) and
asks replica B the same allowed question in a tight loop until it denies; the latency is from
sending the revoke to receiving B's first deny. Then it lifts the revocation on A
(`POST /v1/revocations/{id}/lift`) and asks B until it allows again. The baseline, in the same
run, asks A itself (the revoking node applies a revocation or a lift before it answers the
call). Floor: p99 ≤ 1 s for both.

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


def trial(a: httpx.Client, b: httpx.Client, token: str, user: str) -> tuple[float, float]:
    """Seconds from sending the revoke of `user` to A until B first denies `user`, and from
    sending the lift to A until B first allows `user` again."""
    body = question(user)
    if b.post("/access/v1/evaluation", json=body).json()["decision"] is not True:
        raise RuntimeError(f"{user} is not allowed before the revocation")
    admin = {"authorization": f"Bearer {token}"}
    started = time.perf_counter()
    revoked = a.post(
        "/v1/revocations",
        # The bench's users are in no entity list nor inventory: revoking them takes force.
        json={"kind": "principal", "target": f'User::"{user}"', "reason": "bench", "force": True},
        headers=admin,
    )
    if revoked.status_code != 201:
        raise RuntimeError(f"revoke failed: {revoked.status_code} {revoked.text}")
    revoke_latency = until(b, body, False, started, f"{user} still allowed")
    started = time.perf_counter()
    path = f"/v1/revocations/{revoked.json()['id']}/lift"
    lifted = a.post(path, json={"reason": "bench"}, headers=admin)
    if lifted.status_code != 200:
        raise RuntimeError(f"lift failed: {lifted.status_code} {lifted.text}")
    return revoke_latency, until(b, body, True, started, f"{user} still denied")


def until(
    client: httpx.Client, body: dict[str, Any], want: bool, started: float, why: str
) -> float:
    """Seconds since `started` when `client` first answers `want`."""
    while True:
        if client.post("/access/v1/evaluation", json=body).json()["decision"] is want:
            return time.perf_counter() - started
        if time.perf_counter() - started > 10:
            raise RuntimeError(f"{why} 10 s later")


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
                cross, local, cross_lift, local_lift = [], [], [], []
                for i in range(trials):
                    revoke_s, lift_s = trial(ca, cb, a.admin_token, f"cross-{i}")
                    cross.append(revoke_s)
                    cross_lift.append(lift_s)
                    revoke_s, lift_s = trial(ca, ca, a.admin_token, f"local-{i}")
                    local.append(revoke_s)
                    local_lift.append(lift_s)
                log(f"{trials} trials each")
        finally:
            httpbench.stop_server(a)
            httpbench.stop_server(b)
    return {
        "trials": trials,
        "other_replica": summary(cross),
        "same_replica": summary(local),
        "lift_other_replica": summary(cross_lift),
        "lift_same_replica": summary(local_lift),
    }


def report(result: dict[str, Any], trials: int) -> str:
    other, same = result["other_replica"], result["same_replica"]
    lift_other, lift_same = result["lift_other_replica"], result["lift_same_replica"]
    worst = max(other["p99_ms"], lift_other["p99_ms"])
    verdict = "PASS" if worst <= 1000 else "FAIL"
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
            "| lift on A, first allow seen on | trials | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|",
            f"| replica B (same PostgreSQL, NOTIFY) | {trials} | {lift_other['p50_ms']} | "
            f"{lift_other['p99_ms']} | {lift_other['max_ms']} |",
            f"| replica A itself (baseline) | {trials} | {lift_same['p50_ms']} | "
            f"{lift_same['p99_ms']} | {lift_same['max_ms']} |",
            "",
            f"Floor p99 ≤ 1 s on the other replica: revoke **{other['p99_ms']} ms**, lift "
            f"**{lift_other['p99_ms']} ms**, {verdict}.",
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
