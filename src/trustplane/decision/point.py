"""The decision path: active bundle → evaluate → metrics → ledger. Reads memory only.

Every adapter (AuthZEN, Envoy, forward-auth, admission) answers through here, so every decision
is counted and recorded the same way. It is built from its collaborators, not from the server's
runtime, so it can be tested alone and no plane has to import the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from trustplane.decision.loader import LoadedBundle
from trustplane.decision.policy_bundle import Bundle
from trustplane.decision.routes import RouteTable
from trustplane.model import AccessRequest, Decision, Effect, Elevation, refusal
from trustplane.recovery.revocation import Revocation, RevocationList
from trustplane.telemetry.deny_spike import DenySpikeDetector
from trustplane.telemetry.metrics import Metrics
from trustplane.telemetry.recorder import DecisionRecorder

NO_BUNDLE = "no_active_bundle: no active policy bundle, denying by default"

# trust/assessor.TrustAssessor: the request Cedar sees (context.trust) and the assessment the
# decision carries (score, level, each signal with its value and source).
Assess = Callable[[AccessRequest, Bundle | None], tuple[AccessRequest, dict[str, Any]]]
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
        prepare_trust: Prepare | None = None,
    ) -> None:
        """`elevation(request)`: the grants and exceptions held for the request's flow
        (governance/state.py), looked up in memory on every evaluation; `deny_spike` watches
        the bundle's own answers after each activation."""
        self._bundles = bundles
        self._revocations = revocations
        self._elevation = elevation
        self._metrics = metrics
        self._recorder = recorder
        self._deny_spike = deny_spike
        self._trust = trust
        self._prepare_trust = prepare_trust
        # Labelled children resolved once: `.labels()` costs more than the increment.
        self._enforced = {e: self._metrics.decisions.labels(e.value, "enforced") for e in Effect}
        self._shadow = {e: self._metrics.decisions.labels(e.value, "shadow") for e in Effect}

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

    def evaluate(self, request: AccessRequest) -> Decision:
        active = self._bundles.active
        revocations = self._revocations
        # The epoch goes in every decision: caches outside this process compare it to drop
        # answers given before a revocation.
        epoch = revocations.epoch
        assessment = None
        if self._trust is not None:  # the trust plane scores every request, refused or not
            request, assessment = self._trust(request, active.bundle if active else None)
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
            decision = active.evaluator.evaluate(
                request, revocation_epoch=epoch, elevation=elevation, trust=assessment
            )
            if self._deny_spike is not None:  # the bundle's own answers, not refusals
                self._deny_spike.observe(decision.effect is Effect.DENY)
        if assessment is not None and decision.trust is not assessment:  # refusals
            decision = replace(decision, trust=assessment)
        self._observe(decision)
        return decision

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
        self._observe(decision)
        await self._recorder.record(request, decision)
        return decision

    async def record(self, request: AccessRequest, decision: Decision) -> None:
        """Count and record a decision another engine made (admission reviews by posture/)."""
        self._observe(decision)
        await self._recorder.record(request, decision)

    def decide_blocking(self, request: AccessRequest) -> Decision:
        decision = self.evaluate(request)
        self._recorder.record_blocking(request, decision)
        return decision

    def _observe(self, decision: Decision) -> None:
        metrics = self._metrics
        self._enforced[decision.effect].inc()
        self._shadow[decision.shadow_effect].inc()
        metrics.evaluation_seconds.observe(decision.eval_micros / 1e6)
        if decision.cached:
            metrics.decision_cache_hits.inc()
        if decision.errors:
            metrics.decision_errors.inc()
        for reason in decision.shadow_changes:
            metrics.shadow_mismatches.labels(reason.policy_id).inc()
