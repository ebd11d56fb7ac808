"""Admin API of drift: the served bundle against the directory it follows, checked now, and
the drift incidents per month (`trustplane policy drift --url`)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.problems import Problem, json_response
from trustplane.rollout.drift import Drift, DriftLog, DriftWatch, drift_of, read_dir
from trustplane.server.admin.common import bad_query
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime
from trustplane.telemetry.query import QueryError, parse_time


class DriftApi:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._log = DriftLog(runtime.engine)

    def _check(self) -> Drift:
        watch: DriftWatch | None = self._runtime.drift
        if watch is not None:
            found = watch.check()  # the same check as the periodic one: gauge and incidents
            if found is not None:
                return found
        manager = self._runtime.bundles
        active, directory = manager.active, manager.bundle_dir
        if active is None:
            raise Problem(503, "no-bundle", "No active bundle", "no policy bundle is active")
        if directory is None:
            raise Problem(
                409, "no-source", "No declared source", "the server follows no bundle directory"
            )
        bundle = active.bundle
        return drift_of(
            bundle.revision, bundle.source.files, str(directory), lambda: read_dir(directory)
        )

    async def drift(self, request: Request, call: AdminCall) -> Response:
        """The active revision against its directory, now, and the incidents since `since`
        (counted per month)."""
        params = request.query_params
        unknown = set(params) - {"since"}
        if unknown:
            raise bad_query(sorted(unknown)[0], "unknown query parameter")
        since = None
        if params.get("since"):
            try:
                since = parse_time(params["since"], "since")
            except QueryError as exc:
                raise bad_query(exc.field, exc.message) from None
        drift = await run_in_threadpool(self._check)
        history = await run_in_threadpool(self._log.history, since)
        return json_response({**drift.as_dict(), "history": history})


def routes(runtime: Runtime, gate: AdminGate) -> list[Route]:
    api = DriftApi(runtime)
    return [gate.route("GET", "/v1/bundle/drift", api.drift, action="bundle:read")]
