"""The decision path: active bundle → evaluate → metrics → ledger. Reads memory only.

Every adapter (AuthZEN today; Envoy, forward-auth and admission later) answers through here, so
every decision is counted and recorded the same way.
"""

from __future__ import annotations

from trustplane.decision.bundle import Bundle
from trustplane.decision.routes import RouteTable
from trustplane.model import AccessRequest, Decision, Effect, refusal
from trustplane.recovery.revocation import Revocation
from trustplane.server.runtime import Runtime

NO_BUNDLE = "no active policy bundle: denying by default"


class PolicyDecisionPoint:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._metrics = runtime.metrics
        self._recorder = runtime.recorder
        self._deny_spike = runtime.deny_spike
        # Labelled children resolved once: `.labels()` costs more than the increment.
        self._enforced = {e: self._metrics.decisions.labels(e.value, "enforced") for e in Effect}
        self._shadow = {e: self._metrics.decisions.labels(e.value, "shadow") for e in Effect}

    def active_bundle(self) -> Bundle | None:
        active = self._runtime.bundles.active
        return None if active is None else active.bundle

    def revoked_credential(self, token_id: str | None) -> Revocation | None:
        """The revocation of a credential (by its JWT id), if any."""
        return self._runtime.revocations.credential(token_id)

    def revoked_certificate(self, serial: str | int | None) -> Revocation | None:
        """The revocation of an X.509 certificate (by serial number), if any."""
        return self._runtime.revocations.certificate(serial)

    def routes(self) -> RouteTable | None:
        """The active bundle's route mapping (routes.yaml), if it has one."""
        active = self._runtime.bundles.active
        return None if active is None else active.bundle.routes

    def evaluate(self, request: AccessRequest) -> Decision:
        active = self._runtime.bundles.active
        revocations = self._runtime.revocations
        # The epoch goes in every decision: caches outside this process compare it to drop
        # answers given before a revocation.
        epoch = revocations.epoch
        revoked = revocations.principal(request.principal)
        if revoked is not None:  # before any policy (and any cached answer)
            decision = refusal(
                f"revoked: {revoked.target} ({revoked.reason})",
                active.bundle.revision if active is not None else None,
                epoch,
            )
        elif active is None:
            decision = refusal(NO_BUNDLE, None, epoch)
        else:
            # Grants and exceptions from memory; the evaluator checks their windows itself.
            elevation = self._runtime.governance.state.elevation(request)
            decision = active.evaluator.evaluate(
                request, revocation_epoch=epoch, elevation=elevation
            )
            self._deny_spike.observe(decision.effect is Effect.DENY)  # the bundle's own answers
        self._observe(decision)
        return decision

    async def decide(self, request: AccessRequest) -> Decision:
        """Evaluate and record; under sync durability, returns once the record is committed."""
        decision = self.evaluate(request)
        await self._recorder.record(request, decision)
        return decision

    async def refuse(self, request: AccessRequest, reason: str) -> Decision:
        """A deny settled before any policy is asked (no valid credential, no route), counted
        and recorded like every other decision."""
        active = self._runtime.bundles.active
        decision = refusal(
            reason,
            active.bundle.revision if active is not None else None,
            self._runtime.revocations.epoch,
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
