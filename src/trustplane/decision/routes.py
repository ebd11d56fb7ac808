"""Route mapping: how an HTTP request becomes a Cedar request.

A bundle's `routes.yaml` maps method + host + path templates to a Cedar action and resource, so a
proxy's `POST /v1/payments/123/refund` reaches policy as `Action::"payments:refund"` on
`Payment::"123"`, not as a raw path. It is part of the bundle: hashed into the revision, checked
at load (every action and resource type must exist in the schema) and activated with it.

    principal_type: User            # Cedar type of callers identified by a token or a proxy
    workload_type: Service          # Cedar type of workloads identified by a SPIFFE ID (mTLS)
    workload_id_attribute: spiffe_id   # the static entity whose attribute holds that ID
    context:                        # sent with every mapped request; a route may add to it
      mfa: ${credential.mfa}
      auth_age_seconds: ${credential.auth_age_seconds}
    routes:                         # the first route that matches wins
      - methods: [POST]             # optional; any method when absent
        host: payments.shop.internal   # optional; any host when absent (port ignored)
        path: /v1/payments/{payment_id}/refund
        action: payments:refund
        resource: {type: Payment, id: "{payment_id}"}

Path templates: literal segments, `{name}` (exactly one segment) and a final `{name...}` (the
rest of the path after its slash, possibly empty, as in Go's ServeMux). Context values are
literals, or `${...}` references to what the enforcement point knows (see `REFERENCES`); a value
that is only a reference keeps the referenced type (a Bool stays a Bool), one embedded in text
is interpolated as a string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import cedarpy

from trustplane.decision.policy_bundle import BundleProblem, read_yaml
from trustplane.model import AccessRequest, EntityRef

ROUTES_FILE = "routes.yaml"

# What `${...}` may name. `params.NAME` (a path parameter of the route) is checked per route.
REFERENCES = frozenset(
    {
        "credential.subject",
        "credential.issuer",
        "credential.mfa",
        "credential.mfa_strength",
        "credential.auth_age_seconds",
        "request.method",
        "request.host",
        "request.path",
        "request.source_ip",
        "request.tls",
        "request.sni",
    }
)
# Prefixes whose names are open-ended: a path parameter, a request header (lower case), an
# Envoy `context_extensions` entry.
_OPEN_PREFIXES = ("params.", "headers.", "extensions.")
_TOP_KEYS = frozenset(
    {"principal_type", "workload_type", "workload_id_attribute", "context", "routes"}
)
_ROUTE_KEYS = frozenset({"methods", "host", "path", "action", "resource", "context"})
_REF = re.compile(r"\$\{([A-Za-z0-9_.\-]+)\}")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}")
_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*$")
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)


@dataclass(frozen=True)
class _Segment:
    literal: str | None  # None: a parameter
    param: str | None = None
    rest: bool = False


@dataclass(frozen=True)
class Route:
    index: int
    line: int
    methods: frozenset[str] | None
    host: str | None
    path: str
    segments: tuple[_Segment, ...]
    action: str
    resource_type: str
    resource_id: str  # may hold {param} placeholders
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> frozenset[str]:
        return frozenset(s.param for s in self.segments if s.param is not None)

    def describe(self) -> str:
        methods = ",".join(sorted(self.methods)) if self.methods else "*"
        return f"{methods} {self.host or '*'}{self.path}"

    def match(self, method: str, host: str, segments: list[str]) -> dict[str, str] | None:
        if self.methods is not None and method not in self.methods:
            return None
        if self.host is not None and self.host != host:
            return None
        params: dict[str, str] = {}
        for i, segment in enumerate(self.segments):
            if segment.rest:
                rest = segments[i:]
                if not rest:  # "/files" does not match "/files/{rest...}"; "/files/" does
                    return None
                params[segment.param or ""] = "/".join(rest)
                return params
            if i >= len(segments):
                return None
            if segment.literal is not None:
                if segments[i] != segment.literal:
                    return None
            else:
                if segments[i] == "":
                    return None
                params[segment.param or ""] = segments[i]
        return params if len(segments) == len(self.segments) else None


@dataclass(frozen=True)
class HttpFacts:
    """What an enforcement point knows about a request and its caller."""

    method: str
    host: str
    path: str
    source_ip: str = ""
    tls: bool = False
    sni: str = ""
    credential: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    extensions: Mapping[str, str] = field(default_factory=dict)  # Envoy context_extensions


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    params: Mapping[str, str]


class RouteTable:
    def __init__(
        self,
        routes: list[Route],
        principal_type: str,
        context: Mapping[str, Any],
        workload_type: str = "Service",
        workload_id_attribute: str = "spiffe_id",
    ) -> None:
        self.routes = routes
        self.principal_type = principal_type
        self.context = context
        self.workload_type = workload_type
        self.workload_id_attribute = workload_id_attribute
        # Candidates by the request's first path segment, in table order (so the first match
        # still wins): the routes whose template starts with that literal, and those starting
        # with a parameter. Most requests are then tried against a few routes, not all.
        # A table is not modified once built.
        firsts = {_first_literal(r) for r in routes} - {None}
        self._open_first = tuple(r for r in routes if _first_literal(r) is None)
        self._by_first = {
            first: tuple(r for r in routes if _first_literal(r) in (first, None))
            for first in firsts
        }

    def match(self, method: str, host: str, path: str) -> RouteMatch | None:
        """The first route matching the request, with its path parameters decoded."""
        method = method.upper()
        host = normalise_host(host)
        segments = split_path(path)
        for route in self._by_first.get(segments[0], self._open_first):
            params = route.match(method, host, segments)
            if params is not None:
                decoded = {k: unquote(v) for k, v in params.items()} if params else {}
                return RouteMatch(route, decoded)
        return None

    def access_request(
        self,
        found: RouteMatch,
        principal: EntityRef,
        facts: HttpFacts,
        credential: Mapping[str, Any] | None = None,
    ) -> AccessRequest:
        """`credential`: what `${credential.*}` names; `facts.credential` when not given."""
        route = found.route
        params = found.params
        if credential is None:
            credential = facts.credential
        references = _References(facts, params, credential)
        resource_id = route.resource_id
        if "{" in resource_id:
            resource_id = _PARAM.sub(lambda m: params.get(m.group(1), ""), resource_id)
        context = {}
        for key, value in {**self.context, **route.context}.items():
            value = _resolve(value, references)
            if value is not None:
                context[key] = value
        return AccessRequest(
            principal=principal,
            action=EntityRef("Action", route.action),
            resource=EntityRef(route.resource_type, resource_id),
            context=context,
        )


def _first_literal(route: Route) -> str | None:
    """The literal first segment of a route's template; None for a parameter."""
    return route.segments[0].literal if route.segments else None


def normalise_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def split_path(path: str) -> list[str]:
    """The path's segments, without query or fragment; `//` and `/./` are not collapsed, so a
    request cannot dress one path up as another the upstream would read differently."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    return path[1:].split("/")


class _References:
    """What `${...}` names for one request, looked up by name when a context value asks (most
    contexts name a few references: building every `headers.*` entry up front costs more)."""

    __slots__ = ("_credential", "_facts", "_params")

    def __init__(
        self, facts: HttpFacts, params: Mapping[str, str], credential: Mapping[str, Any]
    ) -> None:
        self._facts = facts
        self._params = params
        self._credential = credential

    def get(self, name: str, default: Any = None) -> Any:
        prefix, dot, key = name.partition(".")
        if not dot:
            return default
        facts = self._facts
        if prefix == "credential":
            return self._credential.get(key, default)
        if prefix == "headers":
            return facts.headers.get(key, default)
        if prefix == "extensions":
            return facts.extensions.get(key, default)
        if prefix == "params":
            return self._params.get(key, default)
        if prefix == "request":
            if key == "method":
                return facts.method.upper()
            if key == "host":
                return normalise_host(facts.host)
            if key == "path":
                return facts.path.split("?", 1)[0]
            if key == "source_ip":
                return facts.source_ip
            if key == "tls":
                return facts.tls
            if key == "sni":
                return facts.sni
        return default


def _resolve(value: Any, values: _References) -> Any:
    if isinstance(value, str):
        if "${" not in value:  # a literal: nothing to look up
            return value
        whole = _REF.fullmatch(value)
        if whole:
            return values.get(whole.group(1))
        return _REF.sub(lambda m: str(values.get(m.group(1), "")), value)
    if isinstance(value, dict):
        return {k: _resolve(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, values) for v in value]
    return value


# -- loading ------------------------------------------------------------------------------------


def parse_routes(
    text: str, schema: Any | None, problems: list[BundleProblem], path: str = ROUTES_FILE
) -> RouteTable | None:
    """Parse and check `routes.yaml`; every problem is added to `problems` with its line."""
    document = read_yaml(path, text, problems)
    if document is None:
        return None
    data = document.data
    if not isinstance(data, dict):
        problems.append(BundleProblem(path, "expected a mapping with a 'routes' list"))
        return None
    before = len(problems)
    for key in sorted(set(data) - _TOP_KEYS):
        problems.append(
            BundleProblem(path, f"unknown field {key!r} (known: {', '.join(sorted(_TOP_KEYS))})")
        )
    principal_type = data.get("principal_type", "User")
    if not isinstance(principal_type, str) or not _TYPE.match(principal_type):
        problems.append(BundleProblem(path, "'principal_type' must be a Cedar entity type name"))
    workload_type = data.get("workload_type", "Service")
    if not isinstance(workload_type, str) or not _TYPE.match(workload_type):
        problems.append(BundleProblem(path, "'workload_type' must be a Cedar entity type name"))
    workload_id_attribute = data.get("workload_id_attribute", "spiffe_id")
    if not isinstance(workload_id_attribute, str) or not workload_id_attribute:
        problems.append(BundleProblem(path, "'workload_id_attribute' must be an attribute name"))
    context = data.get("context") or {}
    if not isinstance(context, dict):
        problems.append(BundleProblem(path, "'context' must be a mapping"))
        context = {}
    for message in _reference_problems(context, frozenset()):
        problems.append(BundleProblem(path, f"context: {message}"))
    items = data.get("routes")
    if not isinstance(items, list) or not items:
        problems.append(BundleProblem(path, "'routes' must be a non-empty list"))
        return None
    lines = document.item_lines("routes")
    routes: list[Route] = []
    for index, item in enumerate(items):
        line = lines[index] if index < len(lines) else 1
        route = _parse_route(index, line, item, path, problems)
        if route is not None:
            routes.append(route)
    if schema is not None and routes:
        _check_against_schema(routes, schema, path, problems)
    if len(problems) > before:
        return None
    return RouteTable(
        routes, principal_type, context, str(workload_type), str(workload_id_attribute)
    )


def _parse_route(
    index: int, line: int, item: Any, path: str, problems: list[BundleProblem]
) -> Route | None:
    where = f"routes[{index}]"

    def problem(message: str) -> None:
        problems.append(BundleProblem(path, f"{where}: {message}", line))

    if not isinstance(item, dict):
        problem("each route must be a mapping")
        return None
    unknown = sorted(set(item) - _ROUTE_KEYS)
    if unknown:
        problem(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_ROUTE_KEYS))})")
        return None
    failed = False

    methods: frozenset[str] | None = None
    raw_methods = item.get("methods")
    if raw_methods is not None:
        if isinstance(raw_methods, str):
            raw_methods = [raw_methods]
        if not isinstance(raw_methods, list) or not all(isinstance(m, str) for m in raw_methods):
            problem("'methods' must be a list of HTTP methods")
            failed = True
        else:
            methods = frozenset(m.upper() for m in raw_methods)
            bad = sorted(methods - _METHODS)
            if bad:
                problem(f"unknown HTTP method {bad[0]!r}")
                failed = True

    host = item.get("host")
    if host is not None and (not isinstance(host, str) or not host):
        problem("'host' must be a host name")
        failed = True

    template = item.get("path")
    segments: tuple[_Segment, ...] = ()
    if not isinstance(template, str) or not template.startswith("/"):
        problem("'path' must be a path template starting with '/'")
        failed = True
    else:
        try:
            segments = _parse_template(template)
        except ValueError as exc:
            problem(f"path {template!r}: {exc}")
            failed = True
    params = frozenset(s.param for s in segments if s.param is not None)

    action = item.get("action")
    if not isinstance(action, str) or not action:
        problem("'action' must be a Cedar action id, such as payments:refund")
        failed = True

    resource = item.get("resource")
    resource_type = resource_id = ""
    if (
        not isinstance(resource, dict)
        or set(resource) != {"type", "id"}
        or not isinstance(resource.get("type"), str)
        or not isinstance(resource.get("id"), str)
    ):
        problem("'resource' must be {type: EntityType, id: 'text or {param}'}")
        failed = True
    else:
        resource_type, resource_id = resource["type"], resource["id"]
        if not _TYPE.match(resource_type):
            problem(f"resource type {resource_type!r} is not a Cedar entity type name")
            failed = True
        for name in _PARAM.findall(resource_id):
            if name[0] not in params:
                problem(f"resource id uses {{{name[0]}}}, which the path does not define")
                failed = True

    context = item.get("context") or {}
    if not isinstance(context, dict):
        problem("'context' must be a mapping")
        failed = True
        context = {}
    for message in _reference_problems(context, params):
        problem(f"context: {message}")
        failed = True

    if failed:
        return None
    return Route(
        index=index,
        line=line,
        methods=methods,
        host=normalise_host(host) if isinstance(host, str) else None,
        path=str(template),
        segments=segments,
        action=str(action),
        resource_type=resource_type,
        resource_id=resource_id,
        context=context,
    )


def _parse_template(template: str) -> tuple[_Segment, ...]:
    parts = template[1:].split("/")
    segments: list[_Segment] = []
    seen: set[str] = set()
    for i, part in enumerate(parts):
        match = _PARAM.fullmatch(part)
        if match is None:
            if "{" in part or "}" in part:
                raise ValueError(f"segment {part!r}: a parameter must be a whole segment")
            segments.append(_Segment(literal=part))
            continue
        name, rest = match.group(1), bool(match.group(2))
        if name in seen:
            raise ValueError(f"parameter {{{name}}} appears twice")
        if rest and i != len(parts) - 1:
            raise ValueError(f"{{{name}...}} must be the last segment")
        seen.add(name)
        segments.append(_Segment(literal=None, param=name, rest=rest))
    return tuple(segments)


def _reference_problems(value: Any, params: frozenset[str]) -> list[str]:
    if isinstance(value, str):
        out = []
        for name in _REF.findall(value):
            if name.startswith("params."):
                if name[len("params.") :] not in params:
                    out.append(f"${{{name}}}: the path has no parameter {name[7:]!r}")
            elif name.startswith(_OPEN_PREFIXES):
                continue
            elif name not in REFERENCES:
                known = ", ".join([*sorted(REFERENCES), *(f"{p}NAME" for p in _OPEN_PREFIXES)])
                out.append(f"unknown reference ${{{name}}} (known: {known})")
        return out
    if isinstance(value, dict):
        return [m for v in value.values() for m in _reference_problems(v, params)]
    if isinstance(value, list):
        return [m for v in value for m in _reference_problems(v, params)]
    return []


def _check_against_schema(
    routes: list[Route], schema: Any, path: str, problems: list[BundleProblem]
) -> None:
    """Each route as a policy `permit(principal, action == A, resource is R)`, validated in
    strict mode: unknown actions, unknown types and actions that do not apply to the resource
    type are reported on the route's line. The principal is left open: people and workloads
    may both call a route."""
    for route in routes:
        action = _cedar_string(route.action)
        policy = (
            f"permit (principal, action == Action::{action}, resource is {route.resource_type});"
        )
        try:
            result = cedarpy.validate_policies(policy, schema)
        except ValueError as exc:
            problems.append(BundleProblem(path, f"routes[{route.index}]: {exc}", route.line))
            continue
        if result.validation_passed:
            continue
        for error in result.errors:
            message = re.sub(r"for policy `policy\d+`, ", "", error.error)
            problems.append(
                BundleProblem(
                    path,
                    f"routes[{route.index}] ({route.action} on {route.resource_type}): {message}",
                    route.line,
                )
            )


def _cedar_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
