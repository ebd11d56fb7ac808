"""Prometheus metrics. One registry per server instance, so tests can run several side by side.

With several worker processes, prometheus_client's multiprocess mode keeps each worker's values
in files under the state directory (it reads PROMETHEUS_MULTIPROC_DIR when it is imported, so
the serving supervisor sets it before spawning workers) and `/metrics` sums them.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir(state_dir: Path) -> Path:
    return state_dir / "metrics"


_LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
)


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, multiprocess: Path | None = None
    ) -> None:
        """`multiprocess`: the directory every worker writes to (several workers), or None."""
        self.registry = registry or CollectorRegistry()
        self.multiprocess = multiprocess
        r = self.registry
        self.decisions = Counter(
            "trustplane_decisions",
            "Decisions answered, by enforced decision, by kind (enforced answer or shadow) and by "
            "the enforcement point that asked (a registered PEP's name, `anonymous`, or `local`).",
            ["decision", "mode", "pep"],
            registry=r,
        )
        self.shadow_mismatches = Counter(
            "trustplane_shadow_mismatches",
            "Decisions whose shadow answer differs, by the observe-mode policy that changes it.",
            ["policy"],
            registry=r,
        )
        self.evaluation_seconds = Histogram(
            "trustplane_evaluation_seconds",
            "Time spent evaluating a decision (policy engine only).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decision_cache_hits = Counter(
            "trustplane_decision_cache_hits",
            "Decisions answered from the evaluator's cache (same request, same bundle revision).",
            registry=r,
        )
        self.decision_cache_lookups = Counter(
            "trustplane_decision_cache_lookups",
            "Decisions by the cache's verdict (hit: answered from the evaluator's cache; miss: "
            "evaluated, may be kept; live: evaluated by rule, never reused), by the request's "
            "tier and risk level (decision/risk_cache.py).",
            ["tier", "risk", "result"],
            registry=r,
        )
        self.trust_signals_fired = Counter(
            "trustplane_trust_signals_fired",
            "Decisions on which a trust signal fired (value above 0, or its provider failed), "
            "by signal and mode (enforce or observe).",
            ["signal", "mode"],
            registry=r,
        )
        self.decision_errors = Counter(
            "trustplane_decision_errors",
            "Decisions denied because evaluation failed (fail closed).",
            registry=r,
        )
        self.bundle_loads = Counter(
            "trustplane_bundle_loads",
            "Bundle load attempts by result (success or failure).",
            ["result"],
            registry=r,
        )
        self.deny_spike = Gauge(
            "trustplane_deny_spike",
            "1 while the revision's deny rate rose past governance.deny_spike_threshold after "
            "activation.",
            ["revision"],
            registry=r,
            multiprocess_mode="max",
        )
        self.policy_drift = Gauge(
            "trustplane_policy_drift",
            "1 while the active bundle revision differs from the directory it follows "
            "(rollout/drift.py), 0 when they match.",
            registry=r,
            multiprocess_mode="max",
        )
        self.bundle_info = Gauge(
            "trustplane_bundle_info",
            "1 for the active bundle revision (its name and revision as labels).",
            ["name", "revision"],
            registry=r,
            multiprocess_mode="max",  # 1 while any worker serves that revision
        )
        self.ledger_records = Gauge(
            "trustplane_ledger_records",
            "Records committed to the decision ledger.",
            registry=r,
            multiprocess_mode="max",
        )
        self.ledger_pending = Gauge(
            "trustplane_ledger_pending",
            "Decisions answered but not yet committed.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_lag_seconds = Gauge(
            "trustplane_ledger_lag_seconds",
            "Age of the oldest decision not yet committed to the ledger.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ledger_write_failures = Counter(
            "trustplane_ledger_write_failures",
            "Ledger commits that failed and were retried.",
            registry=r,
        )
        self.ledger_degraded = Gauge(
            "trustplane_ledger_degraded",
            "1 while the ledger is degraded: the store is not taking records (or could not keep "
            "up) and answered decisions are spooled to disk until it does.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ledger_spooled = Gauge(
            "trustplane_ledger_spooled",
            "Decisions answered and held in the disk spool, waiting for the store.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_quarantined = Counter(
            "trustplane_ledger_quarantined",
            "Records the store refused as rows, kept in ledger_quarantine (see audit verify).",
            registry=r,
        )
        self.checkpoints = Counter(
            "trustplane_ledger_checkpoints", "Signed checkpoints produced.", registry=r
        )
        self.ledger_checkpoint_time = Gauge(
            "trustplane_ledger_last_checkpoint_timestamp_seconds",
            "When a signed checkpoint last covered every committed record (unix time): signed "
            "then, or the newest one already covered the tree.",
            registry=r,
            multiprocess_mode="max",
        )
        # store/feed.py: whether changes made elsewhere (activations, revocations, grants) are
        # heard, and how long since the listener last read the store.
        self.change_feed_up = Gauge(
            "trustplane_change_feed_up",
            "1 while the change feed's listener reads the store; 0 once it has failed for "
            "three intervals (/readyz is 503 then).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.change_feed_lag_seconds = Gauge(
            "trustplane_change_feed_lag_seconds",
            "Seconds since the change feed's listener last read the store successfully.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.key_expiry = Gauge(
            "trustplane_key_expiry_timestamp_seconds",
            "When each trust-domain key stops being usable (unix time: its certificate's or "
            "its retirement's), by kind (ca, jwt) and key id, for every key not yet retired.",
            ["kind", "key_id", "state"],
            registry=r,
            multiprocess_mode="livemin",
        )
        # identity/: what the identity plane sees of the clocks and credentials it depends on.
        self.issuer_clock_skew = Gauge(
            "trustplane_issuer_clock_skew_seconds",
            "How far each token issuer's clock is ahead of ours (negative: behind), from the "
            "Date header of its JWKS responses.",
            ["issuer"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.jwks_up = Gauge(
            "trustplane_jwks_up",
            "1 when the last fetch of each token issuer's JWKS succeeded, 0 when it failed "
            "(cached keys are still used until jwks_max_stale_seconds); by issuer.",
            ["issuer"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.jwks_age_seconds = Gauge(
            "trustplane_jwks_age_seconds",
            "Seconds since each token issuer's JWKS was last fetched successfully.",
            ["issuer"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.certificate_expiry = Gauge(
            "trustplane_certificate_expiry_timestamp_seconds",
            "When each certificate the identity plane depends on expires (unix time), by kind: "
            "ca, jwt_key, serving (the HTTPS certificate), x509_svid (the soonest held by a "
            "connected workload).",
            ["kind"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.identity_drift = Counter(
            "trustplane_identity_drift",
            "SPIFFE IDs seen in use that drift from the registration entries, by kind "
            "(unregistered, foreign_trust_domain); one count per sighting.",
            ["kind"],
            registry=r,
        )
        # governance/: elevated access in force, and break-glass that must be loud.
        self.grants_active = Gauge(
            "trustplane_grants_active",
            "Grants (JIT and break-glass) and exceptions held in memory, by kind.",
            ["kind"],
            registry=r,
            multiprocess_mode="max",
        )
        self.break_glass_opened = Counter(
            "trustplane_break_glass_opened",
            "Break-glass sessions opened, by profile.",
            ["profile"],
            registry=r,
        )
        self.break_glass_open = Gauge(
            "trustplane_break_glass_open_sessions",
            "Break-glass sessions in force now (grants of kind break-glass not expired or "
            "revoked).",
            registry=r,
            multiprocess_mode="max",
        )
        self.break_glass_reviews_overdue = Gauge(
            "trustplane_break_glass_reviews_overdue",
            "Break-glass post-incident reviews still open after their deadline.",
            registry=r,
            multiprocess_mode="max",
        )

        # rollout/: the promotion gate's evidence per observe-mode policy, refreshed each time
        # the status is computed (GET /v1/rollout/status, `trustplane rollout status`).
        self.rollout_cohorts = {
            name: Gauge(
                f"trustplane_rollout_cohort_{name}",
                help_text,
                ["policy", "cohort"],
                registry=r,
                multiprocess_mode="mostrecent",
            )
            for name, help_text in (
                ("would_denies", "Would-denies (observed) or canary denials (enforced)."),
                ("labelled", "Of those, labelled true or false positive."),
                ("false_positive_upper", "Upper bound of the false-positive 95% interval."),
            )
        }
        self.deny_jumps = Counter(
            "trustplane_deny_jumps",
            "Deny-rate jumps on a route after an activation (rollout/rollback.py), by outcome: "
            "rolled_back, alarm_only (governance.auto_rollback off), rollback_failed, superseded.",
            ["outcome"],
            registry=r,
        )
        self.rollout = {
            name: Gauge(
                f"trustplane_rollout_{name}",
                help_text,
                ["policy"],
                registry=r,
                multiprocess_mode="mostrecent",
            )
            for name, help_text in (
                ("days_observed", "Days the policy has been in observe mode."),
                ("would_denies", "Decisions the observe-mode policy would have denied."),
                ("labelled", "Would-denies labelled true or false positive."),
                ("false_positive_upper", "Upper bound of the false-positive rate's 95% interval."),
                ("attributable_share", "Share of would-denies by named principals."),
                ("gate_passing", "1 when the policy's promotion gate passes, 0 when it fails."),
            )
        }

    def observe_issuer_clock_skew(self, issuer: str, seconds: float) -> None:
        self.issuer_clock_skew.labels(issuer).set(seconds)

    def observe_jwks(self, status: dict[str, tuple[bool, float | None]]) -> None:
        for issuer, (ok, age) in status.items():
            self.jwks_up.labels(issuer).set(1 if ok else 0)
            if age is not None:
                self.jwks_age_seconds.labels(issuer).set(age)

    def exposition(self) -> bytes:
        """The text format for /metrics: this process, or every worker's values combined."""
        if self.multiprocess is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=str(self.multiprocess))  # type: ignore[no-untyped-call]
        return generate_latest(combined)
