"""Admin API: revoke a principal, a credential, a certificate, a grant, an exception or a
break-glass session; lift a revocation; list them. The handlers parse, call the revocation
service (`recovery/service.py`) and format; the gate records who did what and why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.governance.records import GovernanceError
from trustplane.problems import Problem, json_response, parse_model
from trustplane.recovery.revocation import RevocationError, RevocationKind
from trustplane.recovery.service import Caller, RevocationService, UnknownPrincipal
from trustplane.server.admin.common import bad_query, governance_problem
from trustplane.server.admin_auth import AdminCaller, Target
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime

T = TypeVar("T")


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: RevocationKind = Field(
        description="principal (an entity), credential (a JWT id), certificate (an X.509 "
        "serial), grant, exception or session (a break-glass session)"
    )
    target: StrictStr = Field(min_length=1, max_length=512)
    reason: StrictStr = Field(min_length=1, max_length=2000)
    expires: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="When the revocation ends by itself: a duration (30m, 2h, 7d) or an "
        "RFC 3339 time. Without it, it stands until lifted. Principal, credential and "
        "certificate revocations only.",
    )
    force: StrictBool = Field(
        False,
        description="Revoke a principal that no bundle entity and no identity of the "
        "inventory knows (otherwise 409: it is likely a typo).",
    )


class LiftBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: StrictStr = Field(min_length=1, max_length=2000)


def caller_of(caller: AdminCaller) -> Caller:
    return Caller(caller.name, caller.principal, caller.kind == "bootstrap")


def revocation_problem(exc: RevocationError) -> Problem:
    """The answer for a refused revocation request, naming the field at fault."""
    errors = (
        [{"pointer": f"/{exc.field}", "detail": str(exc), "code": "invalid"}]
        if exc.field and exc.status == 422
        else None
    )
    if isinstance(exc, UnknownPrincipal):
        return Problem(409, "unknown-principal", "Unknown principal", str(exc))
    slug, title = {
        404: ("not-found", "Revocation not found"),
        409: ("conflict", "Revocation conflict"),
    }.get(exc.status, ("invalid-request", "Invalid revocation"))
    return Problem(exc.status, slug, title, str(exc), errors)


class RevocationsApi:
    def __init__(self, runtime: Runtime) -> None:
        self._service: RevocationService = runtime.revocation_service

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except RevocationError as exc:
            raise revocation_problem(exc) from None
        except GovernanceError as exc:
            raise governance_problem(exc) from None

    async def revoke(self, request: Request, call: AdminCall) -> Response:
        """Every serving process stops honouring the target within the change feed's latency.
        Revoking again answers the revocation in force (200, not 201)."""
        body = parse_model(RevokeBody, await call.body(request))
        call.note(Target(body.kind.value, body.target.strip()), body.reason)
        if body.force:
            call.note(force=True)
        revoked = await self._call(
            self._service.revoke,
            caller_of(call.caller),
            body.kind,
            body.target,
            body.reason,
            expires=body.expires,
            force=body.force,
        )
        revocation = revoked.revocation
        call.note(
            Target(body.kind.value, revocation.target),
            new=revoked.created,
            step="revoke",
            revocation=revocation.id,
        )
        if revocation.expires_at is not None:
            call.note(expires_at=revocation.expires_at)
        document = {**revocation.as_dict(), "created": revoked.created}
        if revoked.record is not None:
            document["record"] = revoked.record
        return json_response(document, 201 if revoked.created else 200)

    async def lift(self, request: Request, call: AdminCall) -> Response:
        """End a revocation now, by its id or a unique prefix; lifting again answers the first
        lift (200 with `lifted` false)."""
        body = parse_model(LiftBody, await call.body(request))
        call.note(reason=body.reason, step="lift")
        revocation, lifted = await self._call(
            self._service.lift,
            caller_of(call.caller),
            request.path_params["revocation_id"],
            body.reason,
        )
        call.note(
            Target(revocation.kind.value, revocation.target),
            revocation=revocation.id,
            lifted=lifted,
        )
        return json_response({**revocation.as_dict(), "lifted": lifted})

    async def revocations(self, request: Request, call: AdminCall) -> Response:
        params = request.query_params
        unknown = set(params) - {"ended"}
        if unknown:
            raise bad_query(sorted(unknown)[0], "unknown query parameter")
        ended = params.get("ended", "false")
        if ended not in ("true", "false"):
            raise bad_query("ended", "must be true or false")
        items, epoch = await self._call(self._service.listing, ended=ended == "true")
        return json_response({"epoch": epoch, "revocations": [r.as_dict() for r in items]})


def routes(runtime: Runtime, gate: AdminGate) -> list[Route]:
    """The revocation routes, each with its admin action, behind the gate."""
    api = RevocationsApi(runtime)
    write, read = "revocation:write", "revocation:read"
    return [
        gate.route("POST", "/v1/revocations", api.revoke, action=write),
        gate.route("GET", "/v1/revocations", api.revocations, action=read),
        gate.route("POST", "/v1/revocations/{revocation_id}/lift", api.lift, action=write),
    ]
