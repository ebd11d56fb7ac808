"""Decision endpoints wrapped in their trace (telemetry/tracing.py), installed only when
tracing is on: off, the routes are exactly the untraced handlers.

`root` goes outside the PEP gate, so the span covers the gate's authentication of the calling
PEP too; `adapter` goes inside it, around the adapter's own work (reading the request, asking
the decision point, shaping the answer). The answer carries the trace id in
`X-Trustplane-Trace-Id`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trustplane.model import CALLING_PEP, DECISION_ID, TRACE_ID
from trustplane.telemetry.tracing import CONTEXT_HEADERS, TRACE_HEADER, Tracing

Handler = Callable[[Request], Awaitable[Response]]
_TRACE_HEADER = TRACE_HEADER.lower().encode()


def _attributes(scope: Scope, route: str, adapter: str) -> dict[str, Any]:
    client = scope.get("client")
    return {
        "http.request.method": scope["method"],
        "http.route": route,
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "client.address": client[0] if client else "",
        "trustplane.adapter": adapter,
    }


def _carrier(scope: MutableMapping[str, Any]) -> dict[str, str]:
    wanted = {name.encode(): name for name in CONTEXT_HEADERS}
    return {
        wanted[key]: value.decode("latin-1") for key, value in scope["headers"] if key in wanted
    }


def _finish(span: Any, status: int) -> None:
    if span is None:  # not sampled
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", str(status))
    decision_id = DECISION_ID.get()
    if decision_id is not None:
        span.set_attribute("trustplane.decision.id", decision_id)


def root(tracing: Tracing, handler: Handler, route: str, adapter: str) -> Handler:
    """The decision call's span around a request handler (PEP gate included)."""

    async def traced(request: Request) -> Response:
        scope = request.scope
        name = f"{scope['method']} {route}"
        with tracing.decision(name, _carrier(scope), _attributes(scope, route, adapter)) as span:
            response = await handler(request)
            _finish(span, response.status_code)
            trace_id = TRACE_ID.get()
            if trace_id is not None:
                response.headers[TRACE_HEADER] = trace_id
            return response

    return traced


def adapter(tracing: Tracing, handler: Handler, name: str) -> Handler:
    """The adapter's span (inside the PEP gate, so it knows the calling PEP)."""

    async def traced(request: Request) -> Response:
        with tracing.span(f"trustplane.pep.{name}") as span:
            if span is not None:
                span.set_attribute("trustplane.pep", CALLING_PEP.get() or "anonymous")
            return await handler(request)

    return traced


class RootApp:
    """`root` for an endpoint written as a bare ASGI app."""

    def __init__(self, tracing: Tracing, app: ASGIApp, route: str, adapter: str) -> None:
        self._tracing, self._app, self._route, self._adapter = tracing, app, route, adapter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = f"{scope['method']} {self._route}"
        attributes = _attributes(scope, self._route, self._adapter)
        with self._tracing.decision(name, _carrier(scope), attributes) as span:
            trace_id = TRACE_ID.get()

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    _finish(span, message["status"])
                    if trace_id is not None:
                        headers = list(message.get("headers", []))
                        headers.append((_TRACE_HEADER, trace_id.encode()))
                        message = {**message, "headers": headers}
                await send(message)

            await self._app(scope, receive, send_traced)


class AdapterApp:
    """`adapter` for an endpoint written as a bare ASGI app."""

    def __init__(self, tracing: Tracing, app: ASGIApp, name: str) -> None:
        self._tracing, self._app, self._name = tracing, app, f"trustplane.pep.{name}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._tracing.span(self._name) as span:
            if span is not None:
                span.set_attribute("trustplane.pep", CALLING_PEP.get() or "anonymous")
            await self._app(scope, receive, send)
