"""Admin API: revocations of principals, credentials, certificates, grants, exceptions and
break-glass sessions."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.governance.records import GovernanceError
from trustplane.problems import Problem, json_response, parse_model, read_body
from trustplane.recovery.revocation import RevocationError, RevocationKind
from trustplane.server.admin.common import governance_actor, governance_problem
from trustplane.server.admin_auth import Target
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime

GOVERNED_KINDS = frozenset({RevocationKind.GRANT, RevocationKind.EXCEPTION, RevocationKind.SESSION})


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: RevocationKind = Field(
        description="principal (an entity), credential (a JWT id), certificate (an X.509 "
        "serial), grant, exception or session (a break-glass session)"
    )
    target: StrictStr = Field(min_length=1, max_length=512)
    reason: StrictStr = Field(min_length=1, max_length=2000)


class RevocationsApi:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._limit = runtime.settings.max_body_bytes

    async def revoke(self, request: Request, call: AdminCall) -> Response:
        """Revoke a principal, a credential (JWT id or certificate serial), a grant, an
        exception or a break-glass session: every serving process stops honouring it within the
        change feed's latency. Revoking again answers the existing revocation (200, not 201)."""
        body = parse_model(RevokeBody, await read_body(request, self._limit))
        call.note(Target(body.kind.value, body.target.strip()), body.reason)
        if body.kind in GOVERNED_KINDS:
            return await self._revoke_governed(call, body)
        store = self._runtime.revocation_store
        try:
            revocation, created = await run_in_threadpool(
                store.revoke, body.kind, body.target, body.reason, call.caller.name
            )
        except RevocationError as exc:
            raise Problem(
                422,
                "invalid-request",
                "Invalid revocation",
                str(exc),
                [{"pointer": "/target", "detail": str(exc), "code": "invalid"}],
            ) from None
        await run_in_threadpool(self._runtime.revocations.refresh)  # this node: at once
        call.note(Target(body.kind.value, revocation.target), new=created)
        return json_response({**revocation.as_dict(), "created": created}, 201 if created else 200)

    async def _revoke_governed(self, call: AdminCall, body: RevokeBody) -> Response:
        """Grants, exceptions and break-glass sessions live in governance; same answer shape."""
        governance = self._runtime.governance
        actor = governance_actor(call.caller)
        try:
            if body.kind is RevocationKind.EXCEPTION:
                item, created = await run_in_threadpool(
                    governance.exceptions.revoke, actor, body.target.strip(), body.reason
                )
                done = item.revoked_at
            else:
                grant, created = await run_in_threadpool(
                    governance.access.revoke, actor, body.target.strip(), body.reason
                )
                if body.kind is RevocationKind.SESSION and grant.kind != "break-glass":
                    raise GovernanceError(f"{grant.id} is not a break-glass session", "target")
                done = grant.revoked_at
        except GovernanceError as exc:
            raise governance_problem(exc) from None
        await run_in_threadpool(governance.state.refresh)
        await run_in_threadpool(self._runtime.revocations.refresh)
        call.note(new=created)
        document = {
            "kind": body.kind.value,
            "target": body.target.strip(),
            "reason": body.reason,
            "actor": call.caller.name,
            "created_at": done,
            "created": created,
        }
        return json_response(document, 201 if created else 200)

    async def revocations(self, request: Request, call: AdminCall) -> Response:
        items, epoch = await run_in_threadpool(self._runtime.revocation_store.all)
        return json_response({"epoch": epoch, "revocations": [r.as_dict() for r in items]})


def routes(runtime: Runtime, gate: AdminGate) -> list[Route]:
    """The revocation routes, each with its admin action, behind the gate."""
    api = RevocationsApi(runtime)
    return [
        gate.route("POST", "/v1/revocations", api.revoke, action="revocation:write"),
        gate.route("GET", "/v1/revocations", api.revocations, action="revocation:read"),
    ]
