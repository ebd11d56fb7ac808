"""HTTP face of governance: JIT access, break-glass and the exception register (admin API).

Each call is authenticated and authorized by `AdminApi` (the admin Cedar policies see the
target: who asked, who opened, which tier) and each change is recorded in the ledger with
who, what and why. Governance's own rules (`governance/`) then apply on top; their refusals
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
from trustplane.problems import Problem, json_response, parse_model, read_body
from trustplane.server.admin import AdminApi, governance_actor, governance_problem
from trustplane.server.admin_auth import AdminCaller, Target
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
    def __init__(self, runtime: Runtime, admin: AdminApi) -> None:
        self._runtime = runtime
        self._gov = runtime.governance
        self._admin = admin
        self._limit = runtime.settings.max_body_bytes

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

    async def _audit(
        self,
        caller: AdminCaller,
        action: str,
        target: Target,
        why: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        await run_in_threadpool(self._admin.audit, caller, action, target, why, True, details)

    async def _act(
        self, caller: AdminCaller, action: str, target: Target, fn: Callable[..., T], *args: Any
    ) -> T:
        """A governance change; a refusal by governance's own rules is recorded too."""
        try:
            return await self._call(fn, *args)
        except Problem as problem:
            if problem.status in (403, 409, 422):
                details = {"refused": problem.detail, "status": problem.status}
                await run_in_threadpool(
                    self._admin.audit, caller, action, target, "", False, details
                )
            raise

    async def _who(self, request: Request) -> AdminCaller:
        return await run_in_threadpool(self._admin.caller, request)

    async def _may(self, caller: AdminCaller, action: str, target: Target) -> None:
        await run_in_threadpool(self._admin.check, caller, action, target)

    async def _changed(self) -> None:
        """This node applies the change at once; the change feed tells the others."""
        await run_in_threadpool(self._gov.state.refresh)
        await run_in_threadpool(self._runtime.revocations.refresh)

    # -- JIT access ---------------------------------------------------------------------------

    async def request_access(self, request: Request) -> Response:
        caller = await self._admin.guard(request, "access:request", Target("request"))
        body = parse_model(AccessRequestBody, await read_body(request, self._limit))
        try:
            role = str(parse_entity(body.role, "role"))
        except RequestError as exc:
            raise governance_problem(GovernanceError(str(exc), "role")) from None
        seconds = _seconds(body.duration)
        actor = governance_actor(caller)
        record = await self._act(
            caller,
            "access:request",
            Target("request", "", actor.principal or ""),
            self._gov.access.request,
            actor,
            role,
            seconds,
            body.reason,
            body.ticket,
        )
        target = Target("request", record.id, record.principal, tier=record.tier)
        await self._audit(caller, "access:request", target, body.reason, {"role": role})
        return json_response(record.as_dict(), 201)

    async def list_requests(self, request: Request) -> Response:
        await self._admin.guard(request, "access:read", Target("request"))
        status = request.query_params.get("status")
        if status not in (None, "pending", "approved", "denied", "expired"):
            raise _bad_query("status", "must be pending, approved, denied or expired")
        items = await self._call(self._gov.access.find, status)
        return json_response({"requests": [r.as_dict() for r in items]})

    async def get_request(self, request: Request) -> Response:
        await self._admin.guard(request, "access:read", Target("request"))
        record = await self._call(self._gov.access.get, request.path_params["request_id"])
        return json_response(record.as_dict())

    async def approve(self, request: Request) -> Response:
        return await self._decide(request, "approve")

    async def deny(self, request: Request) -> Response:
        return await self._decide(request, "deny")

    async def _decide(self, request: Request, verdict: str) -> Response:
        caller = await self._who(request)  # authenticated before anything is looked up
        request_id = request.path_params["request_id"]
        record = await self._call(self._gov.access.get, request_id)
        target = Target("request", request_id, record.principal, tier=record.tier)
        await self._may(caller, f"access:{verdict}", target)
        raw = await read_body(request, self._limit)
        actor = governance_actor(caller)
        if verdict == "deny":
            reason = parse_model(ReasonBody, raw).reason
            decided = await self._act(
                caller, "access:deny", target, self._gov.access.deny, actor, request_id, reason
            )
            await self._audit(caller, "access:deny", target, reason)
            return json_response({"request": decided.as_dict(), "grant": None})
        comment = parse_model(CommentBody, raw).comment if raw.strip() else ""
        decided, grant = await self._act(
            caller, "access:approve", target, self._gov.access.approve, actor, request_id, comment
        )
        if grant is not None:
            await self._changed()
        details = {"grant": grant.id if grant else None, "status": decided.status}
        await self._audit(caller, "access:approve", target, comment, details)
        return json_response(
            {"request": decided.as_dict(), "grant": grant.as_dict() if grant else None}
        )

    async def list_grants(self, request: Request) -> Response:
        await self._admin.guard(request, "access:read", Target("grant"))
        active = request.query_params.get("active") == "true"
        items = await self._call(self._gov.access.grants, active)
        return json_response({"grants": [g.as_dict() for g in items]})

    async def revoke_grant(self, request: Request) -> Response:
        caller = await self._who(request)
        grant_id = request.path_params["grant_id"]
        grant = await self._call(self._gov.access.grant, grant_id)
        target = Target("grant", grant_id, grant.principal)
        await self._may(caller, "access:revoke", target)
        reason = parse_model(ReasonBody, await read_body(request, self._limit)).reason
        revoked, created = await self._act(
            caller,
            "access:revoke",
            target,
            self._gov.access.revoke,
            governance_actor(caller),
            grant_id,
            reason,
        )
        await self._changed()
        await self._audit(caller, "access:revoke", target, reason, {"new": created})
        return json_response({**revoked.as_dict(), "created": created}, 201 if created else 200)

    async def activity(self, request: Request) -> Response:
        """Decisions made while the grant applied (the ledger, by grant id)."""
        grant_id = request.path_params["grant_id"]
        await self._admin.guard(request, "access:read", Target("grant", grant_id))
        grant = await self._call(self._gov.access.grant, grant_id)
        query = DecisionQuery(policy=f"grant:{grant_id}", limit=1000)
        rows = await run_in_threadpool(query_decisions, self._runtime.engine, query)
        return json_response({"grant": grant.as_dict(), "decisions": rows})

    # -- break-glass --------------------------------------------------------------------------

    async def open_break_glass(self, request: Request) -> Response:
        caller = await self._admin.guard(request, "breakglass:open", Target("session"))
        body = parse_model(BreakGlassBody, await read_body(request, self._limit))
        seconds = None if body.duration is None else _seconds(body.duration)
        grant, review = await self._act(
            caller,
            "breakglass:open",
            Target("session", body.profile),
            self._gov.break_glass.open,
            governance_actor(caller),
            body.profile,
            body.reason,
            seconds,
        )
        self._gov.opened_break_glass(body.profile)
        await self._changed()
        target = Target("session", grant.id, grant.principal, grant.principal)
        await self._audit(caller, "breakglass:open", target, body.reason, {"profile": body.profile})
        return json_response({"session": grant.as_dict(), "review": review.as_dict()}, 201)

    async def list_break_glass(self, request: Request) -> Response:
        await self._admin.guard(request, "breakglass:read", Target("session"))
        overdue = request.query_params.get("overdue") == "true"
        items = await self._call(self._gov.break_glass.sessions, overdue)
        count = await self._call(self._gov.break_glass.overdue_count)
        sessions = [{"session": g.as_dict(), "review": r.as_dict()} for g, r in items]
        return json_response({"sessions": sessions, "overdue": count})

    async def review_break_glass(self, request: Request) -> Response:
        caller = await self._who(request)
        session_id = request.path_params["session_id"]
        grant, review = await self._call(self._gov.break_glass.session, session_id)
        target = Target("session", session_id, grant.principal, review.opened_by)
        await self._may(caller, "breakglass:review", target)
        notes = parse_model(ReviewBody, await read_body(request, self._limit)).notes
        closed = await self._act(
            caller,
            "breakglass:review",
            target,
            self._gov.break_glass.review,
            governance_actor(caller),
            session_id,
            notes,
        )
        await self._audit(caller, "breakglass:review", target, notes)
        return json_response({"session": grant.as_dict(), "review": closed.as_dict()})

    # -- exceptions ---------------------------------------------------------------------------

    async def create_exception(self, request: Request) -> Response:
        caller = await self._who(request)
        body = parse_model(ExceptionBody, await read_body(request, self._limit))
        bundle = self._runtime.bundles.active
        info = None if bundle is None else bundle.bundle.policy(body.policy)
        target = Target(
            "exception",
            body.policy,
            tier=(info.tier or "") if info else "",
            owner=info.owner if info else "",
        )
        await self._may(caller, "exception:request", target)
        seconds = _seconds(body.duration)
        item = await self._act(
            caller,
            "exception:request",
            target,
            lambda: self._gov.exceptions.create(
                governance_actor(caller),
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
        await self._audit(caller, "exception:request", target, body.reason, {"id": item.id})
        return json_response(item.as_dict(), 201)

    async def list_exceptions(self, request: Request) -> Response:
        await self._admin.guard(request, "exception:read", Target("exception"))
        params = request.query_params
        expiring = params.get("expiring")
        window = None if expiring is None else _seconds(expiring, "?expiring")
        status = params.get("status")
        if status not in (None, "pending", "approved", "denied"):
            raise _bad_query("status", "must be pending, approved or denied")
        items = await self._call(self._gov.exceptions.find, window, status)
        return json_response({"exceptions": [e.as_dict() for e in items]})

    async def approve_exception(self, request: Request) -> Response:
        caller = await self._who(request)
        exception_id = request.path_params["exception_id"]
        item = await self._call(self._gov.exceptions.get, exception_id)
        target = Target(
            "exception", exception_id, item.requested_by, tier=item.policy_tier, owner=item.owner
        )
        await self._may(caller, "exception:approve", target)
        raw = await read_body(request, self._limit)
        comment = parse_model(CommentBody, raw).comment if raw.strip() else ""
        approved = await self._act(
            caller,
            "exception:approve",
            target,
            self._gov.exceptions.approve,
            governance_actor(caller),
            exception_id,
            comment,
        )
        if approved.status == "approved":
            await self._changed()
        await self._audit(caller, "exception:approve", target, comment)
        return json_response(approved.as_dict())

    async def revoke_exception(self, request: Request) -> Response:
        caller = await self._who(request)
        exception_id = request.path_params["exception_id"]
        item = await self._call(self._gov.exceptions.get, exception_id)
        target = Target("exception", exception_id, item.requested_by, tier=item.policy_tier)
        await self._may(caller, "exception:revoke", target)
        reason = parse_model(ReasonBody, await read_body(request, self._limit)).reason
        revoked, created = await self._act(
            caller,
            "exception:revoke",
            target,
            self._gov.exceptions.revoke,
            governance_actor(caller),
            exception_id,
            reason,
        )
        await self._changed()
        await self._audit(caller, "exception:revoke", target, reason, {"new": created})
        return json_response({**revoked.as_dict(), "created": created}, 201 if created else 200)


def _bad_query(name: str, message: str) -> Problem:
    return Problem(
        400,
        "invalid-query",
        "Invalid query parameter",
        f"{name}: {message}",
        [{"pointer": f"?{name}", "detail": message, "code": "invalid"}],
    )


def governance_routes(api: GovernanceApi) -> list[Route]:
    return [
        Route("/v1/access/requests", api.request_access, methods=["POST"]),
        Route("/v1/access/requests", api.list_requests, methods=["GET"]),
        Route("/v1/access/requests/{request_id}", api.get_request, methods=["GET"]),
        Route("/v1/access/requests/{request_id}/approve", api.approve, methods=["POST"]),
        Route("/v1/access/requests/{request_id}/deny", api.deny, methods=["POST"]),
        Route("/v1/access/grants", api.list_grants, methods=["GET"]),
        Route("/v1/access/grants/{grant_id}/revoke", api.revoke_grant, methods=["POST"]),
        Route("/v1/access/grants/{grant_id}/activity", api.activity, methods=["GET"]),
        Route("/v1/break-glass", api.open_break_glass, methods=["POST"]),
        Route("/v1/break-glass", api.list_break_glass, methods=["GET"]),
        Route("/v1/break-glass/{session_id}/review", api.review_break_glass, methods=["POST"]),
        Route("/v1/exceptions", api.create_exception, methods=["POST"]),
        Route("/v1/exceptions", api.list_exceptions, methods=["GET"]),
        Route("/v1/exceptions/{exception_id}/approve", api.approve_exception, methods=["POST"]),
        Route("/v1/exceptions/{exception_id}/revoke", api.revoke_exception, methods=["POST"]),
    ]
