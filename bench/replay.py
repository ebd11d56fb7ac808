"""Impact replay's rate against raw Cedar's on the same recorded decisions, in one run.

    python bench/replay.py [--decisions N] [--runs R]

Records N decisions of the example estate (default 20,000: people and services, every action
the schema names, contexts drawn with a fixed seed) the way the server does (trust assessor,
evaluator, masked ledger entry), keeps their records in memory, then, R times (default 5):

- raw Cedar: `cedarpy.is_authorized_batch` over the same requests (the request as recorded,
  with the `context.trust` Cedar saw) against the bundle's whole policy set, entities and
  schema, each handle built once beforehand: the floor any evaluation of these decisions pays;
- replay: `rollout.impact.replay` of the records against a freshly loaded copy of the bundle
  (answer cache off): reading each record, rebuilding its request, trust and elevation, the
  evaluator's enforced and shadow answers, comparing, grouping.

Prints the median rate of each (decisions per second) and their ratio; the target is replay at
≥ 0.5× raw Cedar. Reading the records from the store is not timed here (it is the same stream
`audit verify` reads).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop"

ACTIONS = [
    "payments:refund",
    "payments:read",
    "payments:charge",
    "inventory:read",
    "inventory:reserve",
    "billing:read",
    "ops:read-logs",
    "ops:restart",
    "db:query",
    "db:admin",
    "customers:export",
    "admin:console-login",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import cedarpy
    import orjson

    from trustplane.decision.loader import LoadOptions, load_bundle
    from trustplane.decision.policy_bundle import BundleSource
    from trustplane.governance.catalog import BUNDLE_FILES
    from trustplane.model import AccessRequest, EntityRef
    from trustplane.rollout.impact import Grants, replay, replay_input, trust_view
    from trustplane.rollout.policy import BUNDLE_FILES as ROLLOUT_FILES
    from trustplane.telemetry.ledger import decision_entry
    from trustplane.telemetry.masking import Masker
    from trustplane.trust.assessor import TrustAssessor
    from trustplane.trust.policy import BUNDLE_FILES as TRUST_FILES

    options = LoadOptions(extra_files=BUNDLE_FILES + TRUST_FILES + ROLLOUT_FILES)
    recorded = load_bundle(BundleSource.from_dir(SHOP), options)
    entities = json.loads((SHOP / "entities.json").read_text())
    principals = [e["uid"] for e in entities if e["uid"]["type"] in ("User", "Service", "CiJob")]
    resources = [
        e["uid"] for e in entities if e["uid"]["type"] in ("Api", "Service", "Dataset", "Database")
    ]
    assess, masker, rng = TrustAssessor([]), Masker([]), random.Random(7)
    records: list[dict[str, Any]] = []
    for _ in range(args.decisions):
        p, r = rng.choice(principals), rng.choice(resources)
        request = AccessRequest(
            EntityRef(p["type"], p["id"]),
            EntityRef("Action", rng.choice(ACTIONS)),
            EntityRef(r["type"], r["id"]),
            {
                "mfa": rng.random() < 0.8,
                "auth_age_seconds": rng.randrange(0, 4000),
                "amount_cents": rng.randrange(0, 100_000),
            },
        )
        seen, assessment = assess(request, recorded.bundle)
        decision = recorded.evaluator.evaluate(seen, trust=assessment)
        records.append(orjson.loads(decision_entry(request, decision, masker).record))

    candidate = load_bundle(BundleSource.from_dir(SHOP), options)  # cache off (size 0)
    view = trust_view(candidate.bundle)
    asked = [replay_input(record, Grants(), view) for record in records]
    cedar_requests = [
        {
            "principal": a.request.principal.uid(),
            "action": a.request.action.uid(),
            "resource": a.request.resource.uid(),
            "context": a.request.context,
        }
        for a in asked
    ]
    bundle = candidate.bundle
    policies = cedarpy.PolicySet.from_json_str(
        json.dumps(
            {
                "staticPolicies": {p.policy_id: p.est for p in bundle.policies},
                "templates": {},
                "templateLinks": [],
            }
        )
    )
    handle = cedarpy.Entities.from_json_str(json.dumps(bundle.entities), schema=bundle.schema)

    from datetime import UTC, datetime

    single_items = [(a.request, datetime.fromtimestamp(a.at.timestamp(), UTC)) for a in asked]
    raw_rates, replay_rates, single_rates = [], [], []
    flips = None
    for _ in range(args.runs):
        started = time.perf_counter()
        cedarpy.is_authorized_batch(cedar_requests, policies, handle, bundle.schema)
        raw_rates.append(len(records) / (time.perf_counter() - started))
        fresh = load_bundle(BundleSource.from_dir(SHOP), options)
        started = time.perf_counter()
        report = replay(records, fresh.evaluator, Grants())
        replay_rates.append(len(records) / (time.perf_counter() - started))
        flips = report.flips
        started = time.perf_counter()
        for request, at in single_items:
            fresh.evaluator.evaluate(request, at=at)
        single_rates.append(len(records) / (time.perf_counter() - started))
    raw, replayed = statistics.median(raw_rates), statistics.median(replay_rates)
    print(f"decisions: {len(records)} (runs: {args.runs}; flips on the same bundle: {flips})")
    print(f"raw Cedar is_authorized_batch: {raw:,.0f}/s (median)")
    print(f"impact replay:                 {replayed:,.0f}/s (median)")
    single = statistics.median(single_rates)
    print(f"replay / raw Cedar:            {replayed / raw:.2f}x (target >= 0.5x)")
    print(f"Evaluator.evaluate one by one: {single:,.0f}/s ({single / raw:.2f}x raw Cedar)")


if __name__ == "__main__":
    main()
