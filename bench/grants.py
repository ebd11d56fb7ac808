"""Grant propagation: a grant written to the shared store, and its revoke on one replica, seen
by another replica.

    .venv/bin/python bench/grants.py            # about a minute; updates docs/benchmarks.md
    .venv/bin/python bench/grants.py --trials 20 --no-docs

Two `trustplane serve` replicas share one PostgreSQL (a fresh schema in the `test` database at
127.0.0.1:5432). The bundle allows reads to members of `Role::"reader"`, and nobody is one.
Each trial:
1. writes a grant of the role for a new user into the store the way an approval does (the
   grant row and the change-feed bump in one transaction; the approval's HTTP call and its
   authentication are left out, so what is measured is propagation), and asks replica B in a
   tight loop until it allows: store commit → first allow on B;
2. revokes the grant on replica A (`POST /v1/revocations`, kind `grant`) and asks B until it
   denies: revoke call sent → first deny on B.
Floor for both: p99 ≤ 1 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import httpbench
from common import ROOT, log, replace_section
from revocation import pg_schema, summary
from trustplane.governance.access import insert_grant
from trustplane.governance.records import Grant, changed
from trustplane.store.database import create_store_engine

DOCS = ROOT / "docs" / "benchmarks.md"
BUNDLE = {
    "schema.cedarschema": "entity Role;\nentity User in [Role];\nentity Doc;\n"
    "action read appliesTo { principal: User, resource: Doc };\n",
    "entities.json": '[{"uid": {"type": "Role", "id": "reader"}, "attrs": {}, "parents": []}]\n',
    "policies.cedar": '@id("readers-read") @owner("bench") @description("Readers read.")\n'
    'permit (principal in Role::"reader", action == Action::"read", resource);\n',
}


def allowed(client: httpx.Client, user: str) -> bool:
    body = {
        "subject": {"type": "User", "id": user},
        "action": {"name": "read"},
        "resource": {"type": "Doc", "id": "d"},
    }
    return bool(client.post("/access/v1/evaluation", json=body).json()["decision"])


def wait_until(client: httpx.Client, user: str, expected: bool, started: float) -> float:
    while True:
        if allowed(client, user) is expected:
            return time.perf_counter() - started
        if time.perf_counter() - started > 10:
            raise RuntimeError(f"{user} still {'denied' if expected else 'allowed'} after 10 s")


def trial(
    engine: Any, a: httpx.Client, b: httpx.Client, token: str, user: str
) -> tuple[float, float]:
    if allowed(b, user):
        raise RuntimeError(f"{user} is allowed before any grant")
    now = time.time()
    grant = Grant(
        str(uuid.uuid4()), "jit", f'User::"{user}"', 'Role::"reader"', None, None, "bench", "",
        "bench", now - 1, now + 3600, None, None, None,
    )  # fmt: skip
    started = time.perf_counter()
    with engine.begin() as connection:
        insert_grant(connection, grant)
        changed(connection)
    granted = wait_until(b, user, True, started)
    started = time.perf_counter()
    revoked = a.post(
        "/v1/revocations",
        json={"kind": "grant", "target": grant.id, "reason": "bench"},
        headers={"authorization": f"Bearer {token}"},
    )
    if revoked.status_code != 201:
        raise RuntimeError(f"revoke failed: {revoked.status_code} {revoked.text}")
    return granted, wait_until(b, user, False, started)


def run(trials: int, log: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tp-bench-grants-") as tmp, pg_schema() as url:
        work = Path(tmp)
        bundle = work / "bundle"
        bundle.mkdir()
        for name, text in BUNDLE.items():
            (bundle / name).write_text(text)
        os.environ["TRUSTPLANE_STORE__URL"] = url
        log("starting replicas A and B on one PostgreSQL schema")
        a = httpbench.start_server("trustplane", work / "a", True, bundle=bundle)
        b = httpbench.start_server("trustplane", work / "b", True, bundle=bundle)
        assert a.admin_token
        engine = create_store_engine(url)
        try:
            with (
                httpx.Client(base_url=a.base, timeout=10) as ca,
                httpx.Client(base_url=b.base, timeout=10) as cb,
            ):
                applied, revoked = [], []
                for i in range(trials):
                    g, r = trial(engine, ca, cb, a.admin_token, f"user-{i}")
                    applied.append(g)
                    revoked.append(r)
                log(f"{trials} trials")
        finally:
            engine.dispose()
            httpbench.stop_server(a)
            httpbench.stop_server(b)
    return {"trials": trials, "grant": summary(applied), "revoke": summary(revoked)}


def report(result: dict[str, Any], trials: int) -> str:
    grant, revoke = result["grant"], result["revoke"]
    verdict = "PASS" if max(grant["p99_ms"], revoke["p99_ms"]) <= 1000 else "FAIL"
    return "\n".join(
        [
            "",
            f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
            f"({os.cpu_count()} cores, Python {platform.python_version()}); command: "
            f"`.venv/bin/python bench/grants.py --trials {trials}`.",
            "",
            "| seen on replica B | trials | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|",
            f"| grant committed to the store → first allow | {trials} | {grant['p50_ms']} | "
            f"{grant['p99_ms']} | {grant['max_ms']} |",
            f"| grant revoked on replica A → first deny | {trials} | {revoke['p50_ms']} | "
            f"{revoke['p99_ms']} | {revoke['max_ms']} |",
            "",
            f"Floor p99 ≤ 1 s: **{verdict}**.",
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
        replace_section(DOCS, "grants", section, "Grant propagation results")


if __name__ == "__main__":
    main()
