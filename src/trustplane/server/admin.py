"""The admin API under /v1/: bundle status and lifecycle, and revocations (decision queries
and the ledger: `server/ledger_api.py`).

Every call reaches these handlers through the admin gate (`server/admin_gate.py`): it is
authenticated (`server/admin_auth.py`: an OIDC token, a JWT-SVID, mTLS through a trusted proxy,
or the bootstrap token of `trustplane init`), authorized by the admin Cedar policy set, and
recorded in the ledger with who, what and why, reads and refusals included. Blocking store
work runs in a worker thread so the event loop keeps answering.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.decision.loader import LoadedBundle
from trustplane.decision.manager import ActivationError
from trustplane.decision.policy_bundle import BundleError
from trustplane.governance.records import Actor, GovernanceError
from trustplane.problems import Problem, json_response, parse_model, read_body
from trustplane.recovery.revocation import RevocationError, RevocationKind
from trustplane.server.admin_auth import AdminCaller, Target
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime


class ActivateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: StrictStr = Field(min_length=4, max_length=64)


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: StrictStr | None = Field(None, min_length=4, max_length=64)


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: RevocationKind = Field(
        description="principal (an entity), credential (a JWT id), certificate (an X.509 "
        "serial), grant, exception or session (a break-glass session)"
    )
    target: StrictStr = Field(min_length=1, max_length=512)
    reason: StrictStr = Field(min_length=1, max_length=2000)


def bundle_status(runtime: Runtime) -> dict[str, Any]:
    manager = runtime.bundles
    active = manager.active
    status: dict[str, Any] = {
        "active": _describe(active) if active else None,
        "bundle_dir": str(manager.bundle_dir) if manager.bundle_dir else None,
        "last_error": [p.as_dict() for p in manager.last_error.problems]
        if manager.last_error
        else None,
        "deny_spike": runtime.deny_spike.alarm.as_dict() if runtime.deny_spike.alarm else None,
    }
    return status


def _describe(loaded: LoadedBundle) -> dict[str, Any]:
    bundle = loaded.bundle
    return {
        "name": bundle.name,
        "revision": bundle.revision,
        "policies": [p.summary() for p in bundle.policies],
        "warnings": [w.as_dict() for w in bundle.warnings],
        "tests": {
            "total": len(loaded.test_results),
            "passed": sum(1 for r in loaded.test_results if r.passed),
        },
    }


class AdminApi:
    """Handlers of the bundle and revocation routes. The gate
    (`server/admin_gate.py`) has authenticated and authorized each call before it gets here,
    and records it once it is answered; a handler says what the record should add."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._limit = runtime.settings.max_body_bytes

    async def status(self, request: Request, call: AdminCall) -> Response:
        return json_response(bundle_status(self._runtime))

    async def revisions(self, request: Request, call: AdminCall) -> Response:
        manager = self._runtime.bundles
        history = await run_in_threadpool(manager.history, 100)
        return json_response({"activations": [a.as_dict() for a in history]})

    async def reload(self, request: Request, call: AdminCall) -> Response:
        loaded = await self._lifecycle(
            self._runtime.bundles.reload, reason="api", actor=call.caller.name
        )
        _done(call, "reload", loaded)
        return json_response({"active": _describe(loaded)})

    async def activate(self, request: Request, call: AdminCall) -> Response:
        body = parse_model(ActivateBody, await read_body(request, self._limit))
        loaded = await self._lifecycle(
            self._runtime.bundles.activate_revision,
            body.revision,
            reason="api",
            actor=call.caller.name,
        )
        _done(call, "activate", loaded)
        return json_response({"active": _describe(loaded)})

    async def rollback(self, request: Request, call: AdminCall) -> Response:
        raw = await read_body(request, self._limit)
        body = parse_model(RollbackBody, raw) if raw.strip() else RollbackBody()
        loaded = await self._lifecycle(
            self._runtime.bundles.rollback, actor=call.caller.name, to=body.to
        )
        _done(call, "rollback", loaded)
        return json_response({"active": _describe(loaded)})

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

    async def _lifecycle(self, fn: Any, *args: Any, **kwargs: Any) -> LoadedBundle:
        try:
            result: LoadedBundle = await run_in_threadpool(fn, *args, **kwargs)
            return result
        except BundleError as exc:
            raise Problem(
                422,
                "bundle-refused",
                "Bundle refused",
                f"{len(exc.problems)} problem(s); the previous bundle keeps serving",
                [{"pointer": "", "detail": str(p), "code": "bundle"} for p in exc.problems],
            ) from None
        except ActivationError as exc:
            raise Problem(409, "activation-refused", "Activation refused", str(exc)) from None


def _done(call: AdminCall, step: str, loaded: LoadedBundle) -> None:
    call.note(Target("bundle", loaded.bundle.revision), step, step=step)


def admin_routes(api: AdminApi, gate: AdminGate) -> list[Route]:
    """The bundle and revocation routes, each behind the admin gate."""
    return [
        gate.route("GET", "/v1/bundle", api.status),
        gate.route("GET", "/v1/bundle/revisions", api.revisions),
        gate.route("POST", "/v1/bundle/reload", api.reload),
        gate.route("POST", "/v1/bundle/activate", api.activate),
        gate.route("POST", "/v1/bundle/rollback", api.rollback),
        gate.route("POST", "/v1/revocations", api.revoke),
        gate.route("GET", "/v1/revocations", api.revocations),
    ]


GOVERNED_KINDS = frozenset({RevocationKind.GRANT, RevocationKind.EXCEPTION, RevocationKind.SESSION})


def governance_actor(caller: AdminCaller) -> Actor:
    return Actor(caller.name, caller.principal, caller.kind == "bootstrap")


def governance_problem(exc: GovernanceError) -> Problem:
    errors = (
        [{"pointer": f"/{exc.field}", "detail": str(exc), "code": exc.code}] if exc.field else None
    )
    titles = {404: "Not found", 409: "Conflict", 403: "Refused", 422: "Invalid request"}
    return Problem(exc.status, exc.code, titles.get(exc.status, "Refused"), str(exc), errors)
