"""Envoy and Istio external authorization: the gRPC `envoy.service.auth.v3.Authorization/Check`
service (protos from `xds-protos`) and Envoy's HTTP ext_authz mode.

`CheckRequest.attributes` becomes the same facts forward-auth works from: the HTTP method,
host and path of the held request, its headers, the source address, whether the downstream
connection used TLS (and its SNI), and `context_extensions`. The caller is the bearer JWT in
`authorization` if there is one, else the peer's SPIFFE ID that Envoy saw on the mTLS connection
(`source.principal`). The answer is OK with `ok_response` headers for the upstream (decision id,
the authenticated identity; the caller's `authorization` removed when `pep.strip_credential` is on),
or PERMISSION_DENIED / UNAUTHENTICATED with a `denied_response` Envoy sends to the client:
403 with a JSON body, or 401 with `WWW-Authenticate`.

Anything unexpected while answering is a deny (UNAVAILABLE with a 503 body), never an allow:
Envoy's own `failure_mode_allow` should stay false.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping

import grpc
import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import DecodeError
from google.rpc import code_pb2
from starlette.requests import Request
from starlette.responses import Response

from trustplane.decision.routes import HttpFacts
from trustplane.enforcement.enforcer import HttpEnforcer, Verdict
from trustplane.enforcement.forward_auth import original_request
from trustplane.enforcement.pep import ANONYMOUS, PepAuthenticator, PepLatency, PepUnauthenticated
from trustplane.model import CALLING_PEP, DECISION_ID
from trustplane.problems import json_response
from trustplane.telemetry.tracing import CONTEXT_HEADERS

log = logging.getLogger("trustplane.envoy")

REMOVE_HEADERS = "x-envoy-auth-headers-to-remove"
CHECK_SPAN = "envoy.service.auth.v3.Authorization/Check"
_GRPC_CODES = {200: code_pb2.OK, 401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED}


def check_facts(attributes: external_auth_pb2.AttributeContext) -> tuple[HttpFacts, str | None]:
    """The held request as facts, and the peer's SPIFFE ID when Envoy verified one."""
    http = attributes.request.http
    # Protobuf maps are read by key: their `items()` is the generic Mapping one, several
    # Python calls per header.
    held = http.headers
    headers = {k.lower(): held[k] for k in held}
    if not headers and http.header_map.headers:
        headers = {
            h.key.lower(): h.value or h.raw_value.decode("utf-8", "replace")
            for h in http.header_map.headers
        }
    source = attributes.source
    extensions = attributes.context_extensions
    sni = attributes.tls_session.sni
    tls = bool(sni) or bool(source.certificate) or http.scheme == "https"
    facts = HttpFacts(
        method=(http.method or "GET").upper(),
        host=http.host or headers.get(":authority", headers.get("host", "")),
        path=http.path or "/",
        source_ip=source.address.socket_address.address,
        tls=tls,
        sni=sni,
        headers=headers,
        extensions=dict(extensions) if extensions else {},  # usually none: skip the copy
    )
    principal = source.principal if source.principal.startswith("spiffe://") else None
    return facts, principal


def check_response(verdict: Verdict, strip_credential: bool) -> external_auth_pb2.CheckResponse:
    # Messages are filled in place (`add()`, field assignment): constructing each header as
    # its own message and copying it in costs about three times as much per answer.
    response = external_auth_pb2.CheckResponse()
    if verdict.status == 200:
        response.status.code = code_pb2.OK
        ok = response.ok_response
        ok.SetInParent()  # present even when it carries nothing
        _add_headers(ok.headers, verdict.headers())
        if strip_credential:
            ok.headers_to_remove.append("authorization")
        return response
    response.status.code = _GRPC_CODES.get(verdict.status, code_pb2.PERMISSION_DENIED)
    _fill_denied(response, verdict.status, verdict.headers(), orjson.dumps(verdict.body()).decode())
    return response


def _add_headers(
    field: RepeatedCompositeFieldContainer[base_pb2.HeaderValueOption], headers: Mapping[str, str]
) -> None:
    """Append `headers` (names lower-cased) to a repeated `HeaderValueOption` field."""
    for key, value in headers.items():
        header = field.add().header
        header.key = key.lower()
        header.value = value


def _fill_denied(
    response: external_auth_pb2.CheckResponse, http_code: int, headers: Mapping[str, str], body: str
) -> None:
    denied = response.denied_response
    denied.status.code = http_code
    _add_headers(denied.headers, headers)
    content_type = denied.headers.add().header
    content_type.key = "content-type"
    content_type.value = "application/json"
    denied.body = body


class EnvoyAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """`envoy.service.auth.v3.Authorization`: `Check` on grpc.aio, `answer` for any transport
    (the compiled front hands it the same messages). With `pep`, the calling Envoy must
    authenticate (the call's `authorization` metadata: a PEP token or JWT-SVID) as pep.auth
    says; a refused one gets a deny with status UNAUTHENTICATED and no decision is made."""

    def __init__(
        self,
        enforcer: HttpEnforcer,
        strip_credential: bool = False,
        pep: PepAuthenticator | None = None,
        latency: PepLatency | None = None,
    ) -> None:
        self._enforcer = enforcer
        self._strip = strip_credential
        self._pep = pep
        self._latency = latency

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else None
                break
        return await self.answer(request, context.peer(), authorization)

    async def answer(
        self, request: external_auth_pb2.CheckRequest, peer: str, authorization: str | None = None
    ) -> external_auth_pb2.CheckResponse:
        """The answer to one Check; `peer` in gRPC's form (`ipv4:127.0.0.1:5555`);
        `authorization`: the call's `authorization` metadata (the calling PEP's credential)."""
        tracing = self._enforcer.tracing
        if tracing is None:
            return await self._answer(request, peer, authorization)
        # The held request's own trace context: Envoy's tracing puts it in the headers it
        # sends, so the decision joins the trace of the request it decides.
        held = request.attributes.request.http.headers
        carrier = {k.lower(): held[k] for k in held if k.lower() in CONTEXT_HEADERS}
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": "envoy.service.auth.v3.Authorization",
            "rpc.method": "Check",
            "trustplane.adapter": "envoy_grpc",
        }
        with tracing.decision(CHECK_SPAN, carrier, attributes) as span:
            with tracing.span("trustplane.pep.envoy_grpc"):
                response = await self._answer(request, peer, authorization)
            if span is None:  # not sampled
                return response
            span.set_attribute("rpc.grpc.status_code", response.status.code)
            decision_id = DECISION_ID.get()
            if decision_id is not None:
                span.set_attribute("trustplane.decision.id", decision_id)
            return response

    async def _answer(
        self, request: external_auth_pb2.CheckRequest, peer: str, authorization: str | None
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
        pep = ANONYMOUS
        if self._pep is not None:
            try:
                pep = self._pep.authenticate(authorization)
            except PepUnauthenticated as exc:
                self._observe(ANONYMOUS, started)
                return pep_refused(exc)
        token = CALLING_PEP.set(pep)
        try:
            return await self._decide(request, peer)
        finally:
            CALLING_PEP.reset(token)
            self._observe(pep, started)

    def _observe(self, pep: str, started: float) -> None:
        if self._latency is not None:
            self._latency.observe(pep, time.perf_counter() - started)

    async def _decide(
        self, request: external_auth_pb2.CheckRequest, peer: str
    ) -> external_auth_pb2.CheckResponse:
        try:
            attributes = request.attributes
            facts, spiffe_id = check_facts(attributes)
            certificate = attributes.source.certificate or None
            verdict = await self._enforcer.judge(
                facts, facts.headers, _peer_address(peer), spiffe_id, certificate
            )
            return check_response(verdict, self._strip)
        except Exception:
            log.exception("ext_authz Check failed; denying")
            return unavailable()


def pep_refused(exc: PepUnauthenticated) -> external_auth_pb2.CheckResponse:
    """The deny sent to a caller that is not a registered PEP: no decision was made, and the
    status says why (an Envoy that sees it has a credential to fix; it must not allow)."""
    body = orjson.dumps({"decision": False, "reasons": [exc.code], "detail": exc.detail}).decode()
    response = external_auth_pb2.CheckResponse()
    response.status.code = code_pb2.UNAUTHENTICATED
    response.status.message = f"{exc.code}: {exc.detail}"
    _fill_denied(response, 403, {}, body)
    return response


def unavailable() -> external_auth_pb2.CheckResponse:
    """The deny sent when no decision could be made (Envoy passes the 503 to the client)."""
    body = orjson.dumps({"decision": False, "reasons": ["pdp_error"]}).decode()
    response = external_auth_pb2.CheckResponse()
    response.status.code = code_pb2.UNAVAILABLE
    _fill_denied(response, 503, {}, body)
    return response


def _peer_address(peer: str) -> str | None:
    """`ipv4:127.0.0.1:5555` / `ipv6:[::1]:5555` → the address; None for other transports."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return None


def grpc_address(host: str, port: int) -> str:
    """`host:port` as gRPC spells a listening address (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


SERVICE = "envoy.service.auth.v3.Authorization"


async def _check_bytes(
    service: EnvoyAuthorization, message: bytes, context: grpc.aio.ServicerContext
) -> external_auth_pb2.CheckResponse:
    try:
        request = external_auth_pb2.CheckRequest.FromString(message)
    except DecodeError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed CheckRequest: {exc}")
    return await service.Check(request, context)  # reads the PEP's `authorization` metadata


async def start_grpc_server(
    service: EnvoyAuthorization, host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    """Serve ext_authz with grpcio on host:port (SO_REUSEPORT, so every worker process binds
    the same port; the serving parent's claim keeps other servers off it, server/ports.py);
    returns the server and the bound port."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    # Bytes in, parsed here: grpcio's own deserializer would answer a malformed frame UNKNOWN
    # (an error Envoy's failure_mode_allow lets through); the compiled front and this refuse it
    # alike, INVALID_ARGUMENT naming the problem.
    handler = grpc.unary_unary_rpc_method_handler(
        functools.partial(_check_bytes, service),
        response_serializer=external_auth_pb2.CheckResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"Check": handler})]
    )
    bound = server.add_insecure_port(grpc_address(host, port))
    await server.start()
    return server, bound


class EnvoyHttp:
    """Envoy's HTTP ext_authz mode: Envoy sends the held request's method, path (after the
    configured `path_prefix`) and headers; 200 allows, anything else is the answer to the
    client. `x-envoy-auth-headers-to-remove` asks Envoy to drop the caller's credential."""

    PREFIX = "/v1/envoy/http"

    def __init__(self, enforcer: HttpEnforcer, strip_credential: bool = False) -> None:
        self._enforcer = enforcer
        self._strip = strip_credential

    async def handle(self, request: Request) -> Response:
        peer = request.client.host if request.client else None
        headers: Mapping[str, str] = {k.lower(): v for k, v in request.headers.items()}
        trusted = self._enforcer.authenticator.proxies.trusts(peer)
        path = request.url.path[len(self.PREFIX) :] or "/"
        if request.url.query:
            path += "?" + request.url.query
        facts = original_request(request.method, path, headers, peer, trusted)
        verdict = await self._enforcer.judge(facts, headers, peer)
        response_headers = verdict.headers()
        if verdict.status == 200 and self._strip:
            response_headers[REMOVE_HEADERS] = "authorization"
        return json_response(verdict.body(), verdict.status, headers=response_headers)
