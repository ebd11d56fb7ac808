"""The admin API under /v1/: bundle status and lifecycle, decision queries, ledger proofs.

Every call needs `Authorization: Bearer <admin token>` (created by `trustplane init`, stored
hashed). Blocking store work runs in a worker thread so the event loop keeps answering.
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
from trustplane.recovery.revocation import RevocationError, RevocationKind
from trustplane.server.problems import Problem, json_response, parse_model, read_body
from trustplane.server.runtime import Runtime
from trustplane.telemetry.ledger import (
    DecisionQuery,
    LedgerError,
    get_decision,
    query_decisions,
)

ACTOR = "admin-token"


class ActivateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: StrictStr = Field(min_length=4, max_length=64)


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: StrictStr | None = Field(None, min_length=4, max_length=64)


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: RevocationKind = Field(description="principal (an entity) or credential (a JWT id)")
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

    def authenticate(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401,
                "unauthenticated",
                "Authentication required",
                "send Authorization: Bearer <admin token>",
                headers={"WWW-Authenticate": 'Bearer realm="trustplane-admin"'},
            )
        if not self._runtime.check_admin_token(token.strip()):
            raise Problem(
                401,
                "unauthenticated",
                "Authentication failed",
                "the admin token is not valid",
                headers={
                    "WWW-Authenticate": 'Bearer realm="trustplane-admin", error="invalid_token"'
                },
            )
        return ACTOR

    async def status(self, request: Request) -> Response:
        self.authenticate(request)
        return json_response(bundle_status(self._runtime))

    async def revisions(self, request: Request) -> Response:
        self.authenticate(request)
        manager = self._runtime.bundles
        history = await run_in_threadpool(manager.history, 100)
        return json_response({"activations": [a.as_dict() for a in history]})

    async def reload(self, request: Request) -> Response:
        actor = self.authenticate(request)
        loaded = await self._lifecycle(self._runtime.bundles.reload, reason="api", actor=actor)
        return json_response({"active": _describe(loaded)})

    async def activate(self, request: Request) -> Response:
        actor = self.authenticate(request)
        body = parse_model(ActivateBody, await read_body(request, self._limit))
        loaded = await self._lifecycle(
            self._runtime.bundles.activate_revision, body.revision, reason="api", actor=actor
        )
        return json_response({"active": _describe(loaded)})

    async def rollback(self, request: Request) -> Response:
        actor = self.authenticate(request)
        raw = await read_body(request, self._limit)
        body = parse_model(RollbackBody, raw) if raw.strip() else RollbackBody()
        loaded = await self._lifecycle(self._runtime.bundles.rollback, actor=actor, to=body.to)
        return json_response({"active": _describe(loaded)})

    async def revoke(self, request: Request) -> Response:
        """Revoke a principal or a credential: every serving process denies it within the
        change feed's latency. Revoking again answers the existing revocation (200, not 201)."""
        actor = self.authenticate(request)
        body = parse_model(RevokeBody, await read_body(request, self._limit))
        store = self._runtime.revocation_store
        try:
            revocation, created = await run_in_threadpool(
                store.revoke, body.kind, body.target, body.reason, actor
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
        return json_response({**revocation.as_dict(), "created": created}, 201 if created else 200)

    async def revocations(self, request: Request) -> Response:
        self.authenticate(request)
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
        self.authenticate(request)
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
        self.authenticate(request)
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
        self.authenticate(request)
        latest = await run_in_threadpool(self._runtime.ledger.latest_checkpoint)
        if latest is None:
            raise Problem(404, "not-found", "No checkpoint", "no checkpoint has been signed yet")
        return json_response(
            {**latest.as_dict(), "verifier_key": self._runtime.ledger.verifier_key}
        )

    async def checkpoints(self, request: Request) -> Response:
        self.authenticate(request)
        limit = _int_param(request.query_params.get("limit"), "limit", 100, 1, 1000)
        rows = await run_in_threadpool(self._runtime.ledger.list_checkpoints, limit)
        return json_response(
            {
                "checkpoints": [c.as_dict() for c in rows],
                "verifier_key": self._runtime.ledger.verifier_key,
            }
        )

    async def inclusion(self, request: Request) -> Response:
        self.authenticate(request)
        decision_id = request.query_params.get("decision_id")
        if not decision_id:
            raise _bad_query("decision_id", "is required")
        size = request.query_params.get("tree_size")
        tree_size = None if size is None else _int_param(size, "tree_size", 0, 0, 2**62)
        return await self._proof(self._runtime.ledger.inclusion_proof, decision_id, tree_size)

    async def consistency(self, request: Request) -> Response:
        self.authenticate(request)
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
