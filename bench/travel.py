"""Impossible travel across two replicas: a sighting on one, flagged on the other.

    python bench/travel.py [--principals 100] [--no-docs]

Two `trustplane serve` replicas of the shop share one PostgreSQL (a fresh schema in the `test`
database at 127.0.0.1:5432), with a two-city MaxMind-format database (London, New York; built
here with mmdb-writer) and this process as a trusted proxy naming the user
(`pep.identity_header`) and the client address (`X-Forwarded-For`) at forward-auth.

- **1 s apart**: each of `--principals` new principals is seen in London on replica A; one
  second later each asks replica B from New York. Every one must be flagged
  (`impossible_travel` fired: B's `trustplane_trust_signals_fired_total` counts them).
- **propagation**: for each of as many new principals, London on A, then New York on B at
  once; the time from A's answer to B's flagged answer bounds how long A's sighting took to
  reach B (the history is read through the store in B's request). Same-replica baseline: both
  requests on A. Floor: p99 ≤ 1 s, every second request flagged.

Replaces the `bench:travel` section of docs/benchmarks.md unless `--no-docs`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpbench
from common import ROOT, SHOP, log, percentile, replace_section
from revocation import pg_schema

DOCS = ROOT / "docs" / "benchmarks.md"
LONDON, NEW_YORK = "81.2.69.160", "8.8.8.8"
# The proxy's own address: not 127.0.0.1, whose X-Forwarded-For uvicorn itself would apply.
PROXY = "127.0.0.2"
PATH = "/ops/services/checkout/logs"
FIRED = ('signal="impossible_travel"', 'mode="enforce"')


def city_database(path: Path) -> Path:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    for network, (country, lat, lon) in {
        "81.2.69.0/24": ("GB", 51.51, -0.13),
        "8.8.8.0/24": ("US", 40.71, -74.01),
    }.items():
        writer.insert_network(
            IPSet([network]),
            {"country": {"iso_code": country}, "location": {"latitude": lat, "longitude": lon}},
        )
    writer.to_db_file(str(path))
    return path


def as_proxy() -> httpx.HTTPTransport:
    return httpx.HTTPTransport(local_address=PROXY)


def seen(client: httpx.Client, user: str, address: str) -> httpx.Response:
    """nginx's auth subrequest for `user` at `address`, from this trusted proxy."""
    return client.get(
        "/v1/forward-auth",
        headers={
            "X-Original-URI": PATH,
            "X-Original-Method": "GET",
            "X-Forwarded-For": address,
            "X-Forwarded-User": user,
        },
    )


def fired(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("trustplane_trust_signals_fired_total{") and all(
            label in line for label in FIRED
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def apart(a: httpx.Client, b: httpx.Client, users: list[str]) -> int:
    """How many of `users`, seen on A, are flagged on B one second later."""
    before = fired(b)
    for user in users:
        seen(a, user, LONDON)
    time.sleep(1.0)
    for user in users:
        seen(b, user, NEW_YORK)
    return int(fired(b) - before)


def propagation(a: httpx.Client, b: httpx.Client, users: list[str]) -> tuple[list[float], int]:
    """Seconds from A's answer to B's answer, per user, and how many B flagged."""
    times = []
    flagged = 0
    for user in users:
        before = fired(b)
        seen(a, user, LONDON)
        started = time.perf_counter()
        seen(b, user, NEW_YORK)
        times.append(time.perf_counter() - started)
        flagged += int(fired(b) - before)
    return times, flagged


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(percentile(ordered, 50) * 1000, 2),
        "p99_ms": round(percentile(ordered, 99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def run(principals: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tp-bench-travel-") as tmp, pg_schema() as url:
        work = Path(tmp)
        os.environ["TRUSTPLANE_STORE__URL"] = url
        env = {
            "TRUSTPLANE_TRUST": json.dumps({"city_database": str(city_database(work / "c.mmdb"))}),
            "TRUSTPLANE_PEP__IDENTITY_HEADER": "X-Forwarded-User",
            "TRUSTPLANE_SERVER__TRUSTED_PROXIES": f'["{PROXY}/32"]',
        }
        log("starting replicas A and B on one PostgreSQL schema")
        a = httpbench.start_server("trustplane", work / "a", True, extra_env=env, bundle=SHOP)
        b = httpbench.start_server("trustplane", work / "b", True, extra_env=env, bundle=SHOP)
        try:
            with (
                httpx.Client(base_url=a.base, timeout=10, transport=as_proxy()) as ca,
                httpx.Client(base_url=b.base, timeout=10, transport=as_proxy()) as cb,
            ):
                seen(ca, "warm-up", LONDON)  # geoip2fast loads on first use: not measured
                seen(cb, "warm-up", LONDON)
                one_second = apart(ca, cb, [f"apart-{i}" for i in range(principals)])
                log(f"1 s apart: {one_second}/{principals} flagged on B")
                cross, cross_flagged = propagation(
                    ca, cb, [f"cross-{i}" for i in range(principals)]
                )
                local, local_flagged = propagation(
                    ca, ca, [f"local-{i}" for i in range(principals)]
                )
        finally:
            httpbench.stop_server(a)
            httpbench.stop_server(b)
    return {
        "principals": principals,
        "apart_flagged": one_second,
        "cross": summary(cross),
        "cross_flagged": cross_flagged,
        "local": summary(local),
        "local_flagged": local_flagged,
    }


def report(result: dict[str, Any]) -> str:
    n = result["principals"]
    cross, local = result["cross"], result["local"]
    ok = result["apart_flagged"] == n and result["cross_flagged"] == n and cross["p99_ms"] <= 1000
    return "\n".join(
        [
            "",
            f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
            f"({os.cpu_count()} cores shared with other work, Python "
            f"{platform.python_version()}); command: `python bench/travel.py --principals {n}`.",
            "",
            f"Seen in London on A, in New York on B 1 s later: **{result['apart_flagged']}/{n} "
            "flagged** `impossible_travel` on B.",
            "",
            "| London on A, then New York at once on | principals | flagged | p50 ms | p99 ms "
            "| max ms |",
            "|---|---:|---:|---:|---:|---:|",
            f"| replica B (same PostgreSQL) | {n} | {result['cross_flagged']} | "
            f"{cross['p50_ms']} | {cross['p99_ms']} | {cross['max_ms']} |",
            f"| replica A itself (baseline) | {n} | {result['local_flagged']} | "
            f"{local['p50_ms']} | {local['p99_ms']} | {local['max_ms']} |",
            "",
            "The time is from A's answer to B's flagged answer: an upper bound on the "
            "propagation of A's sighting, which B reads through the store in its own request. "
            f"Floor p99 ≤ 1 s and every second request flagged: {'PASS' if ok else 'FAIL'}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--principals", type=int, default=100)
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    result = run(args.principals)
    section = report(result)
    print(section)
    if not args.no_docs:
        replace_section(DOCS, "travel", section, "Impossible travel across replicas")


if __name__ == "__main__":
    main()
