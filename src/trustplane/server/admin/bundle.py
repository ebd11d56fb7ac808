"""Admin API: the active policy bundle, its history, and its lifecycle (reload, activate,
rollback).

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
from trustplane.problems import Problem, json_response, parse_model, read_body
from trustplane.server.admin_auth import Target
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime


class ActivateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: StrictStr = Field(min_length=4, max_length=64)


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: StrictStr | None = Field(None, min_length=4, max_length=64)


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
        # The last deny-rate jumps on a route and what was done (rollout/rollback.py).
        "deny_jumps": list(runtime.rollback_guard.handled),
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


class BundleApi:
    """The gate (`server/admin_gate.py`) has authenticated and authorized each call before it
    gets here, and records it once it is answered; a handler says what the record should add."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._limit = runtime.settings.server.max_body_bytes

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


def routes(runtime: Runtime, gate: AdminGate) -> list[Route]:
    """The bundle routes, each with its admin action, behind the gate."""
    api = BundleApi(runtime)
    read, write = "bundle:read", "bundle:write"
    return [
        gate.route("GET", "/v1/bundle", api.status, action=read),
        gate.route("GET", "/v1/bundle/revisions", api.revisions, action=read),
        gate.route("POST", "/v1/bundle/reload", api.reload, action=write),
        gate.route("POST", "/v1/bundle/activate", api.activate, action=write),
        gate.route("POST", "/v1/bundle/rollback", api.rollback, action=write),
    ]
