"""routes.yaml: parsing with located problems, matching, and the Cedar requests it builds."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import cedarpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SHOP
from trustplane.decision.policy_bundle import (
    BundleError,
    BundleProblem,
    BundleSource,
    compile_bundle,
)
from trustplane.decision.routes import HttpFacts, RouteTable, parse_routes
from trustplane.model import EntityRef

SCHEMA = cedarpy.Schema.from_str((SHOP / "schema.cedarschema").read_text())


def table(text: str) -> RouteTable:
    problems: list[BundleProblem] = []
    parsed = parse_routes(text, SCHEMA, problems)
    assert not problems, problems
    assert parsed is not None
    return parsed


def problems_of(text: str) -> list[BundleProblem]:
    problems: list[BundleProblem] = []
    assert parse_routes(text, SCHEMA, problems) is None
    return problems


SIMPLE = """
routes:
  - methods: [POST]
    host: payments.shop.internal
    path: /v1/payments/{payment}/refund
    action: payments:refund
    resource: {type: Api, id: "payments.{payment}"}
  - path: /ops/services/{service}/logs
    action: ops:read-logs
    resource: {type: Service, id: "{service}"}
  - methods: [get]
    path: /files/{rest...}
    action: billing:read
    resource: {type: Dataset, id: "{rest}"}
"""


def test_the_shop_bundle_maps_its_routes() -> None:
    bundle = compile_bundle(BundleSource.from_dir(SHOP))
    assert bundle.routes is not None
    found = bundle.routes.match("POST", "shop.example", "/payments/v1/refunds")
    assert found is not None
    assert found.route.action == "payments:refund"


def test_first_matching_route_wins_and_filters_apply() -> None:
    routes = table(SIMPLE)
    hit = routes.match("post", "Payments.Shop.Internal:8443", "/v1/payments/p-9/refund?x=1")
    assert hit is not None and dict(hit.params) == {"payment": "p-9"}
    assert routes.match("GET", "payments.shop.internal", "/v1/payments/p-9/refund") is None
    assert routes.match("POST", "other.host", "/v1/payments/p-9/refund") is None
    assert routes.match("GET", "any", "/ops/services/checkout/logs/extra") is None
    assert routes.match("GET", "any", "/ops/services//logs") is None, "empty segment"
    rest = routes.match("GET", "h", "/files/a/b%20c.txt")
    assert rest is not None and rest.params == {"rest": "a/b c.txt"}
    empty = routes.match("GET", "h", "/files/")
    assert empty is not None and empty.params == {"rest": ""}
    assert routes.match("GET", "h", "/files") is None, "a rest parameter needs its slash"
    assert routes.match("POST", "h", "/files/a") is None


def test_access_request_fills_resource_and_typed_context() -> None:
    routes = table(
        """
principal_type: User
context:
  mfa: ${credential.mfa}
  auth_age_seconds: ${credential.auth_age_seconds}
  risk_score: 0
routes:
  - path: /ops/services/{service}/logs
    action: ops:read-logs
    resource: {type: Service, id: "{service}"}
    context:
      note: "from ${request.source_ip} for ${params.service}"
      missing: "${credential.subject}"
"""
    )
    found = routes.match("GET", "h", "/ops/services/checkout/logs")
    assert found is not None
    facts = HttpFacts(
        "GET",
        "h",
        "/ops/services/checkout/logs",
        source_ip="10.0.0.7",
        credential={"mfa": True, "auth_age_seconds": 30},
    )
    request = routes.access_request(found, EntityRef("User", "alice"), facts)
    assert str(request.action) == 'Action::"ops:read-logs"'
    assert str(request.resource) == 'Service::"checkout"'
    assert request.context["mfa"] is True
    assert request.context["auth_age_seconds"] == 30
    assert request.context["risk_score"] == 0
    assert request.context["note"] == "from 10.0.0.7 for checkout"
    assert "missing" not in request.context, "an unknown value is left out, not sent as null"


def test_routes_starting_with_a_parameter_keep_their_place_in_the_order() -> None:
    routes = table(
        """
routes:
  - path: /files/special
    action: billing:read
    resource: {type: Dataset, id: special}
  - path: /{anything}/special
    action: ops:read-logs
    resource: {type: Service, id: "{anything}"}
  - path: /files/{rest...}
    action: billing:read
    resource: {type: Dataset, id: "{rest}"}
  - path: /{rest...}
    action: admin:console-login
    resource: {type: Service, id: console}
"""
    )

    def action(path: str) -> tuple[str, str] | None:
        found = routes.match("GET", "h", path)
        return None if found is None else (found.route.action, found.route.resource_id)

    assert action("/files/special") == ("billing:read", "special")
    assert action("/other/special") == ("ops:read-logs", "{anything}")
    assert action("/files/x") == ("billing:read", "{rest}")
    assert action("/other/x") == ("admin:console-login", "console")
    assert action("/") == ("admin:console-login", "console")


def test_context_references_name_every_kind_of_fact() -> None:
    routes = table(
        """
context:
  who: ${credential.subject}
  method: ${request.method}
  host: ${request.host}
  path: ${request.path}
  tls: ${request.tls}
  sni: ${request.sni}
  agent: "ua=${headers.user-agent}"
  tenant: ${extensions.tenant}
  absent: ${headers.x-absent}
routes:
  - path: /ops/services/{service}/logs
    action: ops:read-logs
    resource: {type: Service, id: "{service}"}
    context:
      nested: {list: ["${params.service}", 1], text: plain}
"""
    )
    found = routes.match("GET", "h", "/ops/services/a%2Fb/logs")
    assert found is not None
    facts = HttpFacts(
        "get",
        "H.example:8443",
        "/ops/services/a%2Fb/logs?q=1",
        tls=True,
        sni="h.example",
        credential={"subject": "from-facts"},
        headers={"user-agent": "curl"},
        extensions={"tenant": "t1"},
    )
    request = routes.access_request(found, EntityRef("User", "alice"), facts, {"subject": "bob"})
    assert str(request.resource) == 'Service::"a/b"'
    assert request.context == {
        "who": "bob",
        "method": "GET",
        "host": "h.example",
        "path": "/ops/services/a%2Fb/logs",
        "tls": True,
        "sni": "h.example",
        "agent": "ua=curl",
        "tenant": "t1",
        "nested": {"list": ["a/b", 1], "text": "plain"},
    }
    fallback = routes.access_request(found, EntityRef("User", "alice"), facts)
    assert fallback.context["who"] == "from-facts"


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("action: payments:nope\n    resource: {type: Api, id: x}", "unrecognized action"),
        ("action: payments:refund\n    resource: {type: Nope, id: x}", "Nope"),
        (
            "action: payments:refund\n    resource: {type: Service, id: x}",
            "unable to find an applicable action",
        ),
        ("action: payments:refund\n    resource: {type: Api, id: '{who}'}", "{who}"),
        ("action: payments:refund\n    resource: {type: Api}", "'resource' must be"),
        ("action: payments:refund\n    resource: {type: Api, id: x}\n    verb: GET", "'verb'"),
        (
            "action: payments:refund\n    resource: {type: Api, id: x}\n"
            "    context: {a: '${request.cookie}'}",
            "${request.cookie}",
        ),
    ],
)
def test_each_bad_route_is_reported_on_its_line(route: str, expected: str) -> None:
    text = f"""routes:
  - path: /ok
    action: payments:refund
    resource: {{type: Api, id: payments.refund}}
  - path: /v1/{{id}}
    {route}
"""
    found = problems_of(text)
    assert found, "the bad route must be refused"
    assert all(p.line == 5 for p in found), found
    assert any(expected in p.message for p in found), found


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a/{x}{y}", "whole segment"),
        ("/a/{x...}/b", "last segment"),
        ("/a/{x}/{x}", "twice"),
        ("relative", "starting with '/'"),
    ],
)
def test_bad_path_templates_are_named(path: str, expected: str) -> None:
    text = (
        f"routes:\n  - path: {path!r}\n    action: payments:refund\n"
        "    resource: {type: Api, id: x}\n"
    )
    messages = [p.message for p in problems_of(text)]
    assert any(expected in m for m in messages), messages


def test_invalid_yaml_and_shapes_are_refused() -> None:
    assert "invalid YAML" in problems_of("routes: [\n")[0].message
    assert "non-empty list" in problems_of("routes: []\n")[0].message
    assert "unknown field" in problems_of("routs: []\nroutes: [{}]\n")[0].message


def test_a_bundle_with_broken_routes_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "shop"
    shutil.copytree(SHOP, bundle)
    (bundle / "routes.yaml").write_text(
        "routes:\n  - path: /x\n    action: payments:nope\n    resource: {type: Api, id: x}\n"
    )
    with pytest.raises(BundleError) as caught:
        compile_bundle(BundleSource.from_dir(bundle))
    assert any(p.file == "routes.yaml" and p.line == 2 for p in caught.value.problems)


# -- matching against a naive oracle -----------------------------------------------------------

_segment = st.text(alphabet="abc-_.%", min_size=0, max_size=3)
_literal = st.text(alphabet="abc", min_size=1, max_size=3)


@st.composite
def template_and_path(draw: st.DrawFn) -> tuple[str, str]:
    parts: list[str] = []
    for i in range(draw(st.integers(1, 4))):
        parts.append(draw(st.sampled_from([f"{{p{i}}}", draw(_literal), ""])))
    if draw(st.booleans()):
        parts.append("{tail...}")
    template = "/" + "/".join(parts)
    if draw(st.booleans()):
        # A path built from the template, so matches are common.
        path_parts = []
        for part in parts:
            if part.startswith("{tail"):
                path_parts.extend(draw(st.lists(_segment, min_size=0, max_size=3)))
            elif part.startswith("{"):
                path_parts.append(draw(_segment))
            else:
                path_parts.append(part)
        path = "/" + "/".join(path_parts)
    else:
        path = "/" + "/".join(draw(st.lists(_segment, min_size=0, max_size=5)))
    return template, path


def oracle(template: str, path: str) -> bool:
    pattern = ""
    for part in template[1:].split("/"):
        if part == "{tail...}":
            pattern += "/.*"  # the rest after the slash, slashes included, possibly empty
        elif part.startswith("{"):
            pattern += "/[^/]+"
        else:
            pattern += "/" + re.escape(part)
    return re.fullmatch(pattern, path) is not None


@given(template_and_path())
def test_matching_agrees_with_a_regex_oracle(case: tuple[str, str]) -> None:
    template, path = case
    routes = table(
        f"routes:\n  - path: {template!r}\n    action: payments:refund\n"
        "    resource: {type: Api, id: payments.refund}\n"
    )
    matched = routes.match("GET", "h", path) is not None
    assert matched == oracle(template, path), (template, path)


# -- bundle tests written as HTTP requests -------------------------------------------------------


def http_test(body: str, expect: str = "allow") -> str:
    return f"tests:\n  - name: t\n    http:\n{body}\n    expect: {expect}\n"


def run_bundle_tests(tmp_path: Path, test_yaml: str, routes: str | None = None) -> list[Any]:
    from trustplane.decision.engine import Evaluator
    from trustplane.decision.testing import run_tests

    bundle = tmp_path / "shop"
    shutil.copytree(SHOP, bundle)
    shutil.rmtree(bundle / "tests")
    (bundle / "tests").mkdir()
    (bundle / "tests" / "http.yaml").write_text(test_yaml)
    if routes is not None:
        (bundle / "routes.yaml").write_text(routes)
    compiled = compile_bundle(BundleSource.from_dir(bundle))
    return run_tests(Evaluator(compiled), compiled.tests)


def test_http_tests_are_mapped_by_the_routes_and_catch_a_moved_route(tmp_path: Path) -> None:
    test = http_test(
        "      method: GET\n      path: /inventory/v1/stock/sku-1\n"
        "      principal: {type: User, id: bob}"
    )
    (result,) = run_bundle_tests(tmp_path, test)
    assert result.passed, result.failures
    # The same test against routes that send the path to another action fails, naming why.
    moved = (
        (SHOP / "routes.yaml")
        .read_text()
        .replace("action: inventory:read", "action: inventory:reserve")
    )
    (result,) = run_bundle_tests(tmp_path / "moved", test, routes=moved)
    assert not result.passed
    assert "expected allow, got deny" in result.failures[0]


def test_an_unmapped_http_test_is_a_deny(tmp_path: Path) -> None:
    body = "      method: DELETE\n      path: /nowhere\n      principal: {type: User, id: bob}"
    (denied,) = run_bundle_tests(tmp_path, http_test(body, "deny"))
    assert denied.passed and denied.decision.errors[0].startswith("no_route_matched")
    (wanted,) = run_bundle_tests(tmp_path / "again", http_test(body, "allow"))
    assert not wanted.passed and "no route matches DELETE /nowhere" in wanted.failures[0]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("      path: /x\n      principal: {type: User, id: bob}\n      verb: GET", "unknown"),
        ("      path: relative\n      principal: {type: User, id: bob}", "start with '/'"),
        ("      path: /x", "principal"),
    ],
)
def test_bad_http_tests_are_refused_with_their_line(
    tmp_path: Path, body: str, expected: str
) -> None:
    with pytest.raises(BundleError) as caught:
        run_bundle_tests(tmp_path, http_test(body))
    found = [p for p in caught.value.problems if p.file == "tests/http.yaml"]
    assert found and found[0].line == 2
    assert expected in found[0].message, found
