"""The pages under /ui: server-rendered HTML (Jinja2) with htmx fragments and a uPlot chart,
every script and style served from this package (`static/`), nothing fetched at run time.

Each page and each action is an admin API route: listed in the admin gate's table
(`server/admin_gate.py` ADMIN_ROUTES) with the admin action it performs (a page reads, e.g.
`/ui/access` is `access:read`; approving there is `access:approve`), authenticated, authorized
by the admin Cedar policies and recorded in the ledger exactly like `/v1/...`. The only
difference is where the credential is: the session cookie (`session.py`) holds the ID token the
person signed in with (`oidc.py`), and the gate reads it from there. Every POST carries the
session's CSRF token (checked before the admin policies are asked; a refusal is recorded), and
every answer carries a Content-Security-Policy that allows scripts and styles from 'self' only.

The data comes from the same plane services the admin API's handlers call (governance,
rollout, identity, the ledger's queries); nothing here queries the store on its own except the
counts of `telemetry/summary.py`. This package cannot import `server/` (the server mounts it),
so the runtime and the gate are described below as protocols; `server/app.py` passes its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from trustplane.config import Settings
from trustplane.decision.manager import ActivationError, BundleManager
from trustplane.decision.policy_bundle import BundleError
from trustplane.governance.records import Actor, GovernanceError
from trustplane.governance.service import Governance
from trustplane.identity.inventory import Inventory, inventory_report
from trustplane.identity.service import IdentityService
from trustplane.outcomes.scorecard import (
    AuthCounts,
    ScorecardError,
    auth_success,
    compute_scorecard,
)
from trustplane.problems import Problem, read_body
from trustplane.recovery.revocation import RevocationList
from trustplane.rollout.drift import DriftLog, DriftWatch
from trustplane.rollout.gates import RolloutStatus
from trustplane.rollout.labels import LabelStore, RolloutError
from trustplane.rollout.rollback import ACTION as DENY_JUMP
from trustplane.store.policy_revisions import BundleStore
from trustplane.telemetry.deny_spike import DenySpikeDetector
from trustplane.telemetry.ledger import Ledger, LedgerError, get_decision, rfc3339
from trustplane.telemetry.summary import (
    LatencyGrid,
    admin_actions,
    decision_buckets,
    latency_grid,
    recent_denials,
    service_of,
)
from trustplane.web.oidc import OidcClient, SignInError
from trustplane.web.session import (
    LOGIN_COOKIE,
    LOGIN_SECONDS,
    SESSION_COOKIE,
    Session,
    Sessions,
    same_secret,
    session_key,
)

log = logging.getLogger("trustplane.web")

UI_PREFIX = "/ui"
STATIC = f"{UI_PREFIX}/static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
FORM_LIMIT = 64 * 1024  # the pages' forms are a few fields
MONTH_DAYS = 30  # the executive page's SLA and incidents window: 30 whole days and today
DAY = 86400
SLO = 0.999  # auth success, as deploy/prometheus/ rules and the scorecard's M1 state it
LATENCY_HOURS = 1  # the on-call heatmap's window, in LATENCY_BUCKET-second columns
LATENCY_BUCKET = 300
STREAM_SECONDS = 300  # an SSE stream ends after this; the browser reconnects through the gate
NAV = (
    ("executive", UI_PREFIX, "Executive"),
    ("oncall", f"{UI_PREFIX}/oncall", "On-call"),
    ("debug", f"{UI_PREFIX}/debug", "Debug"),
    ("policy", f"{UI_PREFIX}/policy", "Policy"),
    ("rollout", f"{UI_PREFIX}/rollout", "Rollout"),
    ("access", f"{UI_PREFIX}/access", "Access"),
    ("identity", f"{UI_PREFIX}/identity", "Identity"),
    ("scorecard", f"{UI_PREFIX}/scorecard", "Scorecard"),
)
_STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".LICENSE": "text/plain; charset=utf-8",
}


# -- what the server hands over (server/ cannot be imported from here) --------------------------


class Services(Protocol):
    """The parts of the server's runtime the pages read from (`server/runtime.Runtime`)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def bundles(self) -> BundleManager: ...
    @property
    def governance(self) -> Governance: ...
    @property
    def revocations(self) -> RevocationList: ...
    @property
    def identity(self) -> IdentityService | None: ...
    @property
    def inventory(self) -> Inventory: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def deny_spike(self) -> DenySpikeDetector: ...
    @property
    def drift(self) -> DriftWatch | None: ...


JwksStatus = Callable[[], dict[str, tuple[bool, float | None]]]


class Caller(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def principal(self) -> str | None: ...


class Call(Protocol):
    """An admitted call as the gate hands it to a handler (`server/admin_gate.AdminCall`)."""

    @property
    def caller(self) -> Caller: ...
    @property
    def target(self) -> Any: ...
    def note(self, target: Any = None, reason: str | None = None, **details: Any) -> None: ...


Handler = Callable[[Request, Any], Awaitable[Response]]
Resolver = Callable[[Request, Any], Awaitable[Any]]


class Gate(Protocol):
    """The admin gate (`server/admin_gate.AdminGate`): serves a handler behind authentication,
    the admin policies and the ledger record, for a route its table lists."""

    def route(
        self,
        method: str,
        path: str,
        handler: Handler,
        resolve: Resolver | None = None,
        *,
        action: str | None = None,
        credential: Callable[[Request], str | None] | None = None,
    ) -> Route: ...

    def sign_in(self, request: Request, token: str) -> str:
        """Authenticate a signed-in person's token and record the sign-in; a Problem (401,
        recorded) when the token is refused."""
        ...


# -- rendering -----------------------------------------------------------------------------------


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("trustplane.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["short"] = lambda value, n=12: str(value)[:n] if value else ""
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True)
    env.filters["tojson_attr"] = lambda value: json.dumps(value, separators=(",", ":"))
    env.globals["nav"] = NAV
    env.globals["static"] = STATIC
    return env


def _when(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, int | float):
        return rfc3339(float(value))[:19].replace("T", " ") + " UTC"
    return str(value)


_ENV = _templates()


def render(
    template: str, code: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    """A page with the security headers every answer under /ui carries."""
    context.setdefault("session", None)
    context.setdefault("page", "")
    context.setdefault("csrf", "")
    context.setdefault("done", "")
    context.setdefault("caller", "")
    html = _ENV.get_template(template).render(**context)
    return HTMLResponse(html, code, {**SECURITY_HEADERS, **(headers or {})})


def problem_page(request: Request, problem: Problem) -> Response:
    """What a refusal under /ui looks like: without a session, off to sign in; otherwise an
    explained page (the problem's own headers kept, `WWW-Authenticate` aside). A session the
    gate refuses (a revoked person, an expired token) is ended on a page rather than sent to
    sign in again: an issuer that signs the person straight back in would loop."""
    session = request.cookies.get(SESSION_COOKIE)
    if (
        problem.status == 401
        and session is None
        and request.method == "GET"
        and not _is_fragment(request)
    ):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(
            f"{UI_PREFIX}/login?next={quote(target, safe='')}", 303, SECURITY_HEADERS
        )
    headers = {k: v for k, v in (problem.headers or {}).items() if k.lower() != "www-authenticate"}
    response = render(
        "error.html",
        problem.status,
        headers,
        status=problem.status,
        title=problem.title,
        detail=problem.detail,
    )
    if problem.status == 401 and session is not None:
        response.delete_cookie(SESSION_COOKIE, path=UI_PREFIX)
    return response


def _is_fragment(request: Request) -> bool:
    return request.headers.get("hx-request") == "true" or request.url.path.endswith("/stream")


# -- the pages -----------------------------------------------------------------------------------


class Ui:
    """Sign-in, the pages and their actions."""

    def __init__(self, services: Services, gate: Gate, jwks: JwksStatus | None = None) -> None:
        self._services = services
        self._gate = gate
        self._jwks = jwks
        settings = services.settings
        self.sessions = Sessions(session_key(settings.state_dir), settings.ui.session_hours)
        self.oidc = OidcClient(settings)
        self._labels = LabelStore(services.engine)
        self._rollout = RolloutStatus(self._labels, BundleStore(services.engine))
        self._summary_cache: tuple[float, dict[str, Any]] | None = None
        self._days: dict[float, AuthCounts] = {}  # a past UTC day's auth counts
        self._days_lock = threading.Lock()

    # -- session, CSRF -------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        return self.sessions.open(request.cookies.get(SESSION_COOKIE))

    def credential(self, request: Request) -> str | None:
        """The bearer token the gate authenticates a page with: the session's ID token."""
        session = self.session(request)
        return session.token if session else None

    async def form(self, request: Request) -> dict[str, str]:
        """The posted form (urlencoded), cached on the request for resolver and handler."""
        cached = request.scope.get("trustplane.form")
        if cached is None:
            body = await read_body(request, FORM_LIMIT)
            parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            cached = {k: v[0] for k, v in parsed.items()}
            request.scope["trustplane.form"] = cached
        return dict(cached)

    async def checked(self, request: Request, call: Call) -> Any:
        """The resolver of every POST: the form's CSRF token must be the session's (403,
        recorded, before the admin policies are asked)."""
        session = self.session(request)
        form = await self.form(request)
        if session is None or not same_secret(form.get("csrf"), session.csrf):
            raise Problem(
                403,
                "csrf",
                "Form refused",
                "the form's CSRF token is missing or not this session's: reload the page",
            )
        return call.target

    def page(
        self, request: Request, call: Call, template: str, page: str, **context: Any
    ) -> HTMLResponse:
        session = self.session(request)
        return render(
            template,
            session=session,
            caller=call.caller.name,
            csrf=session.csrf if session else "",
            page=page,
            done=request.query_params.get("done", ""),
            **context,
        )

    # -- sign-in -------------------------------------------------------------------------------

    def _secure(self, request: Request) -> bool:
        """Cookies are Secure when the page came over TLS, or when people are sent back to an
        https:// callback (TLS ended at a proxy in front)."""
        configured = self._services.settings.ui.redirect_uri or ""
        return request.url.scheme == "https" or configured.startswith("https://")

    def _redirect_uri(self, request: Request) -> str:
        configured = self._services.settings.ui.redirect_uri
        return configured or str(request.base_url).rstrip("/") + f"{UI_PREFIX}/callback"

    async def login(self, request: Request) -> Response:
        after = request.query_params.get("next") or UI_PREFIX
        if after != UI_PREFIX and not after.startswith((f"{UI_PREFIX}/", f"{UI_PREFIX}?")):
            after = UI_PREFIX  # only ever back to a page of ours
        try:
            url, login = await run_in_threadpool(
                self.oidc.start, self._redirect_uri(request), after
            )
        except SignInError as exc:
            return render("signin-failed.html", 503, detail=str(exc))
        response = RedirectResponse(url, 303, SECURITY_HEADERS)
        response.set_cookie(
            LOGIN_COOKIE,
            self.sessions.seal_login(login),
            max_age=LOGIN_SECONDS,
            path=f"{UI_PREFIX}/callback",
            httponly=True,
            secure=self._secure(request),
            samesite="lax",  # the issuer sends the browser back from its own site
        )
        return response

    async def callback(self, request: Request) -> Response:
        params = request.query_params
        login = self.sessions.open_login(request.cookies.get(LOGIN_COOKIE))
        if params.get("error"):
            detail = f"the issuer said {params.get('error')}: {params.get('error_description', '')}"
            return self._failed(detail)
        if login is None or not same_secret(params.get("state"), login.state):
            return self._failed("this sign-in was not started here, or took too long: try again")
        code = params.get("code")
        if not code:
            return self._failed("the issuer sent no code")
        try:
            signed = await run_in_threadpool(
                self.oidc.finish, code, self._redirect_uri(request), login
            )
        except SignInError as exc:
            log.warning("sign-in to the pages failed: %s", exc)
            return self._failed(str(exc))
        try:  # the gate checks the token as it will on every page, and records the sign-in
            await run_in_threadpool(self._gate.sign_in, request, signed.token)
        except Problem as problem:
            return self._failed(problem.detail)
        session = self.sessions.new(signed.token, signed.subject, signed.expires)
        # A page of our own moves on to the next one: a SameSite=Strict cookie set at the end
        # of a redirect chain that began at the issuer would not be sent on its last hop.
        response = render("signed-in.html", subject=signed.subject, next=login.next)
        response.set_cookie(
            SESSION_COOKIE,
            self.sessions.seal(session),
            max_age=max(1, int(session.expires - time.time())),
            path=UI_PREFIX,
            httponly=True,
            secure=self._secure(request),
            samesite="strict",
        )
        response.delete_cookie(LOGIN_COOKIE, path=f"{UI_PREFIX}/callback")
        return response

    def _failed(self, detail: str) -> Response:
        response = render("signin-failed.html", 400, detail=detail)
        response.delete_cookie(LOGIN_COOKIE, path=f"{UI_PREFIX}/callback")
        return response

    async def logout(self, request: Request) -> Response:
        session = self.session(request)
        form = await self.form(request)
        if session is not None and not same_secret(form.get("csrf"), session.csrf):
            return render("error.html", 403, status=403, title="Form refused", detail="CSRF")
        response = render("signed-out.html")
        response.delete_cookie(SESSION_COOKIE, path=UI_PREFIX)
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if "/" in name.replace("vendor/", "", 1) or name.startswith(".") or ".." in name:
            raise Problem(404, "not-found", "Not found", f"no static file {name}")
        suffix = next((s for s in _STATIC_TYPES if name.endswith(s)), None)
        item = resources.files("trustplane.web").joinpath("static", *name.split("/"))
        if suffix is None or not item.is_file():
            raise Problem(404, "not-found", "Not found", f"no static file {name}")
        return Response(
            item.read_bytes(),
            media_type=_STATIC_TYPES[suffix],
            headers={
                "Cache-Control": "public, max-age=3600",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": CSP,
            },
        )

    # -- executive -----------------------------------------------------------------------------

    async def executive(self, request: Request, call: Call) -> Response:
        services = self._services
        now = time.time()
        hour = 3600
        until = (now // hour + 1) * hour
        since = until - 24 * hour
        buckets = await run_in_threadpool(decision_buckets, services.engine, since, until, hour)
        allowed = sum(b.allowed for b in buckets)
        denied = sum(b.denied for b in buckets)
        total = allowed + denied
        series = {
            "t": [b.start for b in buckets],
            "success": [round(100 * b.allowed / b.total, 2) if b.total else None for b in buckets],
            "allowed": [b.allowed for b in buckets],
            "denied": [b.denied for b in buckets],
        }
        alarm = services.deny_spike.alarm
        summary = await run_in_threadpool(self._summary)
        return self.page(
            request,
            call,
            "executive.html",
            "executive",
            total=total,
            allowed=allowed,
            denied=denied,
            success=None if total == 0 else 100 * allowed / total,
            ratio=None if allowed == 0 else denied / allowed,
            series=series,
            alarm=alarm.as_dict() if alarm else None,
            **summary,
        )

    def _summary(self) -> dict[str, Any]:
        """The figures that read a month of records, kept `ui.summary_seconds`: this month's
        entitlement coverage (scorecard M7), auth success over 30 days against the SLO
        (`auth_success`: the SLO's failed-closed decisions, and M1's refused credentials) and
        the auth incidents of 30 days (deny jumps the rollback guard recorded, drift
        incidents)."""
        now = time.time()
        keep = self._services.settings.ui.summary_seconds
        if self._summary_cache is not None and now - self._summary_cache[0] < keep:
            return self._summary_cache[1]
        engine = self._services.engine
        since = now // DAY * DAY - MONTH_DAYS * DAY  # the same days as the SLA
        counts = self._auth_counts(now)
        decided = counts.decisions
        jumps = admin_actions(engine, DENY_JUMP, since)
        drifts = DriftLog(engine).history(since)["incidents"]
        incidents = [
            {"at": _jump_time(j), "kind": "deny jump", "what": j.get("reason", "")} for j in jumps
        ] + [
            {
                "at": d["detected_at"],
                "kind": "policy drift",
                "what": _drift_text(d),
            }
            for d in drifts
        ]
        incidents.sort(key=lambda i: i["at"] or 0, reverse=True)
        value = {
            "coverage": self._coverage(),
            "sla": {
                "decisions": decided,
                "errors": counts.errors,
                "refused": counts.refused,
                "success": None if not decided else 100 * (decided - counts.errors) / decided,
                "met": None if not decided else (decided - counts.errors) / decided >= SLO,
                "credentials": None if not decided else 100 * (decided - counts.refused) / decided,
                "slo": 100 * SLO,
                "days": MONTH_DAYS,
            },
            "incidents": incidents,
            "drift_checked": self._services.drift is not None,
        }
        self._summary_cache = (now, value)
        return value

    def _auth_counts(self, now: float) -> AuthCounts:
        """`auth_success` over the last MONTH_DAYS whole UTC days and today so far: a past
        day's counts are read once and kept (the ledger only grows; a record spooled while
        the store was away and landing on a past day counts after a restart), so a refresh
        reads today's records only."""
        today = now // DAY * DAY
        first = today - MONTH_DAYS * DAY
        parts = []
        with self._days_lock:  # two views at once: one reads the missing days
            for start in [d for d in self._days if d < first]:
                del self._days[start]
            for n in range(MONTH_DAYS):
                start = first + n * DAY
                if start not in self._days:
                    self._days[start] = auth_success(self._services.engine, start, start + DAY)
                parts.append(self._days[start])
        parts.append(auth_success(self._services.engine, today, now + 1))
        return AuthCounts(
            sum(p.decisions for p in parts),
            sum(p.refused for p in parts),
            sum(p.errors for p in parts),
        )

    def _coverage(self) -> dict[str, Any] | None:
        """This month's entitlement coverage from the scorecard (`outcomes/`, figure M7)."""
        active = self._services.bundles.active
        try:
            card = compute_scorecard(
                self._services.engine, None if active is None else active.bundle, None
            )
            figure = card.figure("entitlement_coverage")
        except (ScorecardError, StopIteration):
            return None
        return {"shown": figure.shown(), "evidence": figure.evidence, "period": card.period}

    # -- on-call -------------------------------------------------------------------------------

    async def oncall(self, request: Request, call: Call) -> Response:
        items, top = await run_in_threadpool(recent_denials, self._services.engine, None, 50)
        by_service = Counter(service_of(item) for item in items)
        rows = [_denial_row(item) for item in reversed(items)]
        now = time.time()
        until = (now // LATENCY_BUCKET + 1) * LATENCY_BUCKET
        grid = await run_in_threadpool(
            latency_grid,
            self._services.engine,
            until - LATENCY_HOURS * 3600,
            until,
            LATENCY_BUCKET,
        )
        return self.page(
            request,
            call,
            "oncall.html",
            "oncall",
            rows=rows,
            by_service=sorted(by_service.items(), key=lambda kv: (-kv[1], kv[0])),
            after=top,
            latency=_latency_view(grid),
            idps=self._idps(),
        )

    def _idps(self) -> list[dict[str, Any]]:
        """Each configured token issuer's JWKS health, read from the verifier's caches (what
        `trustplane_jwks_up` and `trustplane_jwks_age_seconds` export when scraped)."""
        status = self._jwks() if self._jwks is not None else {}
        found: list[dict[str, Any]] = []
        for issuer in self._services.settings.pep.issuers:
            state = status.get(issuer.issuer)
            if state is None:
                found.append({"issuer": issuer.issuer, "state": "not fetched", "age": None})
                continue
            up, age = state
            found.append(
                {
                    "issuer": issuer.issuer,
                    "state": "up" if up else "down",
                    "age": None if age is None else round(age),
                }
            )
        return found

    async def stream(self, request: Request, call: Call) -> Response:
        """Denials and errors as server-sent events, each event a ledger row after `after`
        (or the browser's Last-Event-ID when it reconnects)."""
        raw = request.headers.get("last-event-id") or request.query_params.get("after") or "-1"
        try:
            after = int(raw)
        except ValueError:
            raise Problem(400, "invalid-query", "Invalid query", "after: an integer") from None
        engine = self._services.engine

        async def events() -> AsyncIterator[bytes]:
            nonlocal after
            ends = time.monotonic() + STREAM_SECONDS
            yield b"retry: 2000\n\n"
            quiet = 0
            while time.monotonic() < ends and not await request.is_disconnected():
                items, after = await run_in_threadpool(recent_denials, engine, after, 100)
                for item in items:
                    data = json.dumps(_denial_row(item), separators=(",", ":"))
                    yield f"id: {item['seq']}\nevent: denial\ndata: {data}\n\n".encode()
                quiet = 0 if items else quiet + 1
                if quiet >= 15:
                    yield b": keep-alive\n\n"
                    quiet = 0
                await asyncio.sleep(1)

        headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    # -- debug ---------------------------------------------------------------------------------

    async def debug(self, request: Request, call: Call) -> Response:
        decision_id = (request.query_params.get("id") or "").strip()
        record = None
        missing = ""
        if decision_id:  # the gate's record names it (the query)
            record = await run_in_threadpool(get_decision, self._services.engine, decision_id)
            if record is None:
                missing = f"no recorded decision {decision_id} (recording may still be pending)"
        return self.page(
            request,
            call,
            "debug.html",
            "debug",
            decision_id=decision_id,
            record=record,
            missing=missing,
            sections=_debug_sections(record) if record else [],
        )

    async def proof(self, request: Request, call: Call) -> Response:
        """The fragment with a decision's inclusion proof (`ledger:read`)."""
        decision_id = (request.query_params.get("id") or "").strip()
        try:
            proof = await run_in_threadpool(
                self._services.ledger.inclusion_proof, decision_id, None
            )
            error = ""
        except LedgerError as exc:
            proof, error = None, str(exc)
        return render("proof.html", proof=proof, error=error)

    # -- policy --------------------------------------------------------------------------------

    async def policy(self, request: Request, call: Call) -> Response:
        manager = self._services.bundles
        history = await run_in_threadpool(manager.history, 50)
        watch = self._services.drift
        drift = None
        if watch is not None:  # the periodic check, run now: its gauge and incidents follow
            found = await run_in_threadpool(watch.check)
            drift = None if found is None else found.as_dict()
        incidents = await run_in_threadpool(DriftLog(self._services.engine).history, None)
        active = manager.active
        last_error = manager.last_error
        return self.page(
            request,
            call,
            "policy.html",
            "policy",
            active=active.bundle if active else None,
            policies=[p.summary() for p in active.bundle.policies] if active else [],
            tests=active.test_results if active else [],
            history=history,
            bundle_dir=str(manager.bundle_dir) if manager.bundle_dir else None,
            last_error=[str(p) for p in last_error.problems] if last_error else [],
            drift_checked=watch is not None,
            drift=drift,
            drift_incidents=[{**i, "what": _drift_text(i)} for i in incidents["incidents"][:20]],
            drift_months=incidents["months"],
        )

    async def recent(self, request: Request, call: Call) -> Response:
        """The fragment of the latest activations, deploys and rollbacks (`bundle:read`), for
        the on-call page."""
        history = await run_in_threadpool(self._services.bundles.history, 5)
        return render("recent.html", history=history)

    async def rollback(self, request: Request, call: Call) -> Response:
        form = await self.form(request)
        to = form.get("to") or None
        try:
            loaded = await run_in_threadpool(
                self._services.bundles.rollback, actor=call.caller.name, to=to
            )
        except (BundleError, ActivationError) as exc:
            raise Problem(409, "activation-refused", "Rollback refused", str(exc)) from None
        call.note(
            dataclasses.replace(call.target, id=loaded.bundle.revision), "rollback", step="rollback"
        )
        return _back("/policy", "rolled back to " + loaded.bundle.revision[:12])

    # -- rollout -------------------------------------------------------------------------------

    async def rollout(self, request: Request, call: Call) -> Response:
        active = self._services.bundles.active
        if active is None:
            raise Problem(503, "no-bundle", "No active bundle", "no policy bundle is active")
        try:
            statuses = await run_in_threadpool(self._rollout.evaluate, active.bundle)
            queues = {}
            for status in statuses:
                items, pending = await run_in_threadpool(self._labels.queue, status.policy_id, 10)
                queues[status.policy_id] = (
                    [i.as_dict(status.policy_id) for i in items],
                    pending,
                )
        except RolloutError as exc:
            raise Problem(exc.status, "rollout", "Rollout refused", str(exc)) from None
        return self.page(
            request,
            call,
            "rollout.html",
            "rollout",
            revision=active.bundle.revision,
            statuses=[s.as_dict() for s in statuses],
            queues=queues,
        )

    async def label_target(self, request: Request, call: Call) -> Any:
        target = await self.checked(request, call)
        policy_id = (await self.form(request)).get("policy", "")
        active = self._services.bundles.active
        info = active.bundle.policy(policy_id) if active and policy_id else None
        if info is None:
            return target
        return dataclasses.replace(target, id=policy_id, tier=info.tier or "", owner=info.owner)

    async def label(self, request: Request, call: Call) -> Response:
        form = await self.form(request)
        verdict, note = form.get("verdict", ""), form.get("note", "").strip()
        call.note(reason=note, verdict=verdict)
        try:
            made = await run_in_threadpool(
                lambda: self._labels.label(
                    references=[form.get("decision", "")],
                    policy_id=form.get("policy") or None,
                    verdict=verdict,
                    note=note,
                    actor=call.caller.name,
                )
            )
        except RolloutError as exc:
            raise Problem(exc.status, "invalid-label", "Label refused", str(exc)) from None
        call.note(decisions=[label.decision_id for label in made])
        return _back("/rollout", f"labelled {len(made)} as {verdict}")

    # -- access --------------------------------------------------------------------------------

    async def access(self, request: Request, call: Call) -> Response:
        gov = self._services.governance
        pending = await run_in_threadpool(gov.access.find, "pending")
        grants = await run_in_threadpool(gov.access.grants, True)
        return self.page(
            request,
            call,
            "access.html",
            "access",
            pending=[r.as_dict() for r in pending],
            grants=[g.as_dict() for g in grants],
        )

    async def break_glass(self, request: Request, call: Call) -> Response:
        """The fragment listing break-glass sessions and their reviews (`breakglass:read`)."""
        gov = self._services.governance
        sessions = await run_in_threadpool(gov.break_glass.sessions, False, 50)
        overdue = await run_in_threadpool(gov.break_glass.overdue_count)
        session = self.session(request)
        return render(
            "break-glass.html",
            sessions=[{"session": g.as_dict(), "review": r.as_dict()} for g, r in sessions],
            overdue=overdue,
            csrf=session.csrf if session else "",
        )

    async def request_target(self, request: Request, call: Call) -> Any:
        """CSRF, then who asked and which tier, for the admin policies (no self-approval)."""
        target = await self.checked(request, call)
        record = await self._governed(self._services.governance.access.get, target.id)
        return dataclasses.replace(target, requester=record.principal, tier=record.tier)

    async def session_target(self, request: Request, call: Call) -> Any:
        target = await self.checked(request, call)
        grant, review = await self._governed(
            self._services.governance.break_glass.session, target.id
        )
        return dataclasses.replace(target, requester=grant.principal, opened_by=review.opened_by)

    async def approve(self, request: Request, call: Call) -> Response:
        comment = (await self.form(request)).get("comment", "").strip()
        call.note(reason=comment)
        request_id = request.path_params["request_id"]
        decided, grant = await self._governed(
            self._services.governance.access.approve, _actor(call), request_id, comment
        )
        if grant is not None:
            await self._changed()
        call.note(grant=grant.id if grant else None, status_after=decided.status)
        return _back("/access", f"request {request_id[:8]} is {decided.status}")

    async def deny(self, request: Request, call: Call) -> Response:
        reason = (await self.form(request)).get("reason", "").strip()
        if not reason:
            raise Problem(422, "invalid-request", "Reason needed", "say why the request is denied")
        call.note(reason=reason)
        request_id = request.path_params["request_id"]
        await self._governed(
            self._services.governance.access.deny, _actor(call), request_id, reason
        )
        return _back("/access", f"request {request_id[:8]} is denied")

    async def review(self, request: Request, call: Call) -> Response:
        notes = (await self.form(request)).get("notes", "").strip()
        if not notes:
            raise Problem(422, "invalid-request", "Notes needed", "write what the review found")
        call.note(reason=notes)
        session_id = request.path_params["session_id"]
        await self._governed(
            self._services.governance.break_glass.review, _actor(call), session_id, notes
        )
        return _back("/access", f"break-glass session {session_id[:8]} reviewed")

    async def _governed(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except GovernanceError as exc:
            raise Problem(exc.status, exc.code, "Refused", str(exc)) from None

    async def _changed(self) -> None:
        """This node applies a grant at once; the change feed tells the others."""
        await run_in_threadpool(self._services.governance.state.refresh)
        await run_in_threadpool(self._services.revocations.refresh)

    # -- identity, scorecard -------------------------------------------------------------------

    async def identity(self, request: Request, call: Call) -> Response:
        services = self._services
        service = services.identity
        keys: list[dict[str, Any]] = []
        trust_domain = None
        if service is not None:
            records = await run_in_threadpool(service.key_store.records, include_retired=True)
            trust_domain = service.trust_domain
            keys = [_key_view(r.as_dict(), time.time()) for r in records]
        await run_in_threadpool(services.inventory.flush)
        items = await run_in_threadpool(inventory_report, services.engine)
        return self.page(
            request,
            call,
            "identity.html",
            "identity",
            plane=service is not None,
            trust_domain=trust_domain,
            keys=keys,
            inventory=[i.as_dict() for i in items],
        )

    async def scorecard(self, request: Request, call: Call) -> Response:
        """This month's scorecard (`outcomes/`), or `?period=YYYY-MM`."""
        period = request.query_params.get("period") or None
        active = self._services.bundles.active
        try:
            card = await run_in_threadpool(
                compute_scorecard,
                self._services.engine,
                None if active is None else active.bundle,
                period,
            )
        except ScorecardError as exc:
            raise Problem(400, "invalid-query", "Invalid period", f"period: {exc}") from None
        call.note(period=card.period)
        document = card.as_dict()
        groups: dict[str, list[dict[str, Any]]] = {}
        for figure in document["figures"]:
            groups.setdefault(figure["group"], []).append(figure)
        return self.page(request, call, "scorecard.html", "scorecard", card=document, groups=groups)


def _latency_view(grid: LatencyGrid) -> dict[str, Any]:
    """The heatmap as table rows: each cell its count and a shade class (heat-0 … heat-4,
    relative to the busiest cell), so the CSP needs no inline style."""
    peak = max((n for row in grid.counts for n in row), default=0)
    labels = [f"≤ {e:,} µs" for e in grid.edges] + [f"> {grid.edges[-1]:,} µs"]
    rows = []
    for start, counts in zip(grid.starts, grid.counts, strict=True):
        cells = [
            {"n": n, "heat": 0 if not n else 1 + min(3, (4 * n - 1) // max(1, peak))}
            for n in counts
        ]
        rows.append({"start": rfc3339(start)[11:16], "cells": cells, "total": sum(counts)})
    return {"labels": labels, "rows": rows, "total": grid.total, "unmeasured": grid.unmeasured}


def _jump_time(record: dict[str, Any]) -> float | None:
    details = record.get("details") or {}
    at = details.get("detected_at") if isinstance(details, dict) else None
    if isinstance(at, int | float):
        return float(at)
    try:
        return datetime.fromisoformat(str(record.get("time"))).timestamp()
    except ValueError:
        return None


def _drift_text(incident: dict[str, Any]) -> str:
    """What differed, e.g. `changed: policies/x.cedar` or the error that stopped the check."""
    if incident.get("error"):
        return str(incident["error"])
    parts = [
        f"{kind}: {', '.join(files)}"
        for kind in ("added", "removed", "changed")
        if (files := incident.get(kind))
    ]
    return "; ".join(parts) or "differs"


def _key_view(key: dict[str, Any], now: float) -> dict[str, Any]:
    """A key with how long it has left, and `late` once it is in the last quarter of its life
    and still in use (its rotation is due: the next key should be prepared or active)."""
    not_after, created = key.get("not_after"), key.get("created_at")
    left = None if not_after is None else float(not_after) - now
    life = None if not_after is None or created is None else float(not_after) - float(created)
    in_use = key.get("state") in ("active", "prepared")
    late = bool(in_use and left is not None and life and left < life / 4)
    if left is None:
        remaining = "—"
    elif left <= 0:
        remaining = "expired"
    else:
        days, rest = divmod(int(left), 86_400)
        remaining = f"{days}d {rest // 3600}h" if days else f"{rest // 3600}h {rest % 3600 // 60}m"
    return {**key, "remaining": remaining, "late": late}


def _actor(call: Call) -> Actor:
    caller = call.caller
    return Actor(caller.name, caller.principal, caller.kind == "bootstrap")


def _back(page: str, done: str) -> Response:
    """After an action: back to its page (303, so a reload does not post again)."""
    return RedirectResponse(f"{UI_PREFIX}{page}?{urlencode({'done': done})}", 303, SECURITY_HEADERS)


def _entity(document: Any) -> str:
    if isinstance(document, dict) and "type" in document:
        return f'{document["type"]}::"{document.get("id", "")}"'
    return str(document or "")


def _denial_row(record: dict[str, Any]) -> dict[str, Any]:
    """One line of the on-call view: a denied decision or a refused admin call."""
    if record.get("kind") == "admin":
        who, what, on = record.get("actor"), record.get("action"), record.get("target")
        why = (record.get("details") or {}).get("refused") or ""
    else:
        request = record.get("request") or {}
        who = _entity(request.get("principal"))
        what = _entity(request.get("action"))
        on = _entity(request.get("resource"))
        errors = record.get("errors") or []
        why = "; ".join(str(e) for e in errors) or ", ".join(record.get("reasons") or [])
    return {
        "seq": record.get("seq"),
        "decision_id": record.get("decision_id"),
        "time": str(record.get("time", ""))[:19].replace("T", " "),
        "service": service_of(record),
        "pep": record.get("pep") or "",
        "kind": "error" if record.get("errors") else record.get("kind"),
        "principal": who,
        "action": what,
        "resource": on,
        "why": why or "no policy permits it",
    }


_CREDENTIAL_FACTS = (
    "subject",
    "issuer",
    "mfa",
    "mfa_strength",
    "auth_age_seconds",
    "source_ip",
    "host",
    "credential",
)


def _debug_sections(record: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The debug page's sections, in the order a person reads a decision: what came in (the
    credential and the masked claims), what was added (trust), what decided, what else applied."""
    request = record.get("request") or {}
    context = request.get("context") if isinstance(request, dict) else None
    context = context if isinstance(context, dict) else {}
    checked = {k: context[k] for k in _CREDENTIAL_FACTS if k in context}
    if record.get("pep"):
        checked["pep"] = record["pep"]
    claims = {k: v for k, v in context.items() if k not in _CREDENTIAL_FACTS}
    masked = record.get("masked") or []
    return [
        (
            "Credential checks",
            checked or None,
            "no credential facts in this record: the caller passed the request itself (AuthZEN), "
            "so the PEP checked the credential",
        ),
        (
            "Masked claim snapshot",
            {"context": claims, "masked": masked} if claims or masked else None,
            "the request carried no context",
        ),
        ("Request", request, ""),
        ("Trust signals", record.get("trust"), "no trust assessment (trust/ not configured)"),
        (
            "Policies",
            {
                "determining": record.get("determining_policies") or record.get("reasons"),
                "reason_code": record.get("reason_code"),
                "errors": record.get("errors"),
                "revision": record.get("revision"),
            },
            "",
        ),
        (
            "Shadow answer",
            {
                "shadow": record.get("shadow"),
                "shadow_reasons": record.get("shadow_reasons"),
                "would_change": record.get("would_change"),
            },
            "",
        ),
        (
            "Grants and exceptions",
            {"grants": record.get("grants"), "exceptions": record.get("exceptions")}
            if record.get("grants") or record.get("exceptions")
            else None,
            "no JIT grant or exception applied",
        ),
    ]


def ui_routes(services: Services, gate: Gate, jwks: JwksStatus | None = None) -> list[Route]:
    """Every route under /ui: the pages and actions behind the gate (each with its admin
    action, as the gate's table lists it), and sign-in and static files open. `jwks`: the
    token verifier's JWKS health by issuer (the on-call page's IdP health)."""
    ui = Ui(services, gate, jwks)
    p = UI_PREFIX

    def page(path: str, handler: Handler, action: str, resolve: Resolver | None = None) -> Route:
        method = "POST" if resolve is not None else "GET"
        return gate.route(
            method, f"{p}{path}", handler, resolve, action=action, credential=ui.credential
        )

    return [
        Route(f"{p}/login", ui.login, methods=["GET"]),
        Route(f"{p}/callback", ui.callback, methods=["GET"]),
        Route(f"{p}/logout", ui.logout, methods=["POST"]),
        Route(f"{STATIC}/{{name:path}}", ui.static, methods=["GET"]),
        page("", ui.executive, "decisions:read"),
        page("/oncall", ui.oncall, "decisions:read"),
        page("/oncall/stream", ui.stream, "decisions:read"),
        page("/debug", ui.debug, "decisions:read"),
        page("/debug/proof", ui.proof, "ledger:read"),
        page("/policy", ui.policy, "bundle:read"),
        page("/policy/recent", ui.recent, "bundle:read"),
        page("/policy/rollback", ui.rollback, "bundle:write", ui.checked),
        page("/rollout", ui.rollout, "rollout:read"),
        page("/rollout/labels", ui.label, "rollout:label", ui.label_target),
        page("/access", ui.access, "access:read"),
        page("/access/break-glass", ui.break_glass, "breakglass:read"),
        page(
            "/access/requests/{request_id}/approve", ui.approve, "access:approve", ui.request_target
        ),
        page("/access/requests/{request_id}/deny", ui.deny, "access:deny", ui.request_target),
        page("/break-glass/{session_id}/review", ui.review, "breakglass:review", ui.session_target),
        page("/identity", ui.identity, "identity:read"),
        page("/scorecard", ui.scorecard, "scorecard:read"),
    ]
