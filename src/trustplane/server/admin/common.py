"""What the admin resource handlers share: query-parameter parsing and the answer for a
governance refusal."""

from __future__ import annotations

from trustplane.governance.records import Actor, GovernanceError
from trustplane.problems import Problem
from trustplane.server.admin_auth import AdminCaller


def governance_actor(caller: AdminCaller) -> Actor:
    return Actor(caller.name, caller.principal, caller.kind == "bootstrap")


def governance_problem(exc: GovernanceError) -> Problem:
    errors = (
        [{"pointer": f"/{exc.field}", "detail": str(exc), "code": exc.code}] if exc.field else None
    )
    titles = {404: "Not found", 409: "Conflict", 403: "Refused", 422: "Invalid request"}
    return Problem(exc.status, exc.code, titles.get(exc.status, "Refused"), str(exc), errors)


def bad_query(name: str, message: str) -> Problem:
    return Problem(
        400,
        "invalid-query",
        "Invalid query parameter",
        f"{name}: {message}",
        [{"pointer": f"?{name}", "detail": message, "code": "invalid"}],
    )


def int_param(raw: str | None, name: str, default: int | None, low: int, high: int) -> int:
    if raw is None:
        if default is None:
            raise bad_query(name, "is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_query(name, "must be an integer") from None
    if not low <= value <= high:
        raise bad_query(name, f"must be between {low} and {high}")
    return value


def float_param(raw: str | None, name: str) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise bad_query(name, "must be a UNIX timestamp") from None
