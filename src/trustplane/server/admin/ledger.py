"""Admin API, the ledger resource: decision queries, signed checkpoints, proofs, and the pages a
remote `trustplane audit verify` reads to check the whole ledger itself.

Every call comes through the admin gate (`server/admin_gate.py`: authenticated, authorized as
`decisions:read` or `ledger:read`, and recorded in the ledger). Query parameters are checked
before any store work: an unknown or malformed one is a 400 problem naming it. Filters are
parsed by `telemetry/query.py`, the same code that parses the CLI's options.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.problems import Problem, json_response
from trustplane.server.admin.common import bad_query, int_param
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime, verifier_keys
from trustplane.telemetry.ledger import (
    LedgerError,
    checkpoint_page,
    get_decision,
    quarantine_page,
    query_decisions,
    record_page,
    tree_size,
)
from trustplane.telemetry.query import DecisionQuery, QueryError, entity_filter, parse_time

DECISION_PARAMS = (
    "principal",
    "action",
    "resource",
    "decision",
    "policy",
    "shadow_mismatch",
    "kind",
    "since",
    "until",
    "limit",
)
"""The filters of `GET /v1/decisions` (the OpenAPI document lists the same)."""

PAGE_PARAMS = ("from_seq", "to_seq", "limit")
CHECKPOINT_PARAMS = ("from_size", "limit")
_LARGEST = 2**62
_PAGE_LIMIT = 10_000


class LedgerApi:
    """Handlers of the decision and ledger routes."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def decisions(self, request: Request, call: AdminCall) -> Response:
        query = decision_query(request.query_params)
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
        _known(request.query_params, ())
        latest = await run_in_threadpool(self._runtime.ledger.latest_checkpoint)
        if latest is None:
            raise Problem(404, "not-found", "No checkpoint", "no checkpoint has been signed yet")
        return json_response(
            {**latest.as_dict(), "verifier_key": self._runtime.ledger.verifier_key}
        )

    async def checkpoints(self, request: Request, call: AdminCall) -> Response:
        """The newest checkpoints; with `from_size`, a page of them in size order (what a
        remote verification reads), and where the next page starts."""
        params = request.query_params
        _known(params, CHECKPOINT_PARAMS)
        paged = params.get("from_size") is not None
        limit = int_param(params.get("limit"), "limit", 100, 1, _PAGE_LIMIT if paged else 1000)
        keys = {
            "verifier_key": self._runtime.ledger.verifier_key,
            "verifier_keys": verifier_keys(self._runtime.settings),
        }
        if not paged:
            rows = await run_in_threadpool(self._runtime.ledger.list_checkpoints, limit)
            return json_response({"checkpoints": [c.as_dict() for c in rows], **keys})
        start = int_param(params.get("from_size"), "from_size", 0, 0, _LARGEST)
        page = await run_in_threadpool(checkpoint_page, self._runtime.engine, start, limit)
        following = page[-1].size + 1 if len(page) == limit else None
        return json_response(
            {"checkpoints": [c.as_dict() for c in page], "next_from_size": following, **keys}
        )

    async def records(self, request: Request, call: AdminCall) -> Response:
        """Stored rows as they are (query columns, record, leaf hash), in ledger order."""
        return await self._page(request, record_page)

    async def quarantine(self, request: Request, call: AdminCall) -> Response:
        """Records the store refused as rows, which keep their leaf in the tree."""
        return await self._page(request, quarantine_page)

    async def _page(self, request: Request, read: Any) -> Response:
        params = request.query_params
        _known(params, PAGE_PARAMS)
        start = int_param(params.get("from_seq"), "from_seq", 0, 0, _LARGEST)
        raw_end = params.get("to_seq")
        end = None if raw_end is None else int_param(raw_end, "to_seq", 0, 0, _LARGEST)
        limit = int_param(params.get("limit"), "limit", 1000, 1, _PAGE_LIMIT)
        engine = self._runtime.engine
        size = await run_in_threadpool(tree_size, engine)
        rows = await run_in_threadpool(read, engine, start, end, limit)
        following = rows[-1]["seq"] + 1 if len(rows) == limit else None
        return json_response({"records": rows, "next_from_seq": following, "tree_size": size})

    async def inclusion(self, request: Request, call: AdminCall) -> Response:
        params = request.query_params
        _known(params, ("decision_id", "tree_size"))
        decision_id = params.get("decision_id")
        if not decision_id:
            raise bad_query("decision_id", "is required")
        size = params.get("tree_size")
        tree = None if size is None else int_param(size, "tree_size", 0, 0, _LARGEST)
        return await self._proof(self._runtime.ledger.inclusion_proof, decision_id, tree)

    async def consistency(self, request: Request, call: AdminCall) -> Response:
        params = request.query_params
        _known(params, ("first", "second"))
        first = int_param(params.get("first"), "first", None, 0, _LARGEST)
        second_raw = params.get("second")
        second = None if second_raw is None else int_param(second_raw, "second", 0, 0, _LARGEST)
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
        gate.route("GET", "/v1/ledger/records", api.records, action=proofs),
        gate.route("GET", "/v1/ledger/quarantine", api.quarantine, action=proofs),
        gate.route("GET", "/v1/ledger/proof/inclusion", api.inclusion, action=proofs),
        gate.route("GET", "/v1/ledger/proof/consistency", api.consistency, action=proofs),
    ]


def decision_query(params: QueryParams) -> DecisionQuery:
    """`GET /v1/decisions`' parameters as a query; a 400 problem naming the first bad one."""
    _known(params, DECISION_PARAMS)
    for name in DECISION_PARAMS:
        if len(params.getlist(name)) > 1:
            raise bad_query(name, "given more than once")
    mismatch = params.get("shadow_mismatch")
    if mismatch not in (None, "true", "false"):
        raise bad_query("shadow_mismatch", "must be true or false")
    try:
        query = DecisionQuery(
            principal=_entity(params, "principal"),
            action=_entity(params, "action"),
            resource=_entity(params, "resource"),
            decision=params.get("decision"),
            policy=params.get("policy") or None,
            shadow_mismatch=None if mismatch is None else mismatch == "true",
            kind=params.get("kind"),
            since=_time(params, "since"),
            until=_time(params, "until"),
            limit=int_param(params.get("limit"), "limit", 50, 1, 1000),
        ).check()
    except QueryError as exc:
        raise bad_query(exc.field, exc.message) from None
    return query


def _entity(params: QueryParams, name: str) -> Any:
    raw = params.get(name)
    return None if raw is None else entity_filter(raw, name)


def _time(params: QueryParams, name: str) -> float | None:
    raw = params.get(name)
    return None if raw is None else parse_time(raw, name)


def _known(params: QueryParams, names: Iterable[str]) -> None:
    known = set(names)
    unknown = sorted(set(params) - known)
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise bad_query(unknown[0], f"unknown query parameter (known: {listed})")
