"""How long `rollout status` takes over a large ledger.

    python bench/rollout.py [--decisions N] [--would-deny-every K]

Fills a SQLite store with N decision rows (default 1,000,000) of the shop's refund route, one
in K (default 10) a would-deny of its observe-mode policy, from 50 principals, with the
`rollout_evidence` rows the ledger writer derives from each record; then times
`RolloutStatus.evaluate` (what `GET /v1/rollout/status` computes) `--runs` times and prints the
median, beside a same-run baseline (a full count of the decisions table). The
rows are written directly (valid query columns and records, placeholder leaf hashes): this
measures the status query, not the ledger. The target is 1,000,000 decisions within 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--would-deny-every", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from trustplane.decision.policy_bundle import BundleSource, compile_bundle
    from trustplane.rollout.gates import RolloutStatus
    from trustplane.rollout.labels import LabelStore
    from trustplane.rollout.policy import BUNDLE_FILES
    from trustplane.store.database import create_store_engine, migrate
    from trustplane.store.policy_revisions import BundleStore
    from trustplane.store.tables import decisions, rollout_evidence
    from trustplane.telemetry.rowcheck import evidence

    directory = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    engine = create_store_engine(f"sqlite:///{directory / 'trustplane.db'}")
    migrate(engine)
    bundle = compile_bundle(BundleSource.from_dir(SHOP), extra_files=BUNDLE_FILES)
    revisions = BundleStore(engine)
    revisions.save_revision(bundle.revision, bundle.name, dict(bundle.source.files), str(SHOP))
    revisions.record_activation(bundle.revision, "start", "bench")
    now = time.time()
    batch: list[dict[str, object]] = []
    found: list[dict[str, object]] = []
    started = time.perf_counter()
    for seq in range(args.decisions):
        would = seq % args.would_deny_every == 0
        user = f"u{seq % 50}"
        record = {
            "kind": "decision",
            "decision": "allow",
            "shadow": "deny" if would else "allow",
            "reasons": ["support-refunds-with-mfa"],
            "shadow_reasons": ["forbid-large-refunds"] if would else [],
            "would_change": ["forbid-large-refunds"] if would else [],
            "request": {"principal": {"type": "User", "id": user}, "context": {"amount_cents": 1}},
            "time": "2026-01-01T00:00:00.000000Z",
        }
        policies = " support-refunds-with-mfa forbid-large-refunds " if would else " "
        for policy_id, cohort in evidence(record):  # what the ledger writer derives
            found.append(
                {
                    "policy_id": policy_id,
                    "seq": seq,
                    "decision_id": f"{seq:036d}",
                    "ts": now + seq * 1e-6,
                    "principal": f'User::"{user}"',
                    "cohort": cohort,
                }
            )
        batch.append(
            {
                "seq": seq,
                "decision_id": f"{seq:036d}",
                "ts": now + seq * 1e-6,
                "kind": "decision",
                "principal": f'User::"{user}"',
                "action": 'Action::"payments:refund"',
                "resource": 'Api::"payments.refund"',
                "decision": "allow",
                "shadow": "deny" if would else "allow",
                "policies": policies,
                "revision": bundle.revision,
                "record": json.dumps(record).encode(),
                "leaf_hash": bytes(32),
            }
        )
        if len(batch) == 50_000:
            with engine.begin() as connection:
                connection.execute(decisions.insert(), batch)
                connection.execute(rollout_evidence.insert(), found)
            batch, found = [], []
    if batch:
        with engine.begin() as connection:
            connection.execute(decisions.insert(), batch)
            if found:
                connection.execute(rollout_evidence.insert(), found)
    print(f"filled {args.decisions:,} decisions in {time.perf_counter() - started:.1f} s")
    status = RolloutStatus(LabelStore(engine), revisions)
    timings, baseline = [], []
    for _ in range(args.runs):
        started = time.perf_counter()
        with engine.connect() as connection:  # same-run baseline: one pass over the ledger
            connection.exec_driver_sql("SELECT count(*) FROM decisions").scalar_one()
        baseline.append(time.perf_counter() - started)
        started = time.perf_counter()
        (result,) = status.evaluate(bundle, now=now + args.decisions * 1e-6 + 1)
        timings.append(time.perf_counter() - started)
    median = statistics.median(timings)
    print(
        f"rollout status: {args.decisions:,} decisions, {result.would_denies:,} would-denies: "
        f"median {median:.3f} s of {args.runs} (min {min(timings):.3f}, max "
        f"{max(timings):.3f}); baseline SELECT count(*) FROM decisions median "
        f"{statistics.median(baseline):.3f} s (ratio {median / statistics.median(baseline):.1f}); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
