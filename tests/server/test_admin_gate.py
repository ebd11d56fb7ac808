"""The admin gate's table is the truth about the admin API: every route the real app serves is
either behind the gate with a table entry or listed as open with a reason; a handler offered
for a route the table lacks is refused at start-up; an unlisted path or method is a 404/405
problem, never authorized as some other action; the OpenAPI document agrees with the table."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.config import load_settings
from trustplane.server.admin import RESOURCES
from trustplane.server.admin_gate import (
    ADMIN_ROUTES,
    OPEN_ROUTES,
    UI_PREFIX,
    AdminCall,
    AdminGate,
    AdminRouteError,
    GatedEndpoint,
)
from trustplane.server.app import create_app
from trustplane.server.openapi import openapi_document
from trustplane.server.runtime import Runtime, initialise


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    state = tmp_path_factory.mktemp("state")
    settings = load_settings(overrides={"state_dir": state, "policy": {"watch": False}})
    initialise(settings)
    return Runtime(settings)


@pytest.fixture(scope="module")
def app(runtime: Runtime) -> Starlette:
    return create_app(runtime, manage_runtime=False)


def _page(path: str) -> bool:
    """A page under /ui (web/): HTML for people, gated like the API but not in its document."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def served(app: Starlette) -> Iterator[tuple[str, str, Route]]:
    for route in app.routes:
        assert isinstance(route, Route)
        methods = set(route.methods or ())
        if "GET" in methods:
            methods.discard("HEAD")  # Starlette adds HEAD to every GET route
        for method in sorted(methods):
            yield method, route.path, route


def test_every_served_route_is_gated_with_a_table_entry_or_open_with_a_reason(
    app: Starlette,
) -> None:
    gated: set[tuple[str, str]] = set()
    for method, path, route in served(app):
        endpoint = getattr(route.endpoint, "__self__", None)
        if isinstance(endpoint, GatedEndpoint):
            assert (method, path) in ADMIN_ROUTES, f"{method} {path} is gated but not in the table"
            assert endpoint.route is ADMIN_ROUTES[(method, path)]
            gated.add((method, path))
            continue
        assert (method, path) not in ADMIN_ROUTES, f"admin route {method} {path} bypasses the gate"
        listed = [o for o in OPEN_ROUTES if o.path == path]
        assert listed, f"{method} {path} is served but neither gated nor listed as open"
        assert any(o.methods is None or method in o.methods for o in listed), (method, path)
    assert gated == set(ADMIN_ROUTES), f"table entries not served: {set(ADMIN_ROUTES) - gated}"


def test_every_action_of_the_table_is_in_the_admin_schema() -> None:
    schema = (
        Path(__file__).resolve().parents[2]
        / "src/trustplane/server/admin_policy/schema.cedarschema"
    ).read_text()
    declared = set(re.findall(r'"([a-z-]+:[a-z-]+)"', schema))
    assert {r.action for r in ADMIN_ROUTES.values()} <= declared


def test_a_handler_for_a_route_the_table_lacks_is_refused(runtime: Runtime) -> None:
    async def handler(request: Request, call: AdminCall) -> Response:
        return Response("never")

    gate = AdminGate(runtime)
    unlisted = "/v1/attestations/{attestation_id}/sign"
    with pytest.raises(AdminRouteError, match=re.escape(f"POST {unlisted}")):
        gate.route("POST", unlisted, handler)
    with pytest.raises(AdminRouteError, match="PUT /v1/bundle"):
        gate.route("PUT", "/v1/bundle", handler)


def test_a_resource_module_and_the_table_must_agree_on_the_action(runtime: Runtime) -> None:
    async def handler(request: Request, call: AdminCall) -> Response:
        return Response("never")

    gate = AdminGate(runtime)
    with pytest.raises(AdminRouteError, match=r"declared as bundle:read .* as bundle:write"):
        gate.route("POST", "/v1/bundle/reload", handler, action="bundle:read")
    served = gate.route("POST", "/v1/bundle/reload", handler, action="bundle:write")
    assert served.path == "/v1/bundle/reload"


def test_every_admin_route_is_declared_by_its_module_with_the_tables_action(
    app: Starlette, runtime: Runtime
) -> None:
    declared: dict[tuple[str, str], str | None] = {}
    for method, path, route in served(app):
        endpoint = getattr(route.endpoint, "__self__", None)
        if isinstance(endpoint, GatedEndpoint):
            declared[(method, path)] = endpoint.declared
    assert declared == {key: entry.action for key, entry in ADMIN_ROUTES.items()}
    gate = AdminGate(runtime)
    modules = [
        (route.endpoint.__self__.route.method, route.path)  # type: ignore[attr-defined]
        for module in RESOURCES
        for route in module.routes(runtime, gate)
    ]
    assert len(modules) == len(set(modules)), "a route is served by two resource modules"
    outside = {key for key in set(ADMIN_ROUTES) - set(modules) if not _page(key[1])}
    assert {path for _, path in outside} <= {
        "/v1/attestations",
        "/v1/attestations/{attestation_id}",
    }, "only image attestations (served with CI's own route) and the pages (web/) live outside "
    "server/admin/"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/attestations/a1", 405),  # only DELETE is served there
        ("GET", "/v1/bundles", 404),
        ("POST", "/v1/bundle", 405),
        ("GET", "/v1/ledger", 404),
        ("PUT", "/v1/revocations", 405),
        ("GET", "/v1/identity", 404),
    ],
)
def test_an_unlisted_route_is_a_problem_not_a_guess(
    app: Starlette, method: str, path: str, status: int
) -> None:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            return await client.request(method, path, headers={"Authorization": "Bearer tpa_x"})

    response = asyncio.run(call())
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert path in response.json()["detail"]


def test_the_openapi_document_agrees_with_the_table() -> None:
    paths = openapi_document()["paths"]
    admin = {
        (method.upper(), path): operation
        for path, operations in paths.items()
        for method, operation in operations.items()
        if {"adminToken": []} in operation.get("security", [])
    }
    assert set(admin) == {key for key in ADMIN_ROUTES if not _page(key[1])}
    for key, operation in admin.items():
        assert operation["x-trustplane-admin-action"] == ADMIN_ROUTES[key].action, key
