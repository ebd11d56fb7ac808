"""The risk-aware decision cache's hit ratio on the example's traffic mix, Tier 0 never cached.

    python bench/risk_cache.py [--requests 20000] [--rate 50] [--no-docs]

The shop's own test requests (bench/common.py's mix, `context.trust` removed: the PDP computes
it), drawn at random with a fixed seed as a stream of `--requests` at `--rate` per second of
simulated time. A fifth of them carry a verified token from a loopback address whose
authentication is fresh or hours old (so `auth_age`, a volatile signal, fires on some), with
one or two factors and a lifetime of an hour or two days (single-factor standing tokens score
medium). Each
goes through a real `PolicyDecisionPoint` (the trust assessor, the evaluator and its cache), and
an enforcement point's cache (the SDK's rule: an answer is reused for its `ttl_seconds`, keyed
by the request) is simulated on the stream's clock.

Contenders, same stream: `risk-aware` (the default `[policy]` rules: Tier 0, high risk and
fired volatile signals live; low-risk reads 15 s on Tier 1, 60 s on Tier 2; else 5 s) and
`flat 5 s` (the rule before: every answer without errors reused 5 s, Tier 0 included).
Prints the hit ratios by tier and risk and exits non-zero if any Tier 0 answer was reused or
answered from the evaluator's cache; replaces the `bench:risk-cache` section of
docs/benchmarks.md unless `--no-docs`. Counts, not timings: the machine's load does not move
them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, SHOP, replace_section

DOCS = ROOT / "docs" / "benchmarks.md"


class NoRevocations:
    epoch = 0

    def principal(self, _ref: Any) -> None:
        return None


class Active:
    def __init__(self, loaded: Any) -> None:
        self.active = loaded


def stream(requests: list[Any], count: int, seed: int = 11) -> list[Any]:
    from trustplane.model import Evidence

    rng = random.Random(seed)
    now = int(time.time())
    out = []
    for _ in range(count):
        request = rng.choice(requests)
        if rng.random() < 0.2 and request.principal.type == "User":
            age = rng.choice([60, 60, 60, 7200])  # mostly fresh, some hours old
            amr = rng.choice([["pwd", "otp"], ["pwd", "otp"], ["pwd"]])  # some single-factor
            claims = {"amr": amr, "auth_time": now - age, "iat": now - 60}
            # Some standing two-day tokens: with a single factor, medium risk (not volatile).
            claims["exp"] = now + rng.choice([3600, 3600, 172_800])
            request = dataclasses.replace(
                request, evidence=Evidence(claims, "127.0.0.1", False, "token")
            )
        out.append(request)
    return out


def key(request: Any) -> bytes:
    evidence = request.evidence
    return orjson.dumps(
        (
            str(request.principal),
            str(request.action),
            str(request.resource),
            request.resource.properties,
            request.principal.properties,
            request.context,
            evidence.claims if evidence is not None else None,
        ),
        option=orjson.OPT_SORT_KEYS,
    )


def run(pdp: Any, requests: list[Any], rate: float, labeller: Any, bundle: Any) -> dict[str, Any]:
    """Each request at its simulated instant: the PEP's cache first, then the PDP."""
    held: dict[bytes, float] = {}
    labels: dict[bytes, tuple[str, str]] = {}  # a request's tier and risk, from its answer
    pep: Counter[tuple[str, str, str]] = Counter()
    live: Counter[str] = Counter()
    for index, request in enumerate(requests):
        now = index / rate
        k = key(request)
        if held.get(k, -1.0) > now:
            pep[(*labels[k], "reused")] += 1
            continue
        decision = pdp.evaluate(request)
        labels[k] = labeller(request, decision)
        pep[(*labels[k], "asked")] += 1
        if decision.cache is not None and decision.cache.get("live"):
            live[decision.cache["live"]] += 1
        if decision.ttl_seconds > 0 and not decision.errors:
            held[k] = now + decision.ttl_seconds
    return {"pep": pep, "live": live}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per simulated second")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()

    from trustplane.config import Settings
    from trustplane.decision.loader import LoadOptions, load_bundle
    from trustplane.decision.point import PolicyDecisionPoint
    from trustplane.decision.policy_bundle import BundleSource
    from trustplane.decision.risk_cache import NO_TIER, RiskCache
    from trustplane.governance.catalog import BUNDLE_FILES
    from trustplane.server.runtime import cache_rules
    from trustplane.store.database import create_store_engine, migrate
    from trustplane.telemetry.metrics import Metrics
    from trustplane.trust.policy import BUNDLE_FILES as TRUST_FILES
    from trustplane.trust.service import assessor_from_settings

    settings = Settings()
    rules = cache_rules(settings.policy)

    def loaded_with(ttl: int) -> Any:
        return load_bundle(
            BundleSource.from_dir(SHOP),
            LoadOptions(
                decision_cache_size=settings.policy.decision_cache_size,
                decision_ttl_seconds=ttl,
                extra_files=BUNDLE_FILES + TRUST_FILES,
            ),
        )

    aware_bundle = loaded_with(rules.longest)
    flat_bundle = loaded_with(settings.policy.decision_ttl_seconds)
    mix = [
        dataclasses.replace(
            t.request, context={k: v for k, v in t.request.context.items() if k != "trust"}
        )
        for t in aware_bundle.bundle.tests
        if t.at is None and t.unmapped is None
    ]
    requests = stream(mix, args.requests)
    labels = RiskCache(rules)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_store_engine(f"sqlite:///{tmp}/trustplane.db")
        migrate(engine)
        assess = assessor_from_settings(
            Settings(state_dir=Path(tmp), trust={"geoip": False}), engine
        )
        for name, loaded, cache in (
            ("risk-aware", aware_bundle, RiskCache(rules)),
            ("flat 5 s", flat_bundle, None),
        ):
            metrics = Metrics()
            pdp = PolicyDecisionPoint(
                bundles=Active(loaded),
                revocations=NoRevocations(),  # type: ignore[arg-type]
                elevation=lambda _r: None,
                recorder=None,  # type: ignore[arg-type]
                metrics=metrics,
                trust=assess,
                cache=cache,
            )

            def labeller(request: Any, decision: Any, _b: Any = loaded.bundle) -> Any:
                assessed, assessment = assess(request, _b)
                plan = labels.plan(assessed, _b, assessment)
                tiers = [plan.tier, *(r.tier for r in decision.reasons)]
                tiers += [r.tier for r in decision.shadow_reasons]
                known = [t for t in tiers if t in ("0", "1", "2")]
                return (min(known) if known else NO_TIER), plan.risk

            result = run(pdp, requests, args.rate, labeller, loaded.bundle)
            evaluator_hits: Counter[tuple[str, str]] = Counter()
            for family in metrics.registry.collect():
                if family.name == "trustplane_decision_cache_lookups":
                    for sample in family.samples:
                        if sample.name.endswith("_total") and sample.labels["result"] == "hit":
                            evaluator_hits[(sample.labels["tier"], sample.labels["risk"])] += int(
                                sample.value
                            )
            if cache is None:
                total = metrics.decision_cache_hits._value.get()  # unlabelled before the rules
                evaluator_hits[("all", "all")] = int(total)
            result["evaluator_hits"] = evaluator_hits
            results[name] = result
        engine.dispose()

    text, tier0_reused = report(results, args)
    print(text)
    if not args.no_docs:
        replace_section(DOCS, "risk-cache", text, "Risk-aware cache hit ratio")
    if tier0_reused:
        sys.exit(f"FAIL: {tier0_reused} Tier 0 answers reused by the risk-aware cache")


def report(results: dict[str, dict[str, Any]], args: Any) -> tuple[str, int]:
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} "
        f"cores, Python {platform.python_version()}); command: `python bench/risk_cache.py "
        f"--requests {args.requests} --rate {args.rate:g}`. Counts, not timings.",
        "",
        "Enforcement point's reuse (answers served from its cache for their `ttl_seconds`) "
        "by the request's tier:",
        "",
        "| contender | tier | requests | reused | hit ratio |",
        "|---|---|---:|---:|---:|",
    ]
    tier0_reused = 0
    for name, result in results.items():
        pep: Counter[tuple[str, str, str]] = result["pep"]
        tiers = sorted({t for t, _, _ in pep})
        for tier in [*tiers, "all"]:
            asked = sum(v for (t, _, r), v in pep.items() if r == "asked" and tier in (t, "all"))
            reused = sum(v for (t, _, r), v in pep.items() if r == "reused" and tier in (t, "all"))
            total = asked + reused
            ratio = reused / total if total else 0.0
            lines.append(f"| {name} | {tier} | {total} | {reused} | {ratio:.1%} |")
            if name == "risk-aware" and tier == "0":
                tier0_reused += reused
    lines += [
        "",
        "By risk level (risk-aware):",
        "",
        "| risk | requests | reused | hit ratio |",
        "|---|---:|---:|---:|",
    ]
    pep = results["risk-aware"]["pep"]
    for risk in sorted({r for _, r, _ in pep}):
        asked = sum(v for (_, k, r), v in pep.items() if k == risk and r == "asked")
        reused = sum(v for (_, k, r), v in pep.items() if k == risk and r == "reused")
        lines.append(f"| {risk} | {asked + reused} | {reused} | {reused / (asked + reused):.1%} |")
    live = results["risk-aware"]["live"]
    lines += [
        "",
        "Evaluated live (risk-aware), by reason: "
        + ", ".join(f"{reason}: {count}" for reason, count in live.most_common())
        + ".",
    ]
    hits = results["risk-aware"]["evaluator_hits"]
    tier0_hits = sum(v for (tier, _), v in hits.items() if tier == "0")
    per_tier = ", ".join(f"tier {t} {r}: {v}" for (t, r), v in sorted(hits.items()))
    lines += [
        "",
        f"Evaluator cache hits behind the enforcement point (risk-aware): {per_tier or 'none'}; "
        f"flat 5 s: {results['flat 5 s']['evaluator_hits'][('all', 'all')]}.",
        "",
        f"**Tier 0: {tier0_reused} answers reused by the enforcement point, {tier0_hits} "
        f"evaluator cache hits** ({'PASS' if tier0_reused == tier0_hits == 0 else 'FAIL'}: "
        "Tier 0 is always evaluated live).",
    ]
    return "\n".join(lines), tier0_reused + tier0_hits


if __name__ == "__main__":
    main()
