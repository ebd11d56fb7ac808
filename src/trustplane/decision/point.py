"""The decision path: active bundle → evaluate → metrics → ledger. Reads memory only.

Every adapter (AuthZEN, Envoy, forward-auth, admission) answers through here, so every decision
is counted and recorded the same way. It is built from its collaborators, not from the server's
runtime, so it can be tested alone and no plane has to import the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

from trustplane.decision.epoch import CacheEpoch
from trustplane.decision.loader import LoadedBundle
from trustplane.decision.policy_bundle import Bundle
from trustplane.decision.risk_cache import NO_RISK, NO_TIER, Plan, RiskCache
from trustplane.decision.routes import RouteTable
from trustplane.model import (
    CALLING_PEP,
    DECISION_ID,
    AccessRequest,
    Decision,
    Effect,
    Elevation,
    PolicyReason,
    refusal,
)
from trustplane.recovery.revocation import Revocation, RevocationList
from trustplane.telemetry.deny_spike import DenySpikeDetector
from trustplane.telemetry.ledger import LedgerEntry
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.metrics import Metrics
from trustplane.telemetry.recorder import DecisionRecorder
from trustplane.telemetry.tracing import Tracing, annotate, no_span

MAX_PEP_LABELS = 64
NO_BUNDLE = "no_active_bundle: no active policy bundle, denying by default"


class Assess(Protocol):
    """trust/assessor.TrustAssessor: the request Cedar sees (context.trust) and the assessment
    the decision carries (score, level, each signal with its value and source); `remember`
    False for a what-if that must leave no history (a search's candidates)."""

    def __call__(
        self, request: AccessRequest, bundle: Bundle | None, *, remember: bool = True
    ) -> tuple[AccessRequest, dict[str, Any]]: ...


# TrustAssessor.prepare: blocking work the assessment needs (a store read), or None.
Prepare = Callable[[AccessRequest, Bundle | None], Callable[[], None] | None]


class ActiveBundle(Protocol):
    """Whatever holds the bundle being served (decision/manager.py's BundleManager)."""

    active: LoadedBundle | None


class PolicyDecisionPoint:
    def __init__(
        self,
        *,
        bundles: ActiveBundle,
        revocations: RevocationList,
        elevation: Callable[[AccessRequest], Elevation | None],
        recorder: DecisionRecorder,
        metrics: Metrics,
        deny_spike: DenySpikeDetector | None = None,
        trust: Assess | None = None,
        cache: RiskCache | None = None,
        epoch: CacheEpoch | None = None,
        tracing: Tracing | None = None,
        prepare_trust: Prepare | None = None,
    ) -> None:
        """`elevation(request)`: the grants and exceptions held for the request's flow
        (governance/state.py), looked up in memory on every evaluation; `deny_spike` watches
        the bundle's own answers after each activation. `cache`: the risk-aware reuse rules
        (without them, every answer keeps the evaluator's TTL); `epoch`: the cache epoch each
        decision carries (without it, the revocation epoch); `tracing`: child spans of the
        decision call's span (None: tracing off, and `span` does nothing)."""
        self._bundles = bundles
        self._revocations = revocations
        self._elevation = elevation
        self._metrics = metrics
        self._recorder = recorder
        self._deny_spike = deny_spike
        self._trust = trust
        self._cache = cache
        self._epoch = epoch
        self._fired: dict[tuple[str, str], Any] = {}
        self._lookups: dict[tuple[str, str, str], Any] = {}
        self._notes: dict[tuple[str, str, str | None], dict[str, Any]] = {}
        # The trust plane learns from answers (behaviour's denial rate): told of each one.
        self._outcome: Callable[[AccessRequest, bool], None] | None = getattr(
            trust, "outcome", None
        )
        self.tracing = tracing
        self.span = tracing.span if tracing is not None else no_span
        # Labelled children resolved once per PEP: `.labels()` costs more than the increment.
        self._counters: dict[str | None, tuple[dict[Effect, Any], dict[Effect, Any]]] = {}
        self._prepare_trust = prepare_trust

    def active_bundle(self) -> Bundle | None:
        active = self._bundles.active
        return None if active is None else active.bundle

    def revoked_credential(self, token_id: str | None) -> Revocation | None:
        """The revocation of a credential (by its JWT id), if any."""
        return self._revocations.credential(token_id)

    def revoked_certificate(self, serial: str | int | None) -> Revocation | None:
        """The revocation of an X.509 certificate (by serial number), if any."""
        return self._revocations.certificate(serial)

    def routes(self) -> RouteTable | None:
        """The active bundle's route mapping (routes.yaml), if it has one."""
        active = self._bundles.active
        return None if active is None else active.bundle.routes

    def evaluate(self, request: AccessRequest, observe: bool = True) -> Decision:
        """The answer to `request`; `observe=False` leaves it out of the decision metrics and
        the deny-spike watch, for a search's candidates (the search is counted and recorded
        as one record instead, outcomes/search.py)."""
        active = self._bundles.active
        revocations = self._revocations
        # The epoch goes in every decision: caches outside this process compare it to drop
        # answers given before a revocation.
        epoch = revocations.epoch
        cache_epoch = epoch if self._epoch is None else self._epoch.value
        bundle = active.bundle if active is not None else None
        assessment = None
        span = self.span
        if self._trust is not None:  # the trust plane scores every request, refused or not
            with span("trustplane.trust"):
                request, assessment = self._trust(request, bundle, remember=observe)
        plan = None if self._cache is None else self._cache.plan(request, bundle, assessment)
        revoked = revocations.principal(request.principal)
        if revoked is not None:  # before any policy (and any cached answer)
            decision = refusal(
                f"principal_revoked: {revoked.target} ({revoked.reason})",
                active.bundle.revision if active is not None else None,
                epoch,
            )
        elif active is None:
            decision = refusal(NO_BUNDLE, None, epoch)
        else:
            # Grants and exceptions from memory; the evaluator checks their windows itself.
            elevation = self._elevation(request)
            # The assessment goes in as the answer is built: a copy afterwards costs more.
            with span("trustplane.evaluate") as current:
                decision = active.evaluator.evaluate(
                    request,
                    revocation_epoch=epoch,
                    elevation=elevation,
                    trust=assessment,
                    reuse=plan is None or plan.live is None,
                    settle=None if plan is None else partial(self._settle, plan, request, bundle),
                    cache_epoch=cache_epoch,
                )
                annotate(current, decision)
            if observe and self._deny_spike is not None:  # the bundle's own answers only
                denied = decision.effect is Effect.DENY
                resource = request.resource
                self._deny_spike.observe(
                    denied,
                    (resource.type, resource.id),
                    (decision.reasons[0].policy_id if decision.reasons else None)
                    if denied
                    else None,
                )
        if assessment is not None and decision.trust is not assessment:  # refusals
            decision = replace(decision, trust=assessment)
        if decision.cache_epoch != cache_epoch:  # refusals, settled before any policy
            decision = reused(decision, decision.ttl_seconds, cache_epoch, decision.cache)
        if observe:  # searches ask without being answers: no metrics, no behaviour history
            if self._outcome is not None:
                self._outcome(request, decision.effect is Effect.DENY)
            self._observe(decision)
            if assessment is not None:
                self._signals(assessment)
        return decision

    def _settle(
        self,
        plan: Plan,
        request: AccessRequest,
        bundle: Bundle | None,
        ttl: int,
        reasons: tuple[PolicyReason, ...],
        shadow_reasons: tuple[PolicyReason, ...],
        errors: tuple[str, ...],
        cached: bool,
    ) -> tuple[int, dict[str, Any] | None]:
        """The answer's TTL by its tier and risk, and its cache note; counted by verdict.
        Called by the evaluator as it builds the answer (Evaluator.evaluate's `settle`)."""
        assert self._cache is not None
        ttl, tier = self._cache.finish(
            plan, request, ttl, reasons, shadow_reasons, errors, bundle, time.time()
        )
        live = plan.live or ("tier 0" if tier == "0" else None)
        result = "live" if live is not None else "hit" if cached else "miss"
        key = (tier, plan.risk, result)
        counter = self._lookups.get(key)
        if counter is None:
            counter = self._lookups[key] = self._metrics.decision_cache_lookups.labels(*key)
        counter.inc()
        note_key = (tier, plan.risk, live)
        note = self._notes.get(note_key)
        if note is None and (plan.risk != NO_RISK or tier != NO_TIER or live):
            # Shared between decisions, like the assessment: nothing downstream changes it.
            label = tier if tier != NO_TIER else None
            note = self._notes[note_key] = {"tier": label, "risk": plan.risk, "live": live}
        return ttl, note

    def _signals(self, assessment: dict[str, Any]) -> None:
        """Count each signal that fired (its row in the assessment: points, or an error)."""
        for row in assessment.get("signals") or ():
            if not (row.get("value") or row.get("error")):
                continue
            key = (str(row.get("name")), str(row.get("mode")))
            counter = self._fired.get(key)
            if counter is None:
                counter = self._fired[key] = self._metrics.trust_signals_fired.labels(*key)
            counter.inc()

    async def decide(self, request: AccessRequest) -> Decision:
        """Evaluate and record; under sync durability, returns once the record is committed.
        What the trust plane would read from the store is read first, in a worker thread: the
        evaluation itself never blocks the event loop on the store."""
        if self._prepare_trust is not None:
            active = self._bundles.active
            work = self._prepare_trust(request, active.bundle if active else None)
            if work is not None:
                await asyncio.to_thread(work)
        decision = self.evaluate(request)
        with self.span("trustplane.record"):
            await self._recorder.record(request, decision)
        return decision

    async def refuse(self, request: AccessRequest, reason: str) -> Decision:
        """A deny settled before any policy is asked (no valid credential, no route), counted
        and recorded like every other decision."""
        active = self._bundles.active
        decision = refusal(
            reason,
            active.bundle.revision if active is not None else None,
            self._revocations.epoch,
        )
        epoch = decision.revocation_epoch if self._epoch is None else self._epoch.value
        decision = reused(decision, decision.ttl_seconds, epoch, None)
        self._observe(decision)
        await self._recorder.record(request, decision)
        return decision

    async def record(self, request: AccessRequest, decision: Decision) -> None:
        """Count and record a decision another engine made (admission reviews by posture/)."""
        self._observe(decision)
        await self._recorder.record(request, decision)

    async def record_entry(self, entry: LedgerEntry) -> None:
        """Record a prepared ledger entry (a search page) with a decision's durability."""
        await self._recorder.record_entry(entry)

    @property
    def masker(self) -> Masker:
        """What erases request members before they are recorded (telemetry/masking.py)."""
        return self._recorder.masker

    def decide_blocking(self, request: AccessRequest) -> Decision:
        decision = self.evaluate(request)
        self._recorder.record_blocking(request, decision)
        return decision

    def _observe(self, decision: Decision) -> None:
        metrics = self._metrics
        DECISION_ID.set(decision.decision_id)  # for the log lines that follow
        pep = CALLING_PEP.get()
        counters = self._counters.get(pep)
        if counters is None:
            counters = self._counters[pep] = self._pep_counters(pep)
        counters[0][decision.effect].inc()
        counters[1][decision.shadow_effect].inc()
        metrics.evaluation_seconds.observe(decision.eval_micros / 1e6)
        if decision.cached:
            metrics.decision_cache_hits.inc()
        if decision.errors:
            metrics.decision_errors.inc()
        for reason in decision.shadow_changes:
            metrics.shadow_mismatches.labels(reason.policy_id).inc()

    def _pep_counters(self, pep: str | None) -> tuple[dict[Effect, Any], dict[Effect, Any]]:
        """`trustplane_decisions_total{decision, mode, pep}`'s children for one PEP: a
        registered PEP's name, `anonymous`, or `local` (asked in process, not through an
        endpoint). Registered names are bounded by the registry; past MAX_PEP_LABELS further
        names share `other`, so no caller can grow the metric."""
        label = pep or "local"
        if len(self._counters) >= MAX_PEP_LABELS:
            label = "other"
        decisions = self._metrics.decisions
        return (
            {e: decisions.labels(e.value, "enforced", label) for e in Effect},
            {e: decisions.labels(e.value, "shadow", label) for e in Effect},
        )


def reused(
    decision: Decision, ttl: int, cache_epoch: int, cache: dict[str, Any] | None
) -> Decision:
    """`decision` with its reuse decided, for answers the evaluator did not build (refusals).
    Built field by field, cheaper than `dataclasses.replace` (test_risk_cache checks that
    every field is carried)."""
    return Decision(
        decision_id=decision.decision_id,
        effect=decision.effect,
        reasons=decision.reasons,
        shadow_effect=decision.shadow_effect,
        shadow_reasons=decision.shadow_reasons,
        shadow_changes=decision.shadow_changes,
        errors=decision.errors,
        revision=decision.revision,
        eval_micros=decision.eval_micros,
        timestamp=decision.timestamp,
        cached=decision.cached,
        ttl_seconds=ttl,
        revocation_epoch=decision.revocation_epoch,
        grant_ids=decision.grant_ids,
        exception_ids=decision.exception_ids,
        trust=decision.trust,
        canary=decision.canary,
        cache_epoch=cache_epoch,
        cache=cache,
    )
