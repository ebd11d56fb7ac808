"""The ASGI application: routes, error handling and the lifecycle of a serving node."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trustplane.decision.manager import reload_or_log
from trustplane.decision.watch import BundleWatcher
from trustplane.enforcement.admission import AdmissionWebhook
from trustplane.enforcement.credentials import Authenticator, ProxyTrust
from trustplane.enforcement.enforcer import HttpEnforcer
from trustplane.enforcement.envoy import EnvoyAuthorization, EnvoyHttp
from trustplane.enforcement.forward_auth import FORWARD_AUTH_METHODS, ForwardAuth
from trustplane.enforcement.native import ExtAuthzServer, start_ext_authz
from trustplane.enforcement.pep import PEP_HEADER
from trustplane.identity.tokens import verifier_from_settings
from trustplane.identity.workload_api import WorkloadApiServer
from trustplane.problems import Problem, json_response
from trustplane.server.admin import admin_routes
from trustplane.server.admin_gate import AdminGate
from trustplane.server.authzen import AuthZenApi
from trustplane.server.identity import IdentityApi, identity_routes
from trustplane.server.image_attestations import AttestationsApi, attestation_routes
from trustplane.server.openapi import openapi_document
from trustplane.server.pep_gate import PepGate
from trustplane.server.runtime import Runtime
from trustplane.telemetry.recorder import RecordingError

log = logging.getLogger("trustplane.server")


def create_app(runtime: Runtime, *, manage_runtime: bool = True) -> Starlette:
    """The app for `runtime`. With `manage_runtime`, the app's lifespan starts the runtime
    (bundle, ledger writer, file watcher, SIGHUP reload) and drains it on shutdown.
    `app.state.listeners` holds what the serving layer starts once HTTP listens."""
    pdp = runtime.decision_point()
    authzen = AuthZenApi(pdp, runtime.settings.server.max_body_bytes)
    admin_gate = AdminGate(runtime)  # every admin route goes through it (server/admin_gate.py)
    settings = runtime.settings
    skew = runtime.metrics.observe_issuer_clock_skew
    enforcer = HttpEnforcer(
        pdp,
        Authenticator.from_settings(
            settings.pep, ProxyTrust(settings.server.trusted_proxies), skew
        ),
        runtime.seen,
    )
    forward_auth = ForwardAuth(enforcer)
    envoy_http = EnvoyHttp(enforcer, settings.pep.strip_credential)
    identity = IdentityApi(runtime, verifier_from_settings(settings.pep.issuers, skew))
    admission = AdmissionWebhook(
        pdp,
        settings.admission,
        runtime.attestations,
        max_body_bytes=settings.server.max_body_bytes,
    )
    attestations = AttestationsApi(runtime, pdp)
    pep_gate = PepGate.for_runtime(runtime)  # every decision endpoint: registered PEPs only

    listeners = Listeners(runtime, enforcer, pep_gate)

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if manage_runtime and not listeners.started:
            reason = "starting: ext_authz gRPC and the Workload API are not listening yet"
            return json_response({"status": "not ready", "reason": reason}, 503)
        active = runtime.bundles.active
        if active is None:
            return json_response({"status": "not ready", "reason": "no active bundle"}, 503)
        if not runtime.feed.healthy:
            reason = "change feed lost: changes made elsewhere may not be seen"
            return json_response({"status": "not ready", "reason": reason}, 503)
        ledger = runtime.recorder.health()
        if ledger is not None:
            return json_response({"status": "not ready", "reason": ledger}, 503)
        return json_response({"status": "ready", "revision": active.bundle.revision})

    async def metrics(request: Request) -> Response:
        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document())

    evaluation = pep_gate.guard_app(authzen.evaluation_app)
    routes = [
        Route("/access/v1/evaluation", evaluation, methods=["POST"]),
        Route("/access/v1/evaluations", pep_gate.guard(authzen.evaluations), methods=["POST"]),
        Route("/.well-known/authzen-configuration", authzen.configuration, methods=["GET"]),
        # Here `Authorization` is the end user's (the held request's): the PEP uses its own.
        Route(
            "/v1/forward-auth",
            pep_gate.guard(forward_auth.handle, PEP_HEADER),
            methods=list(FORWARD_AUTH_METHODS),
        ),
        Route(
            EnvoyHttp.PREFIX,
            pep_gate.guard(envoy_http.handle, PEP_HEADER),
            methods=list(FORWARD_AUTH_METHODS),
        ),
        Route(
            EnvoyHttp.PREFIX + "/{path:path}",
            pep_gate.guard(envoy_http.handle, PEP_HEADER),
            methods=list(FORWARD_AUTH_METHODS),
        ),
        Route(AdmissionWebhook.PATH, pep_gate.guard(admission.handle), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *admin_routes(runtime, admin_gate),
        *identity_routes(identity),
        *attestation_routes(attestations, admin_gate),
    ]

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return exc.response(request.url.path)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 404:
            detail = f"no route {request.url.path}"
        headers = dict(exc.headers) if exc.headers else None
        return Problem(exc.status_code, slug, detail, detail, headers=headers).response(
            request.url.path
        )

    async def on_recording(request: Request, exc: Exception) -> Response:
        # Sync durability could not commit: no answer is better than an unrecorded one.
        return Problem(503, "ledger-unavailable", "Decision not recorded", str(exc)).response(
            request.url.path
        )

    async def on_store(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DBAPIError)
        if isinstance(exc, DataError):  # the store refused a value this request carried
            log.warning("the store refused a value on %s: %s", request.url.path, exc.orig)
            return Problem(
                422,
                "value-not-storable",
                "Value not storable",
                "the store refused a value of this request (for example a NUL character)",
            ).response(request.url.path)
        if not (isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated):
            return await on_error(request, exc)
        log.warning("the store is unavailable on %s: %s", request.url.path, exc.orig)
        return Problem(
            503,
            "store-unavailable",
            "Store unavailable",
            "the store cannot be reached; try again",
            headers={"Retry-After": "5"},
        ).response(request.url.path)

    async def on_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return Problem(
            500,
            "internal-error",
            "Internal error",
            "an internal error occurred; it has been logged",
        ).response(request.url.path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not manage_runtime:
            yield
            return
        await run_in_threadpool(runtime.start)
        pep_gate.started()
        _freeze_startup_heap()
        tasks = (
            [asyncio.create_task(_watch_bundle(runtime))] if runtime.settings.policy.watch else []
        )
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(_reload(runtime, "sighup"))
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
            await listeners.stop()  # answers in flight are recorded before close
            await run_in_threadpool(runtime.close)

    app = TrustplaneApp(
        routes=routes,
        exception_handlers={
            Problem: on_problem,
            HTTPException: on_http,
            RecordingError: on_recording,
            DBAPIError: on_store,
            Exception: on_error,
        },
        lifespan=lifespan,
    )
    app.direct[("POST", "/access/v1/evaluation")] = evaluation
    app.state.listeners = listeners
    return app


class TrustplaneApp(Starlette):
    """Starlette, with the busiest decision endpoints reached directly: `direct` maps
    (method, path) to an ASGI endpoint that is called without the middleware stack and the
    router (a tenth of a cached decision's CPU), its exceptions answered by the same handlers
    as every route's. Everything else, and any request under a root path, goes through
    Starlette as before."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct: dict[tuple[str, str], ASGIApp] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            endpoint = self.direct.get((scope["method"], scope["path"]))
            if endpoint is not None:
                scope["app"] = self
                await self._direct(endpoint, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _direct(self, endpoint: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await endpoint(scope, receive, sending)
        except Exception as exc:
            cls, handler = self._handler(exc)
            if started or handler is None:
                raise  # as Starlette does: an answer half sent cannot be replaced
            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, send)
            if cls is Exception:
                raise  # as Starlette's outermost middleware does: the server logs it too

    def _handler(self, exc: Exception) -> tuple[type | None, Any]:
        for cls in type(exc).__mro__:
            found = self.exception_handlers.get(cls)
            if found is not None:
                return cls, found
        return None, None


class Listeners:
    """What takes traffic besides the HTTP socket: Envoy's ext_authz gRPC and the SPIFFE
    Workload API socket. The serving layer (server/serve.py) starts them only once the HTTP
    socket listens and the app has started, so nothing reaches a server that is not whole, and
    a server that cannot listen on HTTP never takes a gRPC call. The app's shutdown stops them
    before the runtime closes."""

    def __init__(self, runtime: Runtime, enforcer: HttpEnforcer, gate: PepGate) -> None:
        self._runtime = runtime
        self._enforcer = enforcer
        self._gate = gate
        self._grpc: ExtAuthzServer | None = None
        self._workload_api: WorkloadApiServer | None = None
        self.started = False

    async def start(self) -> None:
        runtime, settings = self._runtime, self._runtime.settings
        if settings.grpc.enabled:
            service = EnvoyAuthorization(
                self._enforcer,
                settings.pep.strip_credential,
                self._gate.authenticator,
                self._gate.latency,
            )
            self._grpc, transport = await start_ext_authz(
                settings.grpc, settings.server.host, service
            )
            log.info(
                "Envoy ext_authz gRPC on %s:%d (%s transport)",
                settings.server.host,
                self._grpc.port,
                transport,
            )
        # One process owns the socket: `identity agent` serves it for several workers.
        if (
            settings.identity.workload_socket
            and runtime.identity is not None
            and settings.server.workers == 1
        ):
            self._workload_api = WorkloadApiServer(
                runtime.identity, settings.identity.workload_socket
            )
            await self._workload_api.start()
        self.started = True

    async def stop(self) -> None:
        grpc_server, self._grpc = self._grpc, None
        if grpc_server is not None:
            await grpc_server.stop()  # answers in flight are recorded before close
        workload_api, self._workload_api = self._workload_api, None
        if workload_api is not None:
            await workload_api.stop()


def _freeze_startup_heap() -> None:
    """Move what start-up allocated (modules, the compiled bundle, protobuf descriptors) out of
    the garbage collector's reach. A full collection otherwise walks all of it while requests
    wait, which shows as multi-millisecond pauses in the latency tail; objects made while
    serving are collected as usual."""
    gc.collect()
    gc.freeze()


async def _reload(runtime: Runtime, reason: str) -> None:
    await run_in_threadpool(reload_or_log, runtime.bundles, reason)


async def _watch_bundle(runtime: Runtime) -> None:
    directory = runtime.bundles.bundle_dir
    if directory is None:
        return

    async def reload(changed: str) -> None:
        before = runtime.bundles.active
        loaded = await run_in_threadpool(reload_or_log, runtime.bundles, "file-change", changed)
        if loaded is None:
            return  # refused, and logged with its problems and what changed
        if before is not None and before.bundle.revision == loaded.bundle.revision:
            log.info("bundle files changed (%s); content unchanged", changed)
        else:
            was = before.bundle.revision[:12] if before is not None else "none"
            log.info(
                "bundle %s reloaded after file changes (%s): revision %s, was %s",
                loaded.bundle.name,
                changed,
                loaded.bundle.revision[:12],
                was,
            )

    try:
        await BundleWatcher(directory, reload).run()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("bundle watcher stopped; SIGHUP and the admin API still reload")
