"""What the trust plane adds to an in-process decision, in one run.

    python bench/trust.py [--quick] [--no-docs]

Contenders, interleaved round by round over the shop's own test requests (bench/common.py):
`evaluate` (the evaluator alone, as the server configures its cache) against the same
evaluation behind the trust plane's hook (`TrustAssessor` → evaluate → the assessment attached
to the decision), with three kinds of evidence: none (AuthZEN callers), a verified token from a
loopback address (the authentication signals), and a token from global addresses (network
signals from geoip2fast and the travel history: in memory, written behind to a SQLite store).
Prints mean µs per call and the median per-round ratio to `evaluate`, and replaces the section
between the `bench:trust` markers of docs/benchmarks.md unless `--no-docs` is given. The
target (issue 15) is <= 1.25x for the trust computation.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ROOT,
    SHOP,
    Contender,
    interleaved,
    median_cpu_ratio,
    median_ratio,
    replace_section,
)
from inproc import PdpHarness

DOCS = ROOT / "docs" / "benchmarks.md"
GLOBAL = ["81.2.69.160", "8.8.8.8", "1.1.1.1", "185.220.101.1"]


def without_trust(runtime: Any, cache_rules: bool = True) -> Any:
    """The runtime's decision point with no trust assessment: the same decision without it.
    With `cache_rules` it keeps the risk-aware cache's rules (tier 0 always live), which do
    not need the trust plane: then the two differ by the trust computation alone. Without
    them it is the decision point as it was before the trust plane (tier-0 resources cached
    like any other), shown for comparison."""
    from trustplane.decision.point import PolicyDecisionPoint
    from trustplane.decision.risk_cache import RiskCache
    from trustplane.server.runtime import cache_rules as rules_from

    return PolicyDecisionPoint(
        bundles=runtime.bundles,
        revocations=runtime.revocations,
        elevation=runtime.governance.state.elevation,
        recorder=runtime.recorder,
        metrics=runtime.metrics,
        deny_spike=runtime.deny_spike,
        cache=RiskCache(rules_from(runtime.settings.policy)) if cache_rules else None,
        epoch=runtime.cache_epoch if cache_rules else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    rounds, max_calls, max_seconds = (3, 3000, 0.5) if args.quick else (5, 20_000, 2.0)

    from trustplane.config import Settings
    from trustplane.decision.loader import LoadOptions, load_bundle
    from trustplane.decision.policy_bundle import BundleSource
    from trustplane.governance.catalog import BUNDLE_FILES
    from trustplane.model import Evidence
    from trustplane.store.database import create_store_engine, migrate
    from trustplane.trust.behaviour import BehaviourState
    from trustplane.trust.device import DeviceIndex
    from trustplane.trust.policy import BUNDLE_FILES as TRUST_FILES
    from trustplane.trust.service import assessor_from_settings
    from trustplane.trust.travel_history import TravelHistory

    defaults = Settings()
    loaded = load_bundle(
        BundleSource.from_dir(SHOP),
        LoadOptions(
            decision_cache_size=defaults.policy.decision_cache_size,
            decision_ttl_seconds=defaults.policy.decision_ttl_seconds,
            extra_files=BUNDLE_FILES + TRUST_FILES,
        ),
    )
    bundle, evaluator = loaded.bundle, loaded.evaluator
    # The tests set context.trust themselves; callers do not (the PDP computes it).
    requests = [
        dataclasses.replace(
            t.request, context={k: v for k, v in t.request.context.items() if k != "trust"}
        )
        for t in bundle.tests
        if t.at is None and t.unmapped is None
    ]
    now = int(time.time())
    claims = {"amr": ["pwd", "otp"], "auth_time": now - 60, "iat": now - 60, "exp": now + 300}
    with_token = [
        dataclasses.replace(r, evidence=Evidence(claims, "127.0.0.1", False, "token"))
        for r in requests
    ]
    travelling = [
        dataclasses.replace(r, evidence=Evidence(claims, GLOBAL[i % len(GLOBAL)], False, "token"))
        for i, r in enumerate(requests)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_store_engine(f"sqlite:///{tmp}/trustplane.db")
        migrate(engine)
        # As the server builds it: a travel history, an (empty) device index and a behaviour
        # history in memory.
        history = TravelHistory(engine)
        assess = assessor_from_settings(
            Settings(state_dir=Path(tmp)),
            engine,
            history=history,
            devices=DeviceIndex(lambda: (0, [])),
            behaviour=BehaviourState(),
        )
        assess(travelling[0], bundle)  # geoip2fast's database loads on first use: not timed

        def behind_trust(request: Any) -> Any:
            # As the decision point does: the assessment goes in as the answer is built.
            assessed, trust = assess(request, bundle)
            return evaluator.evaluate(assessed, trust=trust)

        # The whole in-process decision as a server makes it (decision cache on, ledger
        # charged until committed: bench/inproc.py's harness), with and without the trust plane.
        # One harness (runtime, ledger, writer thread) per contender: each ledger then grows
        # alike, and no contender's writer is still busy with another's records.
        harnesses = [PdpHarness(False, cache_size=10_000) for _ in range(5)]
        plain, before, *scored = harnesses
        plain.pdp = without_trust(plain.runtime)
        before.pdp = without_trust(before.runtime, cache_rules=False)
        decided = [
            Contender(f"decide + ledger{label}", h.decide, items, h.after_run, h.cpu_elsewhere)
            for label, h, items in (
                ("", plain, with_token),
                (" (no risk-aware cache rules)", before, with_token),
                (" + trust: no evidence", scored[0], requests),
                (" + trust: token, loopback", scored[1], with_token),
                (" + trust: token, global address", scored[2], travelling),
            )
        ]
        contenders = [
            Contender("evaluate", evaluator.evaluate, requests),
            Contender("trust: no evidence", behind_trust, requests),
            Contender("trust: token, loopback", behind_trust, with_token),
            Contender("trust: token, global address", behind_trust, travelling),
            *decided,
        ]
        for harness in harnesses:
            harness.warm_up(travelling)
        try:
            per_round = interleaved(
                contenders, rounds=rounds, max_calls=max_calls, max_seconds=max_seconds
            )
        finally:
            recorded = [harness.close() for harness in harnesses]
            history.stop()
            engine.dispose()
        every = all(r["ledger_recorded_every_decision"] for r in recorded)
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {rounds} rounds, "
        f"{len(requests)} requests (the shop's tests), `python bench/trust.py"
        + (" --quick`" if args.quick else "`"),
        "",
        "| contender | mean µs/call (median round) | ratio to its baseline | CPU ratio |",
        "|---|---:|---:|---:|",
    ]
    for contender in contenders:
        base = "decide + ledger" if contender.name.startswith("decide") else "evaluate"
        means = sorted(r[contender.name] for r in per_round)
        ratio = median_ratio(per_round, contender.name, base)
        cpu = median_cpu_ratio(contenders, contender.name, base)
        lines.append(
            f"| {contender.name} | {means[len(means) // 2]:.1f} | {ratio:.2f}x (to {base}) | "
            + (f"{cpu:.2f}x |" if cpu is not None else "- |")
        )
    lines += [
        "",
        "Every decision of the `decide` contenders is in the ledger: "
        + ("yes" if every else f"NO ({recorded})"),
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_docs:
        replace_section(DOCS, "trust", text, "Trust plane cost")


if __name__ == "__main__":
    main()
