"""The admin API's handlers, one module per resource. Each module's `routes(runtime, gate)`
returns its routes, each declared with the admin action it performs; the gate
(`server/admin_gate.py`) serves a route only when its `ADMIN_ROUTES` table lists it with that
action, so the table stays the one place that says what each route is authorized as."""

from __future__ import annotations

from starlette.routing import Route

from trustplane.server.admin import (
    bundle,
    governance,
    identity,
    ledger,
    revocations,
    rollout,
    scorecard,
)
from trustplane.server.admin_gate import AdminGate
from trustplane.server.runtime import Runtime

RESOURCES = (bundle, revocations, ledger, governance, identity, rollout, scorecard)


def admin_routes(runtime: Runtime, gate: AdminGate) -> list[Route]:
    """Every route of the admin resources above, behind the gate."""
    return [route for module in RESOURCES for route in module.routes(runtime, gate)]
