"""What the pages' ledger-reading panels cost: the on-call latency heatmap and the executive
page's 30-day auth success.

    python bench/ui_panels.py [--decisions N] [--runs R]

Fills a SQLite store with N decision rows (default 200,000) spread over the last hour, each
record with an `eval_micros` and one in fifty refused a credential, then times, `--runs` times
each: `latency_grid` over the hour (what every on-call view reads), `auth_success` over the
window (what the executive page reads at most once per `ui.summary_seconds`), and beside them
the same-run baseline `decision_buckets` over the hour (the count query the executive chart
already ran, which reads only indexed columns). The rows are written directly (valid query
columns and records, placeholder leaf hashes): this measures the queries, not the ledger.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from trustplane.outcomes.scorecard import auth_success
    from trustplane.store.database import create_store_engine, migrate
    from trustplane.store.tables import decisions
    from trustplane.telemetry.summary import decision_buckets, latency_grid

    directory = Path(tempfile.mkdtemp(prefix="ui-bench-"))
    engine = create_store_engine(f"sqlite:///{directory / 'trustplane.db'}")
    migrate(engine)
    now = time.time()
    since = now - 3600
    step = 3600 / args.decisions
    batch: list[dict[str, object]] = []
    started = time.perf_counter()
    for seq in range(args.decisions):
        refused = seq % 50 == 0
        record = {
            "kind": "decision",
            "decision": "deny" if refused else "allow",
            "errors": ["token_expired: the token has expired"] if refused else [],
            "reasons": [] if refused else ["support-refunds-with-mfa"],
            "eval_micros": 40 + (seq * 7919) % 3000,
            "request": {"principal": {"type": "User", "id": f"u{seq % 50}"}},
        }
        batch.append(
            {
                "seq": seq,
                "decision_id": f"{seq:036d}",
                "ts": since + seq * step,
                "kind": "decision",
                "principal": f'User::"u{seq % 50}"',
                "action": 'Action::"payments:refund"',
                "resource": 'Api::"payments.refund"',
                "decision": record["decision"],
                "shadow": record["decision"],
                "policies": " ",
                "revision": None,
                "record": json.dumps(record).encode(),
                "leaf_hash": bytes(32),
            }
        )
        if len(batch) == 50_000:
            with engine.begin() as connection:
                connection.execute(decisions.insert(), batch)
            batch = []
    if batch:
        with engine.begin() as connection:
            connection.execute(decisions.insert(), batch)
    print(f"filled {args.decisions:,} decisions in {time.perf_counter() - started:.1f} s")

    def timed(fn: Callable[[], Any]) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    found: dict[str, list[float]] = {"baseline": [], "grid": [], "auth": []}
    for _ in range(args.runs):  # interleaved, so load changes hit each alike
        found["baseline"].append(timed(lambda: decision_buckets(engine, since, now + 1, 3600)))
        found["grid"].append(timed(lambda: latency_grid(engine, since, now + 1, 300)))
        found["auth"].append(timed(lambda: auth_success(engine, since, now + 1)))
    base = statistics.median(found["baseline"])
    for name, label in (
        ("grid", "latency_grid (on-call heatmap)"),
        ("auth", "auth_success (executive SLA)"),
    ):
        median = statistics.median(found[name])
        print(
            f"{label}: {args.decisions:,} decisions in the hour: median {median:.3f} s of "
            f"{args.runs} (min {min(found[name]):.3f}, max {max(found[name]):.3f}); "
            f"baseline decision_buckets median {base:.3f} s (ratio {median / base:.1f})"
        )
    print(f"load average {os.getloadavg()[0]:.1f}")
    engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
