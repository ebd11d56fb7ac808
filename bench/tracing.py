"""What tracing costs a decision, in one run: off, on with 1% of traces sampled, on with all.

    python bench/tracing.py [--quick] [--no-docs]

Each contender answers the shop's own test requests through `PolicyDecisionPoint.evaluate`
(the evaluator as the server configures it, its answer cache included) inside the spans a
served decision call makes when tracing is on: the root span (as `server/traced.py` opens it,
trace context extracted from the caller's headers, none here), the adapter's span, and the
decision path's own `trustplane.evaluate` span and an empty `trustplane.record` span (the
ledger is left out: it costs the same in every contender). Off, the decision point is built
without tracing, as the server builds it by default: no span object is made. The spans go
through the SDK's batching processor to an exporter that drops them, so the cost is the
SDK's on the serving thread plus its export thread's competition, without a network.

Rounds are interleaved (bench/common.py); prints mean µs per call (median round), the median
per-round ratio to `off` and the µs added, and replaces the section between the
`bench:tracing` markers of docs/benchmarks.md unless `--no-docs` is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, SHOP, Contender, interleaved, median_ratio, replace_section

DOCS = ROOT / "docs" / "benchmarks.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    rounds, max_calls, max_seconds = (3, 3000, 0.5) if args.quick else (7, 20_000, 2.0)

    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from trustplane.config import Settings, TracingSettings
    from trustplane.decision.loader import LoadOptions, load_bundle
    from trustplane.decision.point import PolicyDecisionPoint
    from trustplane.decision.policy_bundle import BundleSource
    from trustplane.governance.catalog import BUNDLE_FILES
    from trustplane.telemetry.metrics import Metrics
    from trustplane.telemetry.tracing import Tracing

    class Discard(SpanExporter):  # type: ignore[misc]
        """Drops every span: the export's network is not what is measured."""

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    defaults = Settings()
    loaded = load_bundle(
        BundleSource.from_dir(SHOP),
        LoadOptions(
            decision_cache_size=defaults.policy.decision_cache_size,
            decision_ttl_seconds=defaults.policy.decision_ttl_seconds,
            extra_files=BUNDLE_FILES,
        ),
    )
    requests = [t.request for t in loaded.bundle.tests if t.at is None and t.unmapped is None]
    bundles = SimpleNamespace(active=loaded)
    revocations = SimpleNamespace(epoch=0, principal=lambda principal: None)

    def point(tracing: Tracing | None) -> PolicyDecisionPoint:
        return PolicyDecisionPoint(
            bundles=bundles,
            revocations=revocations,  # type: ignore[arg-type]
            elevation=lambda request: None,
            recorder=None,  # type: ignore[arg-type]
            metrics=Metrics(),
            tracing=tracing,
        )

    attributes = {
        "http.request.method": "POST",
        "http.route": "/access/v1/evaluation",
        "url.path": "/access/v1/evaluation",
        "client.address": "127.0.0.1",
        "trustplane.adapter": "authzen",
    }

    def traced_call(ratio: float) -> tuple[Any, Tracing]:
        tracing = Tracing(
            TracingSettings(enabled=True, sample_ratio=ratio, export_interval_ms=1000),
            exporter=Discard(),
        )
        pdp = point(tracing)

        def call(request: Any) -> Any:
            with (
                tracing.decision("POST /access/v1/evaluation", {}, attributes),
                tracing.span("trustplane.pep.authzen"),
            ):
                decision = pdp.evaluate(request)
                with tracing.span("trustplane.record"):
                    pass
            return decision

        return call, tracing

    off = point(None)
    one_percent, tracing_1 = traced_call(0.01)
    all_sampled, tracing_100 = traced_call(1.0)
    contenders = [
        Contender("off", off.evaluate, requests),
        Contender("on, 1% sampled", one_percent, requests),
        Contender("on, 100% sampled", all_sampled, requests),
    ]
    per_round = interleaved(contenders, rounds=rounds, max_calls=max_calls, max_seconds=max_seconds)
    tracing_1.shutdown()
    tracing_100.shutdown()

    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {rounds} rounds, "
        f"{len(requests)} requests (the shop's tests), `python bench/tracing.py"
        + (" --quick`" if args.quick else "`"),
        "",
        "| tracing | mean µs/decision (median round) | ratio to off | µs added (median round) |",
        "|---|---:|---:|---:|",
    ]
    for contender in contenders:
        means = sorted(r[contender.name] for r in per_round)
        ratio = median_ratio(per_round, contender.name, "off")
        added = statistics.median(r[contender.name] - r["off"] for r in per_round)
        lines.append(
            f"| {contender.name} | {means[len(means) // 2]:.1f} | {ratio:.2f}x | {added:.1f} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_docs:
        replace_section(DOCS, "tracing", text, "Tracing cost")


if __name__ == "__main__":
    main()
