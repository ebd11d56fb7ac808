"""ASGI middleware for Starlette/FastAPI (any ASGI app): every HTTP request is authenticated,
mapped and decided before the app sees it, and the app can read the decision.

    app.add_middleware(TrustplaneMiddleware, pdp=RemotePdp("http://127.0.0.1:8181"))

    @app.get("/ops/services/{service}/logs")
    async def logs(request: Request):
        who = request.state.trustplane.user          # "alice"
        ...

Two ways to ask:

- `RemotePdp(url)`: a trustplane server's forward-auth endpoint, with the request described in
  `X-Original-*` headers; the app's address must be in the server's `server.trusted_proxies`. The
  server authenticates the caller's token and maps the route with its bundle's routes.yaml.
  Where the server requires PEP authentication, pass `pep_token` (`trustplane pep add`).
- `LocalPdp(enforcer)`: in the same process, through `HttpEnforcer` (no network hop).

Fail closed: when the PDP cannot answer, the request gets 503 and the app is not called,
unless its path starts with one of `fail_open_paths`; every such pass is logged and counted
(`trustplane_sdk_fail_open_total{route}`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from trustplane.enforcement.enforcer import (
    DECISION_HEADER,
    PRINCIPAL_HEADER,
    USER_HEADER,
    HttpEnforcer,
)
from trustplane.enforcement.forward_auth import original_request
from trustplane.enforcement.pep import PEP_HEADER
from trustplane.enforcement.sdk import SdkMetrics, asend_with_retries, default_sdk_metrics

log = logging.getLogger("trustplane.asgi")


@dataclass(frozen=True)
class Enforcement:
    """What the middleware decided, on `request.state.trustplane`."""

    allowed: bool
    status: int  # 200, 401, 403 or 503 (no answer)
    decision_id: str | None = None
    user: str | None = None
    principal: str | None = None
    reasons: tuple[str, ...] = ()
    failed_open: bool = False
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # for a deny answer


class Pdp(Protocol):
    async def enforce(
        self, method: str, path: str, headers: dict[str, str], client: str | None
    ) -> Enforcement: ...


class RemotePdp:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
        pep_token: str | None = None,
    ) -> None:
        """`pep_token`: this app's PEP token, sent in X-Trustplane-PEP-Authorization (its
        `Authorization` is the end user's)."""
        headers = {PEP_HEADER: f"Bearer {pep_token}"} if pep_token else None
        self._http = httpx.AsyncClient(
            base_url=url, timeout=timeout, transport=transport, headers=headers
        )
        self._retries = retries

    async def aclose(self) -> None:
        await self._http.aclose()

    async def enforce(
        self, method: str, path: str, headers: dict[str, str], client: str | None
    ) -> Enforcement:
        ask = {
            "x-original-method": method,
            "x-original-uri": path,
            "x-forwarded-host": headers.get("host", ""),
            "x-forwarded-for": client or "",
        }
        for name in ("authorization", "x-forwarded-client-cert", "x-forwarded-user"):
            if name in headers:
                ask[name] = headers[name]
        response = await self._get(ask)
        refused_pep = response.headers.get("content-type", "").startswith("application/problem")
        if response.status_code not in (200, 401, 403) or refused_pep:
            # No decision (this app is not a PEP the server accepts, or it failed): fail closed.
            raise httpx.HTTPStatusError(
                f"forward-auth answered {response.status_code}",
                request=response.request,
                response=response,
            )
        body = orjson.loads(response.content)
        kept = {k: v for k, v in response.headers.items() if k.lower() == "www-authenticate"}
        return Enforcement(
            allowed=response.status_code == 200,
            status=response.status_code,
            decision_id=response.headers.get(DECISION_HEADER),
            user=response.headers.get(USER_HEADER),
            principal=response.headers.get(PRINCIPAL_HEADER),
            reasons=tuple(body.get("reasons", [])),
            headers=kept,
        )

    async def _get(self, headers: dict[str, str]) -> httpx.Response:
        return await asend_with_retries(
            lambda: self._http.get("/v1/forward-auth", headers=headers), self._retries
        )


class LocalPdp:
    """Decide in this process (the app embeds a trustplane Runtime)."""

    def __init__(self, enforcer: HttpEnforcer) -> None:
        self._enforcer = enforcer

    async def enforce(
        self, method: str, path: str, headers: dict[str, str], client: str | None
    ) -> Enforcement:
        trusted = self._enforcer.authenticator.proxies.trusts(client)
        facts = original_request(method, path, headers, client, trusted)
        verdict = await self._enforcer.judge(facts, headers, client)
        return Enforcement(
            allowed=verdict.status == 200,
            status=verdict.status,
            decision_id=verdict.decision.decision_id,
            user=verdict.credential.subject if verdict.credential else None,
            principal=str(verdict.principal),
            reasons=verdict.reasons,
            headers={k: v for k, v in verdict.headers().items() if k == "WWW-Authenticate"},
        )


class TrustplaneMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        pdp: Pdp,
        fail_open_paths: Sequence[str] = (),
        exempt_paths: Sequence[str] = (),
        metrics: SdkMetrics | None = None,
    ) -> None:
        """`exempt_paths`: exact paths never checked (a health probe); `fail_open_paths`:
        path prefixes let through, counted and logged, when the PDP cannot answer."""
        self.app = app
        self._pdp = pdp
        self._fail_open = tuple(fail_open_paths)
        self._exempt = frozenset(exempt_paths)
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._exempt:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        client = scope["client"][0] if scope.get("client") else None
        try:
            result = await self._pdp.enforce(scope["method"], path, headers, client)
        except Exception as exc:  # no answer: closed unless this route chose otherwise
            result = self._unanswered(scope["path"], f"{type(exc).__name__}: {exc}")
        scope.setdefault("state", {})["trustplane"] = result
        if result.allowed:
            await self.app(scope, receive, send)
            return
        body = {
            "decision": False,
            "decision_id": result.decision_id,
            "reasons": list(result.reasons),
        }
        await _send_json(send, result.status, body, result.headers)

    def _unanswered(self, path: str, error: str) -> Enforcement:
        prefix = next((p for p in self._fail_open if path.startswith(p)), None)
        if prefix is not None:  # labelled by the configured prefix: bounded cardinality
            (self._metrics or default_sdk_metrics()).fail_open.labels(prefix).inc()
            log.warning("trustplane unreachable, failing OPEN for %s: %s", path, error)
            return Enforcement(allowed=True, status=200, failed_open=True)
        log.warning("trustplane unreachable, denying %s: %s", path, error)
        return Enforcement(allowed=False, status=503, reasons=("pdp_unavailable",))


async def _send_json(send: Send, status: int, body: Any, headers: dict[str, str]) -> None:
    payload = orjson.dumps(body)
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
