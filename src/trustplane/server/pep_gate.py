"""The PEP gate in front of every HTTP decision endpoint, and the TLS plumbing that lets it see
a PEP's client certificate.

`PepGate.guard(handler)` authenticates the calling PEP (enforcement/pep.py) before the
handler runs: refused, the caller gets a 401 problem document and no decision is made; let in,
the PEP's name is set in `CALLING_PEP` for the handler's decision records and the call's
latency is observed under that name.

mTLS: when the server serves HTTPS and PEP authentication is on with the identity plane, the
TLS layer asks for a client certificate (optional at the handshake, since people's browsers
and the webhook's kube-apiserver may have none) and verifies it against the trust domain's CA
bundle, written at start-up to `state_dir/tls/pep-ca.pem`; whenever the change feed announces a
change of the trust domain's keys, the file is rewritten and loaded into each serving
SSLContext (`PepClientTrust` keeps them), so a CA that rotation adds is trusted from the next
handshake on. A retired one stays trusted for PEPs until a restart: an SSLContext's trust store
only grows. uvicorn does not put the peer's certificate in the ASGI
scope, so `TlsPeerProtocol` (uvicorn's httptools protocol) adds it as the ASGI TLS extension
(`scope["extensions"]["tls"]["client_cert_chain"]`).
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from trustplane.config import PepAuth, Settings
from trustplane.enforcement.pep import (
    TOPIC,
    PepAuthenticator,
    PepLatency,
    PepRegistry,
    PepStore,
    PepUnauthenticated,
    refusal_counter,
)
from trustplane.identity.keys import TOPIC as KEYS_TOPIC
from trustplane.identity.keys import published_ca_certificates
from trustplane.model import CALLING_PEP
from trustplane.problems import Problem
from trustplane.server.runtime import Runtime
from trustplane.server.tls import ContextFactory
from trustplane.store.database import create_store_engine

log = logging.getLogger("trustplane.pep")

Handler = Callable[[Request], Awaitable[Response]]
_CHALLENGE = 'Bearer realm="trustplane-pep"'


class PepGate:
    def __init__(
        self,
        authenticator: PepAuthenticator,
        latency: PepLatency,
        registry: PepRegistry | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.latency = latency
        self.registry = registry
        self._peers: dict[str, tuple[str | None, int | None]] = {}

    @classmethod
    def for_runtime(cls, runtime: Runtime) -> PepGate:
        """The gate of a serving node: the registry loaded now and reloaded on every change
        the feed announces, JWT-SVIDs checked with the identity plane's keys, revocations of
        JWT ids and certificate serials honoured."""
        settings = runtime.settings
        registry = PepRegistry(PepStore(runtime.engine))
        registry.refresh()
        runtime.feed.subscribe(TOPIC, registry.refresh)
        identity = runtime.identity
        revocations = runtime.revocations

        def revoked(token_id: str | None, serial: int | None) -> str | None:
            found = revocations.credential(token_id) or revocations.certificate(serial)
            return None if found is None else f"revoked: {found.target} ({found.reason})"

        ca_file = pep_ca_path(settings) if _pep_mtls(settings) else None
        if ca_file is not None:
            engine = runtime.engine

            def trust_new_cas(_topic: str) -> None:
                if _write_ca_bundle(engine, ca_file):
                    PepClientTrust.reload(ca_file)

            runtime.feed.subscribe(KEYS_TOPIC, trust_new_cas)

        authenticator = PepAuthenticator(
            settings.pep.auth,
            registry,
            settings.pep.audience,
            keys=(lambda: identity.keys) if identity is not None else None,
            revoked=revoked,
            refused=refusal_counter(runtime.metrics.registry),
        )
        return cls(authenticator, PepLatency(runtime.metrics.registry), registry)

    def started(self) -> None:
        """After the change feed has its baseline: read the registry again (a PEP added in
        between is seen) and say when `required` leaves nobody able to call."""
        if self.registry is None:
            return
        self.registry.refresh()
        if self.authenticator.mode is PepAuth.REQUIRED and not len(self.registry):
            log.warning(
                "pep.auth is required and no PEP is registered: every decision call is refused "
                "until one is (`trustplane pep add NAME`)"
            )

    def guard(
        self, handler: Handler, header: str = "authorization", *, timed: bool = True
    ) -> Handler:
        """`handler`, answering registered PEPs only (per pep.auth). `header`: where the PEP's
        Bearer credential is; it is removed from the request the handler sees, so it is never
        mistaken for the end user's or recorded. `timed` False: a long-poll, whose duration
        is not a decision's latency."""
        admit = self._admission(header)
        observe = self.latency.observe if timed else _untimed

        async def guarded(request: Request) -> Response:
            started = time.perf_counter()
            pep = admit(request.scope)
            if isinstance(pep, Response):
                return pep
            token = CALLING_PEP.set(pep)
            try:
                return await handler(request)
            finally:
                CALLING_PEP.reset(token)
                observe(pep, time.perf_counter() - started)

        return guarded

    def guard_app(self, app: ASGIApp, header: str = "authorization") -> ASGIApp:
        """`guard` for an endpoint written as a bare ASGI app (the AuthZEN evaluation, which
        skips Starlette's request and response objects); the same admission, refusal and
        latency, the latter up to the answer being handed to the server."""
        return _GuardedApp(self._admission(header), self.latency.observe, app)

    def _admission(self, header: str) -> Callable[[MutableMapping[str, Any]], str | Response]:
        """For one endpoint: the calling PEP's name from a request's scope, or the 401 to send
        (the refusal counted and its latency observed under `anonymous`)."""
        name = header.encode()
        authenticate = self.authenticator.authenticate
        observe = self.latency.observe
        asks = self.authenticator.mode is not PepAuth.OFF

        def admit(scope: MutableMapping[str, Any]) -> str | Response:
            started = time.perf_counter()
            credential = spiffe_id = serial = None
            if asks:  # off: nothing to read, nobody refused (still timed and named)
                headers = scope["headers"]
                for key, value in headers:
                    if key == name:
                        credential = value.decode("latin-1")
                        break
                if credential is not None and name != b"authorization":
                    # Before anything reads request.headers: the handler never sees it.
                    scope["headers"] = [item for item in headers if item[0] != name]
                spiffe_id, serial = self._peer(scope)
            try:
                return authenticate(credential, spiffe_id, serial)
            except PepUnauthenticated as exc:
                observe("anonymous", time.perf_counter() - started)
                challenge = f'{_CHALLENGE}, error="invalid_token", error_description="{exc.code}"'
                return Problem(
                    401,
                    "pep-unauthenticated",
                    "PEP authentication required",
                    f"{exc.code}: {exc.detail}",
                    headers={"WWW-Authenticate": challenge if credential else _CHALLENGE},
                ).response(Request(scope).url.path)

        return admit

    def _peer(self, scope: MutableMapping[str, Any]) -> tuple[str | None, int | None]:
        """The SPIFFE ID and serial of the client certificate the handshake verified."""
        tls = scope.get("extensions", {}).get("tls") if "extensions" in scope else None
        chain = tls.get("client_cert_chain") if tls else None
        if not chain:
            return None, None
        pem = chain[0]
        known = self._peers.get(pem)
        if known is None:
            known = _spiffe_identity(pem)
            if len(self._peers) >= 1024:  # PEPs are few; bound memory whatever connects
                self._peers.clear()
            self._peers[pem] = known
        return known


class _GuardedApp:
    """An ASGI endpoint behind the PEP gate (a class: Starlette routes a function as a
    request handler, an object as an ASGI app)."""

    def __init__(
        self,
        admit: Callable[[MutableMapping[str, Any]], str | Response],
        observe: Callable[[str, float], None],
        app: ASGIApp,
    ) -> None:
        self._admit = admit
        self._observe = observe
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        pep = self._admit(scope)
        if isinstance(pep, Response):
            await pep(scope, receive, send)
            return
        token = CALLING_PEP.set(pep)
        try:
            await self._app(scope, receive, send)
        finally:
            CALLING_PEP.reset(token)
            self._observe(pep, time.perf_counter() - started)


def _spiffe_identity(pem: str) -> tuple[str | None, int | None]:
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
        uris = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        return None, None
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    return (spiffe[0] if len(spiffe) == 1 else None), int(certificate.serial_number)


class TlsPeerProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, adding the verified client certificate (if any) to each
    request's scope as the ASGI TLS extension."""

    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self._tls = {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)]} if der else None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}  # type: ignore[dict-item]


@dataclass(frozen=True)
class PepClientTrust:
    """uvicorn's `ssl_context_factory` when PEPs may present client certificates: builds the
    context as it would have been built (`inner`, or uvicorn's default), and keeps it so that
    CAs added later can be loaded into it. Runs in every serving process (pickled to workers).
    OpenSSL locks a context's trust store, so loading from the change feed's thread while
    the event loop handshakes is safe."""

    inner: ContextFactory | None = None
    contexts: ClassVar[list[ssl.SSLContext]] = []

    def __call__(self, config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = self.inner(config, default) if self.inner is not None else default()
        PepClientTrust.contexts.append(context)
        return context

    @classmethod
    def reload(cls, ca_file: Path) -> None:
        for context in cls.contexts:
            try:
                context.load_verify_locations(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:  # keep the CAs it has
                log.error("PEP client CA bundle %s not loaded: %s", ca_file, exc)
                return
        if cls.contexts:
            log.info("PEP client CA bundle reloaded from %s", ca_file)


def _pep_mtls(settings: Settings) -> bool:
    """PEPs may present client certificates: HTTPS, the identity plane, pep.auth on."""
    serves_tls = settings.tls.from_ca or settings.tls.cert_file is not None
    identity = settings.identity.kek is not None or settings.identity.kek_file is not None
    return serves_tls and identity and settings.pep.auth is not PepAuth.OFF


def pep_ca_path(settings: Settings) -> Path:
    return settings.state_dir / "tls" / "pep-ca.pem"


def _write_ca_bundle(engine: Any, path: Path) -> bool:
    """Write the published CAs to `path` (replaced by a rename, so a reader never sees half
    a file); False when there are none."""
    pems = published_ca_certificates(engine)
    if not pems:
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text("".join(pems))
    os.replace(temporary, path)
    return True


def client_ca_file(settings: Settings) -> Path | None:
    """The trust domain's CA bundle for verifying PEP client certificates, written now; None
    when PEP mTLS does not apply (plain HTTP, pep.auth off, no identity plane)."""
    if not _pep_mtls(settings):
        return None
    engine = create_store_engine(settings.effective_database_url)
    try:
        path = pep_ca_path(settings)
        if not _write_ca_bundle(engine, path):
            log.warning("no trust-domain CA yet: PEP client certificates cannot be verified")
            return None
    finally:
        engine.dispose()
    return path


def _untimed(pep: str, seconds: float) -> None:
    """What a long-poll's duration is counted as: nothing."""
