"""The admin API's one gate: every admin route is served through it, and nothing else is.

One table, `ADMIN_ROUTES`, maps each (method, path template) the admin API serves to the admin
action Cedar is asked about and the kind of target it acts on. A handler can only be served by
`AdminGate.route`, which refuses (at start-up) a route the table does not list: no route is
ever authorized as a family it merely resembles, and a request for a path or method nobody
serves gets Starlette's 404/405 problem document. `OPEN_ROUTES` lists, with the reason, every
other route the server serves (decision endpoints, health, public keys, token exchange), so a
test can check that each served route is in exactly one of the two.

For each request the gate, in order:
1. authenticates the caller (`admin_auth.AdminAuthenticator`; a revoked principal, credential
   or certificate is refused) — a 401 is recorded with the principal presented, if any, and why;
2. builds the target (from the path parameter, or the handler's resolver when the admin policy
   needs more: who asked, who opened, which tier);
3. asks the admin Cedar policies — a 403 is recorded with the policies that decided;
4. dispatches to the handler with an `AdminCall` (caller, action, target; the handler may add
   a reason and details), and records the outcome: reads included, failed attempts included.

Every admin request therefore leaves exactly one record in the ledger. Writes are committed
before the answer is sent; reads and refusals too under `sync` durability, and are queued like
decisions under `batch`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.config import Durability
from trustplane.enforcement.credentials import ProxyTrust, xfcc_spiffe_id
from trustplane.governance.catalog import access_catalog
from trustplane.problems import Problem, read_body
from trustplane.server.admin_auth import (
    BOOTSTRAP_PREFIX,
    AdminAuthenticator,
    AdminAuthorizer,
    AdminCaller,
    AdminUnauthenticated,
    Target,
)
from trustplane.server.runtime import Runtime
from trustplane.telemetry.ledger import admin_entry
from trustplane.telemetry.recorder import RecordingError

UNAUTHENTICATED = "unauthenticated"  # the ledger's actor for a caller who did not prove who


@dataclass(frozen=True)
class AdminRoute:
    """One admin route: the Cedar `action` it performs on a `target` kind (the admin schema's
    Target.kind)."""

    method: str
    path: str
    action: str
    target: str

    @property
    def writes(self) -> bool:
        return self.method not in ("GET", "HEAD")


def _routes(*rows: tuple[str, str, str, str]) -> Mapping[tuple[str, str], AdminRoute]:
    table: dict[tuple[str, str], AdminRoute] = {}
    for method, path, action, target in rows:
        assert (method, path) not in table, f"{method} {path} is listed twice"
        table[(method, path)] = AdminRoute(method, path, action, target)
    return table


# (method, path template) → (admin action, target kind). The actions are the admin schema's
# (admin_policy/schema.cedarschema); the shipped policies (admin_policy/admin.cedar) say who may.
ADMIN_ROUTES: Mapping[tuple[str, str], AdminRoute] = _routes(
    ("GET", "/v1/bundle", "bundle:read", "bundle"),
    ("GET", "/v1/bundle/revisions", "bundle:read", "bundle"),
    ("POST", "/v1/bundle/reload", "bundle:write", "bundle"),
    ("POST", "/v1/bundle/activate", "bundle:write", "bundle"),
    ("POST", "/v1/bundle/rollback", "bundle:write", "bundle"),
    ("GET", "/v1/bundle/drift", "bundle:read", "bundle"),
    ("GET", "/v1/revocations", "revocation:read", "revocation"),
    ("POST", "/v1/revocations", "revocation:write", "revocation"),
    ("POST", "/v1/revocations/{revocation_id}/lift", "revocation:write", "revocation"),
    ("GET", "/v1/decisions", "decisions:read", "decisions"),
    ("GET", "/v1/decisions/{decision_id}", "decisions:read", "decisions"),
    ("GET", "/v1/ledger/checkpoint", "ledger:read", "ledger"),
    ("GET", "/v1/ledger/checkpoints", "ledger:read", "ledger"),
    ("GET", "/v1/ledger/records", "ledger:read", "ledger"),
    ("GET", "/v1/ledger/quarantine", "ledger:read", "ledger"),
    ("GET", "/v1/ledger/proof/inclusion", "ledger:read", "ledger"),
    ("GET", "/v1/ledger/proof/consistency", "ledger:read", "ledger"),
    ("GET", "/v1/identity/entries", "identity:read", "identity"),
    ("POST", "/v1/identity/entries", "identity:write", "identity"),
    ("DELETE", "/v1/identity/entries/{entry_id}", "identity:write", "identity"),
    ("GET", "/v1/identity/keys", "identity:read", "identity"),
    ("POST", "/v1/identity/rotate", "identity:write", "identity"),
    ("GET", "/v1/identity/inventory", "identity:read", "identity"),
    ("GET", "/v1/attestations", "attestation:read", "attestation"),
    ("DELETE", "/v1/attestations/{attestation_id}", "attestation:write", "attestation"),
    ("POST", "/v1/access/requests", "access:request", "request"),
    ("GET", "/v1/access/requests", "access:read", "request"),
    ("GET", "/v1/access/requests/{request_id}", "access:read", "request"),
    ("POST", "/v1/access/requests/{request_id}/approve", "access:approve", "request"),
    ("POST", "/v1/access/requests/{request_id}/deny", "access:deny", "request"),
    ("GET", "/v1/access/grants", "access:read", "grant"),
    ("POST", "/v1/access/grants/{grant_id}/revoke", "access:revoke", "grant"),
    ("GET", "/v1/access/grants/{grant_id}/activity", "access:read", "grant"),
    ("POST", "/v1/break-glass", "breakglass:open", "session"),
    ("GET", "/v1/break-glass", "breakglass:read", "session"),
    ("POST", "/v1/break-glass/{session_id}/review", "breakglass:review", "session"),
    ("POST", "/v1/exceptions", "exception:request", "exception"),
    ("GET", "/v1/exceptions", "exception:read", "exception"),
    ("POST", "/v1/exceptions/{exception_id}/approve", "exception:approve", "exception"),
    ("POST", "/v1/exceptions/{exception_id}/revoke", "exception:revoke", "exception"),
    ("GET", "/v1/rollout/status", "rollout:read", "rollout"),
    ("GET", "/v1/rollout/policies/{policy_id}/queue", "rollout:read", "policy"),
    ("POST", "/v1/rollout/labels", "rollout:label", "policy"),
    ("GET", "/v1/scorecard", "scorecard:read", "scorecard"),
    ("POST", "/v1/scorecard/snapshots", "scorecard:snapshot", "scorecard"),
    ("POST", "/v1/rollout/promotions", "rollout:promote", "policy"),
    ("POST", "/v1/trust/devices/{device_id}/posture", "trust:device-report", "device"),
    ("GET", "/v1/trust/devices/{device_id}/posture", "trust:read", "device"),
    ("GET", "/v1/trust/decisions/{decision_ref}", "decisions:read", "decisions"),
    ("GET", "/v1/trust/signals", "decisions:read", "decisions"),
    # The pages (web/): a page performs the read action of what it shows, an action the same
    # admin action as its /v1 twin; the session cookie carries the credential.
    ("GET", "/ui", "decisions:read", "decisions"),
    ("GET", "/ui/oncall", "decisions:read", "decisions"),
    ("GET", "/ui/oncall/stream", "decisions:read", "decisions"),
    ("GET", "/ui/debug", "decisions:read", "decisions"),
    ("GET", "/ui/debug/proof", "ledger:read", "ledger"),
    ("GET", "/ui/policy", "bundle:read", "bundle"),
    ("GET", "/ui/policy/recent", "bundle:read", "bundle"),
    ("POST", "/ui/policy/rollback", "bundle:write", "bundle"),
    ("GET", "/ui/rollout", "rollout:read", "rollout"),
    ("POST", "/ui/rollout/labels", "rollout:label", "policy"),
    ("GET", "/ui/access", "access:read", "request"),
    ("GET", "/ui/access/break-glass", "breakglass:read", "session"),
    ("POST", "/ui/access/requests/{request_id}/approve", "access:approve", "request"),
    ("POST", "/ui/access/requests/{request_id}/deny", "access:deny", "request"),
    ("POST", "/ui/break-glass/{session_id}/review", "breakglass:review", "session"),
    ("GET", "/ui/identity", "identity:read", "identity"),
    ("GET", "/ui/scorecard", "scorecard:read", "scorecard"),
)

UI_PREFIX = "/ui"  # the pages: HTML for people, not part of the API's OpenAPI document

# Not a route of the table: what the record of a sign-in to the pages says it was (web/oidc.py).
SIGN_IN = AdminRoute("GET", f"{UI_PREFIX}/callback", "ui:sign-in", "session")


@dataclass(frozen=True)
class OpenRoute:
    """A route served without the admin gate, and why. `methods` None: every method."""

    path: str
    why: str
    methods: frozenset[str] | None = None


_DECISION = "decision endpoint: answers enforcement points (their own authentication)"
OPEN_ROUTES: tuple[OpenRoute, ...] = (
    OpenRoute("/access/v1/evaluation", _DECISION),
    OpenRoute("/access/v1/evaluations", _DECISION),
    OpenRoute(
        "/access/v1/epoch",
        "the cache epoch enforcement points long-poll (their own authentication)",
    ),
    OpenRoute("/access/v1/search/subject", _DECISION),
    OpenRoute("/access/v1/search/resource", _DECISION),
    OpenRoute("/access/v1/search/action", _DECISION),
    OpenRoute("/.well-known/authzen-configuration", "AuthZEN metadata (public)"),
    OpenRoute("/v1/forward-auth", _DECISION),
    OpenRoute("/v1/envoy/http", _DECISION),
    OpenRoute("/v1/envoy/http/{path:path}", _DECISION),
    OpenRoute("/v1/admission", _DECISION),
    OpenRoute("/healthz", "liveness probe"),
    OpenRoute("/readyz", "readiness probe"),
    OpenRoute("/metrics", "Prometheus scrape"),
    OpenRoute("/openapi.json", "the API description"),
    OpenRoute("/v1/identity/bundle", "the trust domain's public keys, for verifiers"),
    OpenRoute("/.well-known/openid-configuration", "OIDC discovery, for verifiers"),
    OpenRoute("/v1/identity/jwks", "the JWT-SVID public keys, for verifiers"),
    OpenRoute("/v1/token", "RFC 8693 exchange: the CI token is the credential"),
    OpenRoute(
        "/v1/attestations",
        "CI attests with a JWT-SVID checked by the handler (server/image_attestations.py)",
        frozenset({"POST"}),
    ),
    OpenRoute("/ui/login", "starts the OIDC sign-in to the pages (web/oidc.py)"),
    OpenRoute("/ui/callback", "where the issuer returns: the sign-in is its credential"),
    OpenRoute("/ui/logout", "ends the session cookie; CSRF-checked"),
    OpenRoute("/ui/static/{name:path}", "the pages' scripts and styles, shipped in the package"),
)


def admin_route(method: str, path: str) -> AdminRoute | None:
    """The table's entry for a (method, path template), None when the admin API has none."""
    return ADMIN_ROUTES.get((method.upper(), path))


@dataclass
class AdminCall:
    """One admitted admin request as its handler sees it. The handler may narrow the target
    and give a reason and details for the record the gate writes once it answers."""

    caller: AdminCaller
    route: AdminRoute
    target: Target
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    limit: int = 1 << 20
    _body: bytes | None = field(default=None, repr=False)

    @property
    def action(self) -> str:
        return self.route.action

    def note(self, target: Target | None = None, reason: str | None = None, **details: Any) -> None:
        """What the record of this call should say besides who, what and the status."""
        if target is not None:
            self.target = target
        if reason is not None:
            self.reason = reason
        self.details.update(details)

    async def body(self, request: Request) -> bytes:
        """The request body (read once: a resolver and the handler may both need it)."""
        if self._body is None:
            self._body = await read_body(request, self.limit)
        return self._body


Handler = Callable[[Request, AdminCall], Awaitable[Response]]
Resolver = Callable[[Request, AdminCall], Awaitable[Target]]
Credential = Callable[[Request], str | None]
"""Where a route finds its caller's bearer token instead of the request's own headers: the
pages under /ui read it from their signed session cookie (web/session.py)."""


class AdminRouteError(Exception):
    """A handler was offered for a route the admin table does not list."""


class GatedEndpoint:
    """The Starlette endpoint of one admin route: the gate, then the handler."""

    def __init__(
        self,
        gate: AdminGate,
        route: AdminRoute,
        handler: Handler,
        resolve: Resolver | None,
        declared: str | None = None,
        credential: Credential | None = None,
    ) -> None:
        self.gate = gate
        self.route = route
        self.declared = declared  # the action the handler's module declared (the table's)
        self._handler = handler
        self._resolve = resolve
        self._credential = credential

    async def handle(self, request: Request) -> Response:
        gate = self.gate
        call = await gate.admit(request, self.route, self._resolve, self._credential)
        status = 500  # until the handler answers
        refused: str | None = "the handler failed (see the server log)"
        try:
            response = await self._handler(request, call)
            status, refused = response.status_code, None
            return response
        except Problem as problem:
            status, refused = problem.status, problem.detail
            raise
        except RecordingError as exc:  # answered 503 (server/app.py)
            status, refused = 503, str(exc)
            raise
        finally:
            await run_in_threadpool(gate.record, call, status, refused)


class AdminGate:
    """Authentication, authorization and the audit record of every admin call."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        settings = runtime.settings
        self._limit = settings.server.max_body_bytes
        self._sync = settings.ledger.durability is Durability.SYNC
        self._authn = AdminAuthenticator(
            settings.admin,
            ProxyTrust(settings.server.trusted_proxies),
            runtime.check_admin_token,
            runtime.identity,
        )
        self.authorizer = AdminAuthorizer(settings.admin.policy_dir)

    def route(
        self,
        method: str,
        path: str,
        handler: Handler,
        resolve: Resolver | None = None,
        *,
        action: str | None = None,
        credential: Credential | None = None,
    ) -> Route:
        """The Starlette route serving `handler` behind the gate. `resolve(request, call)`
        builds the target when the admin policy needs the object's attributes. `action`, the
        admin action the handler's module declares, must be the table's: a module and the
        table that disagree stop the server at start-up rather than authorize the wrong
        thing. `credential(request)`: the bearer token to authenticate, read from somewhere
        else than the headers (the pages' session); then nothing else is looked at."""
        entry = admin_route(method, path)
        if entry is None:
            raise AdminRouteError(
                f"{method} {path} has no entry in the admin route table "
                "(server/admin_gate.py ADMIN_ROUTES): it is not served"
            )
        if action is not None and action != entry.action:
            raise AdminRouteError(
                f"{method} {path} is declared as {action} but the admin route table "
                f"(server/admin_gate.py ADMIN_ROUTES) lists it as {entry.action}"
            )
        endpoint = GatedEndpoint(self, entry, handler, resolve, action, credential)
        return Route(path, endpoint.handle, methods=[entry.method])

    # -- the steps -----------------------------------------------------------------------------

    async def admit(
        self,
        request: Request,
        route: AdminRoute,
        resolve: Resolver | None,
        credential: Credential | None = None,
    ) -> AdminCall:
        """Authenticate, build the target, authorize: the call, or a recorded 401/403."""
        caller = await run_in_threadpool(self.authenticate, request, route, credential)
        call = AdminCall(caller, route, Target(route.target, _path_id(request)), limit=self._limit)
        if request.url.query:  # what was asked for: who read whose decisions
            call.details["query"] = _printable(request.url.query)
        if resolve is not None:
            try:
                call.target = await resolve(request, call)
            except Problem as problem:  # an unknown id, a bad body: the attempt is recorded
                await run_in_threadpool(
                    self.record, call, problem.status, problem.detail, authorized=False
                )
                raise
        await run_in_threadpool(self.authorize, call)
        return call

    def authenticate(
        self, request: Request, route: AdminRoute, credential: Credential | None = None
    ) -> AdminCaller:
        """The caller, or a 401 naming what is missing (recorded). Blocking: may fetch an
        issuer's JWKS. With `credential`, only the token it finds counts (no forwarded
        client certificate, no Authorization header)."""
        peer = request.client.host if request.client else None
        presented: str | None = None
        headers: Mapping[str, str] = request.headers
        proxy = peer
        if credential is not None:
            token = credential(request)
            headers = {"authorization": f"Bearer {token}"} if token else {}
            proxy = None  # a session is never a trusted proxy's forwarded certificate
        try:
            caller = self._authn.authenticate(headers, proxy, self._roles)
            presented = caller.name
            revocations = self._runtime.revocations
            revoked = revocations.named(caller.principal or caller.name)
            if revoked is None:
                revoked = revocations.credential(caller.token_id)
            if revoked is None:
                revoked = revocations.certificate(caller.certificate_serial)
            if revoked is not None:
                raise AdminUnauthenticated(
                    f"revoked: {revoked.target} ({revoked.reason})", "invalid_token"
                )
        except AdminUnauthenticated as exc:
            details: dict[str, Any] = {"status": 401, "refused": exc.detail, "peer": peer}
            details["presented"] = presented or _presented(request, peer, self._authn)
            target = Target(route.target, _path_id(request))
            self._write(UNAUTHENTICATED, route, target, "", False, details, self._sync)
            challenge = 'Bearer realm="trustplane-admin"'
            if exc.error:
                challenge += f', error="{exc.error}"'
            raise Problem(
                401,
                "unauthenticated",
                "Authentication failed" if exc.error else "Authentication required",
                exc.detail,
                headers={"WWW-Authenticate": challenge},
            ) from None
        return caller

    def sign_in(self, request: Request, token: str) -> str:
        """Authenticate the ID token someone signed in to the pages with, as every page will,
        and record the sign-in (action `ui:sign-in`); the caller's name, or a recorded 401.
        Blocking: may fetch an issuer's JWKS."""
        caller = self.authenticate(request, SIGN_IN, lambda _: token)
        details = {"status": 200, "kind": caller.kind}
        target = Target(SIGN_IN.target, caller.name)
        self._write(caller.name, SIGN_IN, target, "", True, details, True)
        return caller.name

    def authorize(self, call: AdminCall) -> None:
        """403 (recorded) unless the admin policies allow the call's action on its target."""
        caller, action, target = call.caller, call.action, call.target
        verdict = self.authorizer.authorize(caller, action, target)
        if verdict.allowed:
            return
        because = ", ".join(verdict.policies) or "no admin policy permits it"
        if verdict.errors:
            because += f"; errors: {'; '.join(verdict.errors)}"
        detail = f"{caller.name} may not {action} on {target.label()} ({because})"
        details = {"status": 403, "refused": detail, "policies": list(verdict.policies)}
        self._write(caller.name, call.route, target, "", False, details, self._sync)
        raise Problem(403, "forbidden", "Admin action refused", detail)

    def record(
        self, call: AdminCall, status: int, refused: str | None = None, authorized: bool = True
    ) -> None:
        """The one record of an admitted call: who, what, on what, why, and how it ended.
        Its decision is `allow` when the caller was let through (the admin policy allowed it
        and the handler did not refuse it with 403, e.g. governance's own rules); `status`
        says how it ended (a 404 or 422 of an allowed call is still `allow`). Writes are
        committed before the answer; reads too under `sync` durability."""
        details = {**call.details, "status": status}
        if refused is not None:
            details["refused"] = refused
        allowed = authorized and status not in (401, 403)
        wait = call.route.writes or self._sync
        self._write(call.caller.name, call.route, call.target, call.reason, allowed, details, wait)

    def _write(
        self,
        actor: str,
        route: AdminRoute,
        target: Target,
        reason: str,
        allowed: bool,
        details: dict[str, Any],
        wait: bool,
    ) -> None:
        label = _printable(target.label())
        entry = admin_entry(_printable(actor), route.action, label, reason, allowed, details)
        self._runtime.recorder.record_entry_blocking(entry, wait=wait)

    def _roles(self, principal: str) -> frozenset[str]:
        active = self._runtime.bundles.active
        if active is None:
            return frozenset()
        return access_catalog(active.bundle).roles_of(principal)


def _path_id(request: Request) -> str:
    """The id a route's path names (`/v1/decisions/{decision_id}` → the decision id)."""
    params = request.path_params
    return str(next(iter(params.values()))) if params else ""


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str, limit: int = 512) -> str:
    """What a caller put in a path, fit for every column of every backend (no control
    characters: PostgreSQL refuses NUL in text) and bounded."""
    cleaned = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _presented(request: Request, peer: str | None, authn: AdminAuthenticator) -> str | None:
    """Who an unauthenticated caller claimed to be, for the record only (never believed):
    the subject of a bearer JWT, the bootstrap token, or a forwarded SPIFFE ID."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        if token.startswith(BOOTSTRAP_PREFIX):
            return "bootstrap (token not accepted)"
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        subject = claims.get("sub") if isinstance(claims, dict) else None
        return f"{_printable(subject, 256)} (unverified)" if isinstance(subject, str) else None
    forwarded = request.headers.get("x-forwarded-client-cert")
    if forwarded:
        spiffe_id = xfcc_spiffe_id(forwarded)
        if spiffe_id:
            trusted = authn.trusts_proxy(peer)
            return f"{_printable(spiffe_id, 256)} ({'forwarded' if trusted else 'untrusted peer'})"
    return None
