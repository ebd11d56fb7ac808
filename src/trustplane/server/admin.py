"""The admin API under /v1/: bundle status and lifecycle, decision queries, ledger proofs.

Every call is authenticated (`server/admin_auth.py`: an OIDC token, a JWT-SVID, mTLS through a
trusted proxy, or the bootstrap token of `trustplane init`) and authorized by the admin Cedar
policy set; refusals and every change are recorded in the ledger with who, what and why.
Blocking store work runs in a worker thread so the event loop keeps answering.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from trustplane.decision.bundle import BundleError
from trustplane.decision.loader import LoadedBundle
from trustplane.decision.manager import ActivationError
from trustplane.governance.catalog import access_catalog
from trustplane.governance.records import Actor, GovernanceError
from trustplane.problems import Problem, json_response, parse_model, read_body
from trustplane.recovery.revocation import RevocationError, RevocationKind
from trustplane.server.admin_auth import (
    AdminAuthenticator,
    AdminAuthorizer,
    AdminCaller,
    AdminUnauthenticated,
    Target,
)
from trustplane.server.runtime import Runtime
from trustplane.telemetry.ledger import (
    DecisionQuery,
    LedgerError,
    admin_entry,
    get_decision,
    query_decisions,
)

# Admin actions of the routes that do not name theirs: the path's family, read or write.
_FAMILIES = (
    ("/v1/bundle", "bundle"),
    ("/v1/decisions", "decisions"),
    ("/v1/ledger", "ledger"),
    ("/v1/revocations", "revocation"),
    ("/v1/identity", "identity"),
)


def route_action(method: str, path: str) -> str:
    family = next((name for prefix, name in _FAMILIES if path.startswith(prefix)), "bundle")
    return f"{family}:{'read' if method in ('GET', 'HEAD') else 'write'}"


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
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._limit = runtime.settings.max_body_bytes
        self._authn = AdminAuthenticator(
            runtime.settings, runtime.check_admin_token, runtime.identity
        )
        self.authorizer = AdminAuthorizer(runtime.settings.admin_policy_dir)

    # -- who is calling, and may they --------------------------------------------------------

    def _roles(self, principal: str) -> frozenset[str]:
        active = self._runtime.bundles.active
        if active is None:
            return frozenset()
        return access_catalog(active.bundle).roles_of(principal)

    def caller(self, request: Request) -> AdminCaller:
        """Authenticate (blocking: may fetch an issuer's JWKS); 401 naming what is missing."""
        peer = request.client.host if request.client else None
        try:
            caller = self._authn.authenticate(request.headers, peer, self._roles)
            revocations = self._runtime.revocations
            revoked = revocations.named(caller.principal or caller.name)
            if revoked is None:
                revoked = revocations.credential(caller.token_id)
            if revoked is None:
                revoked = revocations.certificate(caller.certificate_serial)
            if revoked is not None:
                raise AdminUnauthenticated(
                    f"revoked: {revoked.target} ({revoked.reason})", "invalid_token"
                )
        except AdminUnauthenticated as exc:
            challenge = 'Bearer realm="trustplane-admin"'
            if exc.error:
                challenge += f', error="{exc.error}"'
            raise Problem(
                401,
                "unauthenticated",
                "Authentication failed" if exc.error else "Authentication required",
                exc.detail,
                headers={"WWW-Authenticate": challenge},
            ) from None
        return caller

    def check(self, caller: AdminCaller, action: str, target: Target, wait: bool = True) -> None:
        """403 (recorded in the ledger) unless the admin policies allow `action`."""
        verdict = self.authorizer.authorize(caller, action, target)
        if verdict.allowed:
            return
        details = {"policies": list(verdict.policies)}
        self.audit(caller, action, target, "", False, details, wait=wait)
        because = ", ".join(verdict.policies) or "no admin policy permits it"
        if verdict.errors:
            because += f"; errors: {'; '.join(verdict.errors)}"
        raise Problem(
            403,
            "forbidden",
            "Admin action refused",
            f"{caller.name} may not {action} on {target.label()} ({because})",
        )

    def audit(
        self,
        caller: AdminCaller,
        action: str,
        target: Target,
        reason: str,
        allowed: bool,
        details: dict[str, Any] | None = None,
        wait: bool = True,
    ) -> None:
        """Record an admin action (or a refused attempt) in the ledger; with `wait`, once
        committed (never `wait` on the event loop)."""
        self._runtime.recorder.record_entry_blocking(
            admin_entry(caller.name, action, target.label(), reason, allowed, details), wait=wait
        )

    def authenticate(self, request: Request) -> str:
        """Authenticate and authorize the route's action from an event loop (the identity
        routes); writes are queued for the ledger. Returns the caller's name for the audit
        trail. An OIDC caller whose issuer's keys are not cached yet waits for one JWKS fetch."""
        caller = self.caller(request)
        action = route_action(request.method, request.url.path)
        target = Target(action.split(":")[0], request.url.path)
        self.check(caller, action, target, wait=False)
        if not action.endswith(":read"):
            self.audit(caller, action, target, "", True, wait=False)
        return caller.name

    async def guard(
        self, request: Request, action: str | None = None, target: Target | None = None
    ) -> AdminCaller:
        """`caller` and `check` off the event loop; reads are not recorded, refusals are."""
        caller = await run_in_threadpool(self.caller, request)
        action = action or route_action(request.method, request.url.path)
        target = target or Target(action.split(":")[0])
        await run_in_threadpool(self.check, caller, action, target)
        return caller

    async def status(self, request: Request) -> Response:
        await self.guard(request)
        return json_response(bundle_status(self._runtime))

    async def revisions(self, request: Request) -> Response:
        await self.guard(request)
        manager = self._runtime.bundles
        history = await run_in_threadpool(manager.history, 100)
        return json_response({"activations": [a.as_dict() for a in history]})

    async def reload(self, request: Request) -> Response:
        caller = await self.guard(request)
        loaded = await self._lifecycle(
            self._runtime.bundles.reload, reason="api", actor=caller.name
        )
        await self._done(caller, "bundle:write", "reload", loaded)
        return json_response({"active": _describe(loaded)})

    async def activate(self, request: Request) -> Response:
        caller = await self.guard(request)
        body = parse_model(ActivateBody, await read_body(request, self._limit))
        loaded = await self._lifecycle(
            self._runtime.bundles.activate_revision, body.revision, reason="api", actor=caller.name
        )
        await self._done(caller, "bundle:write", "activate", loaded)
        return json_response({"active": _describe(loaded)})

    async def rollback(self, request: Request) -> Response:
        caller = await self.guard(request)
        raw = await read_body(request, self._limit)
        body = parse_model(RollbackBody, raw) if raw.strip() else RollbackBody()
        loaded = await self._lifecycle(
            self._runtime.bundles.rollback, actor=caller.name, to=body.to
        )
        await self._done(caller, "bundle:write", "rollback", loaded)
        return json_response({"active": _describe(loaded)})

    async def _done(self, caller: AdminCaller, action: str, what: str, loaded: Any) -> None:
        target = Target("bundle", loaded.bundle.revision)
        await run_in_threadpool(self.audit, caller, action, target, what, True, {"step": what})

    async def revoke(self, request: Request) -> Response:
        """Revoke a principal, a credential (JWT id or certificate serial), a grant, an
        exception or a break-glass session: every serving process stops honouring it within the
        change feed's latency. Revoking again answers the existing revocation (200, not 201)."""
        caller = await self.guard(request, "revocation:write", Target("revocation"))
        body = parse_model(RevokeBody, await read_body(request, self._limit))
        if body.kind in GOVERNED_KINDS:
            return await self._revoke_governed(caller, body)
        store = self._runtime.revocation_store
        try:
            revocation, created = await run_in_threadpool(
                store.revoke, body.kind, body.target, body.reason, caller.name
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
        target = Target(body.kind.value, revocation.target)
        await run_in_threadpool(
            self.audit, caller, "revocation:write", target, body.reason, True, {"new": created}
        )
        return json_response({**revocation.as_dict(), "created": created}, 201 if created else 200)

    async def _revoke_governed(self, caller: AdminCaller, body: RevokeBody) -> Response:
        """Grants, exceptions and break-glass sessions live in governance; same answer shape."""
        governance = self._runtime.governance
        actor = governance_actor(caller)
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
        target = Target(body.kind.value, body.target.strip())
        await run_in_threadpool(
            self.audit, caller, "revocation:write", target, body.reason, True, {"new": created}
        )
        document = {
            "kind": body.kind.value,
            "target": body.target.strip(),
            "reason": body.reason,
            "actor": caller.name,
            "created_at": done,
            "created": created,
        }
        return json_response(document, 201 if created else 200)

    async def revocations(self, request: Request) -> Response:
        await self.guard(request)
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

    async def decisions(self, request: Request) -> Response:
        await self.guard(request)
        params = request.query_params
        unknown = set(params) - {
            "principal",
            "decision",
            "policy",
            "shadow_mismatch",
            "since",
            "limit",
        }
        if unknown:
            raise _bad_query(sorted(unknown)[0], "unknown query parameter")
        decision = params.get("decision")
        if decision not in (None, "allow", "deny"):
            raise _bad_query("decision", "must be allow or deny")
        mismatch = params.get("shadow_mismatch")
        if mismatch not in (None, "true", "false"):
            raise _bad_query("shadow_mismatch", "must be true or false")
        query = DecisionQuery(
            principal=params.get("principal"),
            decision=decision,
            policy=params.get("policy"),
            shadow_mismatch=None if mismatch is None else mismatch == "true",
            since=_float_param(params.get("since"), "since"),
            limit=_int_param(params.get("limit"), "limit", 50, 1, 1000),
        )
        rows = await run_in_threadpool(query_decisions, self._runtime.engine, query)
        return json_response({"decisions": rows})

    async def decision(self, request: Request) -> Response:
        await self.guard(request)
        decision_id = request.path_params["decision_id"]
        row = await run_in_threadpool(get_decision, self._runtime.engine, decision_id)
        if row is None:
            raise Problem(
                404,
                "not-found",
                "Decision not found",
                f"no recorded decision {decision_id} (recording may still be pending)",
            )
        return json_response(row)

    async def checkpoint(self, request: Request) -> Response:
        await self.guard(request)
        latest = await run_in_threadpool(self._runtime.ledger.latest_checkpoint)
        if latest is None:
            raise Problem(404, "not-found", "No checkpoint", "no checkpoint has been signed yet")
        return json_response(
            {**latest.as_dict(), "verifier_key": self._runtime.ledger.verifier_key}
        )

    async def checkpoints(self, request: Request) -> Response:
        await self.guard(request)
        limit = _int_param(request.query_params.get("limit"), "limit", 100, 1, 1000)
        rows = await run_in_threadpool(self._runtime.ledger.list_checkpoints, limit)
        return json_response(
            {
                "checkpoints": [c.as_dict() for c in rows],
                "verifier_key": self._runtime.ledger.verifier_key,
            }
        )

    async def inclusion(self, request: Request) -> Response:
        await self.guard(request)
        decision_id = request.query_params.get("decision_id")
        if not decision_id:
            raise _bad_query("decision_id", "is required")
        size = request.query_params.get("tree_size")
        tree_size = None if size is None else _int_param(size, "tree_size", 0, 0, 2**62)
        return await self._proof(self._runtime.ledger.inclusion_proof, decision_id, tree_size)

    async def consistency(self, request: Request) -> Response:
        await self.guard(request)
        first = _int_param(request.query_params.get("first"), "first", None, 0, 2**62)
        second_raw = request.query_params.get("second")
        second = None if second_raw is None else _int_param(second_raw, "second", 0, 0, 2**62)
        return await self._proof(self._runtime.ledger.consistency_proof, first, second)

    async def _proof(self, fn: Any, *args: Any) -> Response:
        try:
            proof = await run_in_threadpool(fn, *args)
        except LedgerError as exc:
            raise Problem(404, "proof-unavailable", "Proof unavailable", str(exc)) from None
        return json_response(proof)


GOVERNED_KINDS = frozenset({RevocationKind.GRANT, RevocationKind.EXCEPTION, RevocationKind.SESSION})


def governance_actor(caller: AdminCaller) -> Actor:
    return Actor(caller.name, caller.principal, caller.kind == "bootstrap")


def governance_problem(exc: GovernanceError) -> Problem:
    errors = (
        [{"pointer": f"/{exc.field}", "detail": str(exc), "code": exc.code}] if exc.field else None
    )
    titles = {404: "Not found", 409: "Conflict", 403: "Refused", 422: "Invalid request"}
    return Problem(exc.status, exc.code, titles.get(exc.status, "Refused"), str(exc), errors)


def _bad_query(name: str, message: str) -> Problem:
    return Problem(
        400,
        "invalid-query",
        "Invalid query parameter",
        f"{name}: {message}",
        [{"pointer": f"?{name}", "detail": message, "code": "invalid"}],
    )


def _int_param(raw: str | None, name: str, default: int | None, low: int, high: int) -> int:
    if raw is None:
        if default is None:
            raise _bad_query(name, "is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_query(name, "must be an integer") from None
    if not low <= value <= high:
        raise _bad_query(name, f"must be between {low} and {high}")
    return value


def _float_param(raw: str | None, name: str) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise _bad_query(name, "must be a UNIX timestamp") from None
