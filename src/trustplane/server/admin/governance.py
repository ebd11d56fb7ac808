"""HTTP face of governance: JIT access, break-glass and the exception register (admin API).

Each call is authenticated, authorized and recorded by the admin gate (`server/admin_gate.py`;
the admin Cedar policies see the target: who asked, who opened, which tier), with who, what
and why. Governance's own rules (`governance/`) then apply on top; their refusals
are 403/404/409/422 problems naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.decision.requests import RequestError, parse_entity
from trustplane.governance.catalog import DurationError, parse_duration
from trustplane.governance.records import GovernanceError
from trustplane.problems import Problem, json_response, parse_model
from trustplane.recovery.revocation import RevocationError, RevocationKind
from trustplane.server.admin.common import bad_query, governance_actor, governance_problem
from trustplane.server.admin.revocations import caller_of, revocation_problem
from trustplane.server.admin_auth import Target
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime
from trustplane.telemetry.ledger import DecisionQuery, query_decisions

T = TypeVar("T")
Duration = StrictStr | StrictInt


class AccessRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: StrictStr = Field(min_length=1, max_length=512, description='e.g. Role::"sre"')
    duration: Duration = Field(description="How long, e.g. 2h (at most the role's maximum).")
    reason: StrictStr = Field("", max_length=2000)
    ticket: StrictStr = Field("", max_length=200)


class CommentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: StrictStr = Field("", max_length=2000)


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: StrictStr = Field(min_length=1, max_length=2000)


class BreakGlassBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    profile: StrictStr = Field(min_length=1, max_length=128)
    reason: StrictStr = Field(min_length=1, max_length=2000)
    duration: Duration | None = None


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notes: StrictStr = Field(min_length=1, max_length=10_000)


class ExceptionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: StrictStr = Field(min_length=1, max_length=128)
    principal: StrictStr = Field(min_length=1, max_length=512)
    action: StrictStr | None = Field(None, max_length=512)
    resource: StrictStr | None = Field(None, max_length=512)
    owner: StrictStr = Field(min_length=1, max_length=256)
    reason: StrictStr = Field(min_length=1, max_length=2000)
    ticket: StrictStr = Field(min_length=1, max_length=200)
    duration: Duration = Field(description="How long once approved, e.g. 30d (capped).")


def _seconds(value: str | int, pointer: str = "/duration") -> int:
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise Problem(
            422,
            "invalid-request",
            "Invalid request",
            f"{pointer.strip('/')}: {exc}",
            [{"pointer": pointer, "detail": str(exc), "code": "invalid"}],
        ) from None


class GovernanceApi:
    """Handlers of JIT access, break-glass and the exception register. The gate
    (`server/admin_gate.py`) admits each call; the resolvers below give the admin policies the
    target's attributes (who asked, who opened, which tier) before it asks them."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._gov = runtime.governance

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await run_in_threadpool(fn, *args)
        except GovernanceError as exc:
            raise governance_problem(exc) from None
        except OperationalError as exc:
            # A concurrent writer (SQLite) or a lost connection: the transaction rolled back
            # whole, so nothing half-done stays; the caller may simply retry.
            raise Problem(
                503,
                "store-busy",
                "Store busy",
                f"the change was not made, retry: {exc.orig}",
                headers={"Retry-After": "1"},
            ) from None

    async def _changed(self) -> None:
        """This node applies the change at once; the change feed tells the others."""
        await run_in_threadpool(self._gov.state.refresh)
        await run_in_threadpool(self._runtime.revocations.refresh)

    # -- targets: what the admin policies see of the object acted on ----------------------------

    async def request_target(self, request: Request, call: AdminCall) -> Target:
        request_id = request.path_params["request_id"]
        record = await self._call(self._gov.access.get, request_id)
        return Target("request", request_id, record.principal, tier=record.tier)

    async def grant_target(self, request: Request, call: AdminCall) -> Target:
        grant_id = request.path_params["grant_id"]
        grant = await self._call(self._gov.access.grant, grant_id)
        return Target("grant", grant_id, grant.principal)

    async def session_target(self, request: Request, call: AdminCall) -> Target:
        session_id = request.path_params["session_id"]
        grant, review = await self._call(self._gov.break_glass.session, session_id)
        return Target("session", session_id, grant.principal, review.opened_by)

    async def new_exception_target(self, request: Request, call: AdminCall) -> Target:
        body = parse_model(ExceptionBody, await call.body(request))
        bundle = self._runtime.bundles.active
        info = None if bundle is None else bundle.bundle.policy(body.policy)
        return Target(
            "exception",
            body.policy,
            tier=(info.tier or "") if info else "",
            owner=info.owner if info else "",
        )

    async def exception_target(self, request: Request, call: AdminCall) -> Target:
        exception_id = request.path_params["exception_id"]
        item = await self._call(self._gov.exceptions.get, exception_id)
        return Target(
            "exception", exception_id, item.requested_by, tier=item.policy_tier, owner=item.owner
        )

    # -- JIT access ---------------------------------------------------------------------------

    async def request_access(self, request: Request, call: AdminCall) -> Response:
        body = parse_model(AccessRequestBody, await call.body(request))
        try:
            role = str(parse_entity(body.role, "role"))
        except RequestError as exc:
            raise governance_problem(GovernanceError(str(exc), "role")) from None
        seconds = _seconds(body.duration)
        actor = governance_actor(call.caller)
        call.note(Target("request", "", actor.principal or ""), body.reason, role=role)
        record = await self._call(
            self._gov.access.request, actor, role, seconds, body.reason, body.ticket
        )
        call.note(Target("request", record.id, record.principal, tier=record.tier))
        return json_response(record.as_dict(), 201)

    async def list_requests(self, request: Request, call: AdminCall) -> Response:
        status = request.query_params.get("status")
        if status not in (None, "pending", "approved", "denied", "expired"):
            raise bad_query("status", "must be pending, approved, denied or expired")
        items = await self._call(self._gov.access.find, status)
        return json_response({"requests": [r.as_dict() for r in items]})

    async def get_request(self, request: Request, call: AdminCall) -> Response:
        record = await self._call(self._gov.access.get, request.path_params["request_id"])
        return json_response(record.as_dict())

    async def approve(self, request: Request, call: AdminCall) -> Response:
        raw = await call.body(request)
        comment = parse_model(CommentBody, raw).comment if raw.strip() else ""
        call.note(reason=comment)
        actor = governance_actor(call.caller)
        request_id = request.path_params["request_id"]
        decided, grant = await self._call(self._gov.access.approve, actor, request_id, comment)
        if grant is not None:
            await self._changed()
        call.note(grant=grant.id if grant else None, status_after=decided.status)
        return json_response(
            {"request": decided.as_dict(), "grant": grant.as_dict() if grant else None}
        )

    async def deny(self, request: Request, call: AdminCall) -> Response:
        reason = parse_model(ReasonBody, await call.body(request)).reason
        call.note(reason=reason)
        actor = governance_actor(call.caller)
        request_id = request.path_params["request_id"]
        decided = await self._call(self._gov.access.deny, actor, request_id, reason)
        return json_response({"request": decided.as_dict(), "grant": None})

    async def list_grants(self, request: Request, call: AdminCall) -> Response:
        active = request.query_params.get("active") == "true"
        items = await self._call(self._gov.access.grants, active)
        return json_response({"grants": [g.as_dict() for g in items]})

    async def revoke_grant(self, request: Request, call: AdminCall) -> Response:
        reason = parse_model(ReasonBody, await call.body(request)).reason
        call.note(reason=reason)
        grant_id = request.path_params["grant_id"]
        return await self._revoke(call, RevocationKind.GRANT, grant_id, reason)

    async def activity(self, request: Request, call: AdminCall) -> Response:
        """Decisions made while the grant applied (the ledger, by grant id)."""
        grant_id = request.path_params["grant_id"]
        grant = await self._call(self._gov.access.grant, grant_id)
        query = DecisionQuery(policy=f"grant:{grant_id}", limit=1000)
        rows = await run_in_threadpool(query_decisions, self._runtime.engine, query)
        return json_response({"grant": grant.as_dict(), "decisions": rows})

    # -- break-glass --------------------------------------------------------------------------

    async def open_break_glass(self, request: Request, call: AdminCall) -> Response:
        body = parse_model(BreakGlassBody, await call.body(request))
        seconds = None if body.duration is None else _seconds(body.duration)
        call.note(Target("session", body.profile), body.reason, profile=body.profile)
        grant, review = await self._call(
            self._gov.break_glass.open,
            governance_actor(call.caller),
            body.profile,
            body.reason,
            seconds,
        )
        self._gov.opened_break_glass(body.profile)
        await self._changed()
        call.note(Target("session", grant.id, grant.principal, grant.principal))
        return json_response({"session": grant.as_dict(), "review": review.as_dict()}, 201)

    async def list_break_glass(self, request: Request, call: AdminCall) -> Response:
        overdue = request.query_params.get("overdue") == "true"
        items = await self._call(self._gov.break_glass.sessions, overdue)
        count = await self._call(self._gov.break_glass.overdue_count)
        sessions = [{"session": g.as_dict(), "review": r.as_dict()} for g, r in items]
        return json_response({"sessions": sessions, "overdue": count})

    async def review_break_glass(self, request: Request, call: AdminCall) -> Response:
        notes = parse_model(ReviewBody, await call.body(request)).notes
        call.note(reason=notes)
        session_id = request.path_params["session_id"]
        grant, _review = await self._call(self._gov.break_glass.session, session_id)
        closed = await self._call(
            self._gov.break_glass.review, governance_actor(call.caller), session_id, notes
        )
        return json_response({"session": grant.as_dict(), "review": closed.as_dict()})

    # -- exceptions ---------------------------------------------------------------------------

    async def create_exception(self, request: Request, call: AdminCall) -> Response:
        body = parse_model(ExceptionBody, await call.body(request))
        seconds = _seconds(body.duration)
        call.note(reason=body.reason)
        item = await self._call(
            lambda: self._gov.exceptions.create(
                governance_actor(call.caller),
                policy_id=body.policy,
                principal=body.principal,
                action=body.action,
                resource=body.resource,
                owner=body.owner,
                reason=body.reason,
                ticket=body.ticket,
                duration_seconds=seconds,
            ),
        )
        call.note(id=item.id)
        return json_response(item.as_dict(), 201)

    async def list_exceptions(self, request: Request, call: AdminCall) -> Response:
        params = request.query_params
        expiring = params.get("expiring")
        window = None if expiring is None else _seconds(expiring, "?expiring")
        status = params.get("status")
        if status not in (None, "pending", "approved", "denied"):
            raise bad_query("status", "must be pending, approved or denied")
        items = await self._call(self._gov.exceptions.find, window, status)
        return json_response({"exceptions": [e.as_dict() for e in items]})

    async def approve_exception(self, request: Request, call: AdminCall) -> Response:
        raw = await call.body(request)
        comment = parse_model(CommentBody, raw).comment if raw.strip() else ""
        call.note(reason=comment)
        exception_id = request.path_params["exception_id"]
        approved = await self._call(
            self._gov.exceptions.approve, governance_actor(call.caller), exception_id, comment
        )
        if approved.status == "approved":
            await self._changed()
        return json_response(approved.as_dict())

    async def revoke_exception(self, request: Request, call: AdminCall) -> Response:
        reason = parse_model(ReasonBody, await call.body(request)).reason
        call.note(reason=reason)
        exception_id = request.path_params["exception_id"]
        return await self._revoke(call, RevocationKind.EXCEPTION, exception_id, reason)

    async def _revoke(
        self, call: AdminCall, kind: RevocationKind, target: str, reason: str
    ) -> Response:
        """Through the revocation service, like every revocation; answers the record."""
        service = self._runtime.revocation_service
        try:
            revoked = await self._call(service.revoke, caller_of(call.caller), kind, target, reason)
        except RevocationError as exc:
            raise revocation_problem(exc) from None
        call.note(new=revoked.created)
        document = {**(revoked.record or {}), "created": revoked.created}
        return json_response(document, 201 if revoked.created else 200)


def routes(runtime: Runtime, gate: AdminGate) -> list[Route]:
    """Every governance route, each with its admin action, behind the gate. A resolver builds
    the target the admin policies see (who asked, who opened, which tier)."""
    api = GovernanceApi(runtime)
    access = "/v1/access"
    return [
        gate.route("POST", f"{access}/requests", api.request_access, action="access:request"),
        gate.route("GET", f"{access}/requests", api.list_requests, action="access:read"),
        gate.route(
            "GET", f"{access}/requests/{{request_id}}", api.get_request, action="access:read"
        ),
        gate.route(
            "POST",
            f"{access}/requests/{{request_id}}/approve",
            api.approve,
            api.request_target,
            action="access:approve",
        ),
        gate.route(
            "POST",
            f"{access}/requests/{{request_id}}/deny",
            api.deny,
            api.request_target,
            action="access:deny",
        ),
        gate.route("GET", f"{access}/grants", api.list_grants, action="access:read"),
        gate.route(
            "POST",
            f"{access}/grants/{{grant_id}}/revoke",
            api.revoke_grant,
            api.grant_target,
            action="access:revoke",
        ),
        gate.route(
            "GET", f"{access}/grants/{{grant_id}}/activity", api.activity, action="access:read"
        ),
        gate.route("POST", "/v1/break-glass", api.open_break_glass, action="breakglass:open"),
        gate.route("GET", "/v1/break-glass", api.list_break_glass, action="breakglass:read"),
        gate.route(
            "POST",
            "/v1/break-glass/{session_id}/review",
            api.review_break_glass,
            api.session_target,
            action="breakglass:review",
        ),
        gate.route(
            "POST",
            "/v1/exceptions",
            api.create_exception,
            api.new_exception_target,
            action="exception:request",
        ),
        gate.route("GET", "/v1/exceptions", api.list_exceptions, action="exception:read"),
        gate.route(
            "POST",
            "/v1/exceptions/{exception_id}/approve",
            api.approve_exception,
            api.exception_target,
            action="exception:approve",
        ),
        gate.route(
            "POST",
            "/v1/exceptions/{exception_id}/revoke",
            api.revoke_exception,
            api.exception_target,
            action="exception:revoke",
        ),
    ]
