"""Admin API: recorded decisions and the ledger's signed checkpoints and proofs."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.problems import Problem, json_response
from trustplane.server.admin.common import bad_query, float_param, int_param
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime
from trustplane.telemetry.ledger import DecisionQuery, LedgerError, get_decision, query_decisions


class LedgerApi:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def decisions(self, request: Request, call: AdminCall) -> Response:
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
            raise bad_query(sorted(unknown)[0], "unknown query parameter")
        decision = params.get("decision")
        if decision not in (None, "allow", "deny"):
            raise bad_query("decision", "must be allow or deny")
        mismatch = params.get("shadow_mismatch")
        if mismatch not in (None, "true", "false"):
            raise bad_query("shadow_mismatch", "must be true or false")
        query = DecisionQuery(
            principal=params.get("principal"),
            decision=decision,
            policy=params.get("policy"),
            shadow_mismatch=None if mismatch is None else mismatch == "true",
            since=float_param(params.get("since"), "since"),
            limit=int_param(params.get("limit"), "limit", 50, 1, 1000),
        )
        rows = await run_in_threadpool(query_decisions, self._runtime.engine, query)
        return json_response({"decisions": rows})

    async def decision(self, request: Request, call: AdminCall) -> Response:
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

    async def checkpoint(self, request: Request, call: AdminCall) -> Response:
        latest = await run_in_threadpool(self._runtime.ledger.latest_checkpoint)
        if latest is None:
            raise Problem(404, "not-found", "No checkpoint", "no checkpoint has been signed yet")
        return json_response(
            {**latest.as_dict(), "verifier_key": self._runtime.ledger.verifier_key}
        )

    async def checkpoints(self, request: Request, call: AdminCall) -> Response:
        limit = int_param(request.query_params.get("limit"), "limit", 100, 1, 1000)
        rows = await run_in_threadpool(self._runtime.ledger.list_checkpoints, limit)
        return json_response(
            {
                "checkpoints": [c.as_dict() for c in rows],
                "verifier_key": self._runtime.ledger.verifier_key,
            }
        )

    async def inclusion(self, request: Request, call: AdminCall) -> Response:
        decision_id = request.query_params.get("decision_id")
        if not decision_id:
            raise bad_query("decision_id", "is required")
        size = request.query_params.get("tree_size")
        tree_size = None if size is None else int_param(size, "tree_size", 0, 0, 2**62)
        return await self._proof(self._runtime.ledger.inclusion_proof, decision_id, tree_size)

    async def consistency(self, request: Request, call: AdminCall) -> Response:
        first = int_param(request.query_params.get("first"), "first", None, 0, 2**62)
        second_raw = request.query_params.get("second")
        second = None if second_raw is None else int_param(second_raw, "second", 0, 0, 2**62)
        return await self._proof(self._runtime.ledger.consistency_proof, first, second)

    async def _proof(self, fn: Any, *args: Any) -> Response:
        try:
            proof = await run_in_threadpool(fn, *args)
        except LedgerError as exc:
            raise Problem(404, "proof-unavailable", "Proof unavailable", str(exc)) from None
        return json_response(proof)


def routes(runtime: Runtime, gate: AdminGate) -> list[Route]:
    """The decision and ledger routes, each with its admin action, behind the gate."""
    api = LedgerApi(runtime)
    read = "decisions:read"
    proofs = "ledger:read"
    return [
        gate.route("GET", "/v1/decisions", api.decisions, action=read),
        gate.route("GET", "/v1/decisions/{decision_id}", api.decision, action=read),
        gate.route("GET", "/v1/ledger/checkpoint", api.checkpoint, action=proofs),
        gate.route("GET", "/v1/ledger/checkpoints", api.checkpoints, action=proofs),
        gate.route("GET", "/v1/ledger/proof/inclusion", api.inclusion, action=proofs),
        gate.route("GET", "/v1/ledger/proof/consistency", api.consistency, action=proofs),
    ]
