"""Admin API of the rollout plane: the review queue of an observe-mode policy, labels on its
would-denies, and the promotion gates' status. The handlers parse, call `rollout/` and format;
the gate records who labelled what and why (the note is the record's reason)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.decision.policy_bundle import Bundle
from trustplane.problems import Problem, json_response, parse_model
from trustplane.rollout.gates import PolicyStatus, RolloutStatus
from trustplane.rollout.labels import MAX_QUEUE, LabelStore, RolloutError
from trustplane.server.admin.common import bad_query, int_param
from trustplane.server.admin_auth import Target
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime
from trustplane.store.policy_revisions import BundleStore
from trustplane.telemetry.metrics import Metrics

T = TypeVar("T")


class LabelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decisions: list[StrictStr] = Field(
        default_factory=list,
        max_length=1000,
        description="Decision ids, or unique prefixes of them, to label.",
    )
    principal: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=400,
        description="Label every unlabelled would-deny of `policy` by this principal "
        '(User::"bob").',
    )
    action: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=400,
        description='... of this action (Action::"payments:refund"); with `principal` and '
        "`resource`, those matching every one given.",
    )
    resource: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=400,
        description='... on this resource (Api::"payments.refund").',
    )
    policy: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=400,
        description="The observe-mode policy; needed in bulk, or when a decision "
        "would be denied by several.",
    )
    verdict: StrictStr = Field(description="true-positive or false-positive")
    note: StrictStr = Field(min_length=1, max_length=2000, description="Why: the ledger keeps it.")


class PromotionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: StrictStr = Field(min_length=1, max_length=400, description="The policy's @id.")
    to: StrictStr = Field(pattern="^(canary|enforce)$", description="canary or enforce")
    canary_percent: float | None = Field(
        None, gt=0, lt=100, description="With `to: canary`: the share of principals enforced."
    )
    override: bool = Field(False, description="Promote although the gate fails.")
    reason: StrictStr = Field(
        "", max_length=2000, description="Why; required with `override`. The ledger keeps it."
    )


def rollout_problem(exc: RolloutError) -> Problem:
    errors = (
        [{"pointer": f"/{exc.field}", "detail": str(exc), "code": "invalid"}] if exc.field else None
    )
    titles = {404: "Not found", 409: "Ambiguous", 422: "Invalid label"}
    slug = {404: "not-found", 409: "conflict"}.get(exc.status, "invalid-request")
    return Problem(exc.status, slug, titles.get(exc.status, "Refused"), str(exc), errors)


def publish(metrics: Metrics, statuses: list[PolicyStatus]) -> None:
    """The status figures as gauges, one series per observe-mode policy."""
    gauges = metrics.rollout
    for status in statuses:
        policy = status.policy_id
        gauges["days_observed"].labels(policy).set(status.days_observed)
        gauges["would_denies"].labels(policy).set(status.would_denies)
        gauges["labelled"].labels(policy).set(status.labelled)
        gauges["false_positive_upper"].labels(policy).set(status.fp_high)
        share = status.attributable
        gauges["attributable_share"].labels(policy).set(1.0 if share is None else share)
        gauges["gate_passing"].labels(policy).set(1 if status.passes else 0)
        for cohort in status.cohorts:  # observed; and enforced, for a canary
            by_cohort = metrics.rollout_cohorts
            by_cohort["would_denies"].labels(policy, cohort.name).set(cohort.would_denies)
            by_cohort["labelled"].labels(policy, cohort.name).set(cohort.labelled)
            by_cohort["false_positive_upper"].labels(policy, cohort.name).set(cohort.fp_high)


class RolloutApi:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._labels = LabelStore(runtime.engine)
        self._status = RolloutStatus(self._labels, BundleStore(runtime.engine))

    def _bundle(self) -> Bundle:
        active = self._runtime.bundles.active
        if active is None:
            raise Problem(503, "no-bundle", "No active bundle", "no policy bundle is active")
        return active.bundle

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except RolloutError as exc:
            raise rollout_problem(exc) from None

    def _observe_policy(self, policy_id: str) -> Target:
        info = self._bundle().policy(policy_id)
        if info is None:
            raise Problem(404, "not-found", "Not found", f"no policy {policy_id} in the bundle")
        return Target("policy", policy_id, tier=info.tier or "", owner=info.owner)

    async def resolve_policy(self, request: Request, call: AdminCall) -> Target:
        """The policy a route or label names, with its tier and owner for the admin policy."""
        policy_id = request.path_params.get("policy_id")
        if policy_id is None:
            body = parse_model(LabelBody, await call.body(request))
            if body.policy is None:
                return Target("policy")
            policy_id = body.policy
        return self._observe_policy(str(policy_id))

    async def resolve_promotion(self, request: Request, call: AdminCall) -> Target:
        """The policy a promotion names, with its tier and owner for the admin policy."""
        body = parse_model(PromotionBody, await call.body(request))
        return self._observe_policy(body.policy)

    async def queue(self, request: Request, call: AdminCall) -> Response:
        """Unlabelled would-denies of one observe-mode policy, stratified by principal and
        resource, each with its explanation."""
        params = request.query_params
        unknown = set(params) - {"limit"}
        if unknown:
            raise bad_query(sorted(unknown)[0], "unknown query parameter")
        limit = int_param(params.get("limit"), "limit", 20, 1, MAX_QUEUE)
        policy_id = call.target.id
        info = self._bundle().policy(policy_id)
        items, pending = await self._call(self._labels.queue, policy_id, limit)
        return json_response(
            {
                "policy": policy_id,
                "mode": info.mode if info else None,
                "description": info.description if info else "",
                "unlabelled": pending,
                "queue": [item.as_dict(policy_id) for item in items],
            }
        )

    async def label(self, request: Request, call: AdminCall) -> Response:
        body = parse_model(LabelBody, await call.body(request))
        call.note(reason=body.note, verdict=body.verdict)
        bulk = {"principal": body.principal, "action": body.action, "resource": body.resource}
        bulk = {name: value for name, value in bulk.items() if value is not None}
        if bulk:
            call.note(bulk=bulk)
        made = await self._call(
            self._labels.label,
            references=body.decisions,
            principal=body.principal,
            action=body.action,
            resource=body.resource,
            policy_id=body.policy,
            verdict=body.verdict,
            note=body.note,
            actor=call.caller.name,
        )
        policies = sorted({label.policy_id for label in made})
        if call.target.id == "" and len(policies) == 1:
            call.note(Target("policy", policies[0]))
        call.note(decisions=[label.decision_id for label in made], policies=policies)
        return json_response({"labelled": [label.as_dict() for label in made]}, 201)

    async def promote(self, request: Request, call: AdminCall) -> Response:
        """Whether POLICY may be promoted: 200 with its gate when the gate passes or the caller
        overrides it with a reason, 409 with every failing reason otherwise. The bundle itself
        is edited by the caller (`trustplane policy promote`), in the bundle's source; this
        call is what the ledger keeps of the decision to promote, override or not."""
        body = parse_model(PromotionBody, await call.body(request))
        if body.to == "canary" and body.canary_percent is None:
            raise Problem(
                422, "invalid-request", "Invalid promotion", "to: canary needs canary_percent"
            )
        if body.override and not body.reason.strip():
            raise Problem(
                422,
                "invalid-request",
                "Invalid promotion",
                "an override needs a reason: it is what the audit trail shows",
            )
        bundle = self._bundle()
        statuses = await self._call(self._status.evaluate, bundle)
        found = next((s for s in statuses if s.policy_id == body.policy), None)
        if found is None:
            info = bundle.policy(body.policy)
            mode = info.mode if info else None
            raise Problem(
                409 if info else 404,
                "conflict" if info else "not-found",
                "Not promotable" if info else "Not found",
                f"{body.policy} is in {mode} mode: only observe and canary policies are promoted"
                if info
                else f"no policy {body.policy} in the active bundle",
            )
        call.note(
            reason=body.reason.strip() or None,
            to=body.to,
            canary_percent=body.canary_percent,
            override=body.override,
            gate="pass" if found.passes else "fail",
            failing=list(found.failing),
        )
        if not found.passes and not body.override:
            raise Problem(
                409,
                "gate-fails",
                "Gate fails",
                f"{body.policy}: the promotion gate fails: " + "; ".join(found.failing),
            )
        return json_response(
            {
                "policy": body.policy,
                "to": body.to,
                "canary_percent": body.canary_percent,
                "override": body.override and not found.passes,
                "status": found.as_dict(),
            }
        )

    async def status(self, request: Request, call: AdminCall) -> Response:
        if request.query_params:
            raise bad_query(sorted(request.query_params)[0], "unknown query parameter")
        bundle = self._bundle()
        statuses = await self._call(self._status.evaluate, bundle)
        publish(self._runtime.metrics, statuses)
        return json_response(
            {"revision": bundle.revision, "policies": [s.as_dict() for s in statuses]}
        )


def routes(runtime: Runtime, gate: AdminGate) -> list[Route]:
    """The rollout routes, each with its admin action, behind the gate."""
    api = RolloutApi(runtime)
    read, label, promote = "rollout:read", "rollout:label", "rollout:promote"
    return [
        gate.route("GET", "/v1/rollout/status", api.status, action=read),
        gate.route(
            "GET",
            "/v1/rollout/policies/{policy_id}/queue",
            api.queue,
            api.resolve_policy,
            action=read,
        ),
        gate.route("POST", "/v1/rollout/labels", api.label, api.resolve_policy, action=label),
        gate.route(
            "POST", "/v1/rollout/promotions", api.promote, api.resolve_promotion, action=promote
        ),
    ]
