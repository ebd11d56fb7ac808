"""Admin API of the scorecard: the month's figures computed from the store and ledger (JSON,
Markdown or HTML), and the monthly snapshot that the report's trends are drawn from."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from trustplane.outcomes.report import render_html, render_markdown
from trustplane.outcomes.scorecard import Scorecard, ScorecardError, compute_scorecard
from trustplane.outcomes.snapshots import load_snapshots, save_snapshot
from trustplane.problems import json_response
from trustplane.server.admin.common import bad_query
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime

FORMATS = ("json", "md", "html")


class ScorecardApi:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def _compute(self, period: str | None) -> Scorecard:
        active = self._runtime.bundles.active
        try:
            return compute_scorecard(
                self._runtime.engine, None if active is None else active.bundle, period
            )
        except ScorecardError as exc:
            raise bad_query("period", str(exc)) from None

    async def show(self, request: Request, call: AdminCall) -> Response:
        """The scorecard of `period` (YYYY-MM, default this month) as `format`."""
        params = request.query_params
        unknown = set(params) - {"period", "format"}
        if unknown:
            raise bad_query(sorted(unknown)[0], "unknown query parameter")
        shape = params.get("format", "json")
        if shape not in FORMATS:
            raise bad_query("format", f"must be one of {', '.join(FORMATS)}")
        card = await run_in_threadpool(self._compute, params.get("period"))
        call.note(period=card.period)
        if shape == "md":
            return PlainTextResponse(render_markdown(card), media_type="text/markdown")
        if shape == "html":
            history = await run_in_threadpool(load_snapshots, self._runtime.engine)
            return HTMLResponse(render_html(card, history))
        return json_response(card.as_dict())

    async def snapshot(self, request: Request, call: AdminCall) -> Response:
        """Compute `period` and store it as that month's snapshot."""
        params = request.query_params
        unknown = set(params) - {"period"}
        if unknown:
            raise bad_query(sorted(unknown)[0], "unknown query parameter")
        card = await run_in_threadpool(self._compute, params.get("period"))
        await run_in_threadpool(save_snapshot, self._runtime.engine, card)
        call.note(period=card.period)
        return json_response(card.as_dict(), 201)


def routes(runtime: Runtime, gate: AdminGate) -> list[Route]:
    """The scorecard routes, each with its admin action, behind the gate."""
    api = ScorecardApi(runtime)
    return [
        gate.route("GET", "/v1/scorecard", api.show, action="scorecard:read"),
        gate.route("POST", "/v1/scorecard/snapshots", api.snapshot, action="scorecard:snapshot"),
    ]


__all__ = ["routes"]
