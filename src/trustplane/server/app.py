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
from trustplane.enforcement.devices import DeviceFinder
from trustplane.enforcement.enforcer import HttpEnforcer
from trustplane.enforcement.envoy import EnvoyAuthorization, EnvoyHttp
from trustplane.enforcement.forward_auth import FORWARD_AUTH_METHODS, ForwardAuth
from trustplane.enforcement.native import ExtAuthzServer, start_ext_authz
from trustplane.enforcement.pep import PEP_HEADER
from trustplane.enforcement.sdk import EPOCH_PATH
from trustplane.identity.tokens import verifier_from_settings
from trustplane.identity.workload_api import WorkloadApiServer
from trustplane.outcomes.universe import KnownUniverse
from trustplane.problems import Problem, json_response
from trustplane.server import traced
from trustplane.server.admin import admin_routes
from trustplane.server.admin_gate import AdminGate
from trustplane.server.authzen import AuthZenApi, EpochApi
from trustplane.server.identity import IdentityApi, identity_routes
from trustplane.server.image_attestations import AttestationsApi, attestation_routes
from trustplane.server.openapi import openapi_document
from trustplane.server.pep_gate import Handler, PepGate
from trustplane.server.runtime import Runtime
from trustplane.telemetry.recorder import RecordingError
from trustplane.web.app import UI_PREFIX, problem_page, ui_routes

log = logging.getLogger("trustplane.server")


def create_app(runtime: Runtime, *, manage_runtime: bool = True) -> Starlette:
    """The app for `runtime`. With `manage_runtime`, the app's lifespan starts the runtime
    (bundle, ledger writer, file watcher, SIGHUP reload) and drains it on shutdown.
    `app.state.listeners` holds what the serving layer starts once HTTP listens."""
    pdp = runtime.decision_point()
    universe = KnownUniverse(runtime.engine, pdp.active_bundle)
    authzen = AuthZenApi(pdp, runtime.settings.server.max_body_bytes, universe)
    admin_gate = AdminGate(runtime)  # every admin route goes through it (server/admin_gate.py)
    settings = runtime.settings
    skew = runtime.metrics.observe_issuer_clock_skew
    proxies = ProxyTrust(settings.server.trusted_proxies)
    enforcer = HttpEnforcer(
        pdp,
        Authenticator.from_settings(settings.pep, proxies, skew),
        runtime.seen,
        DeviceFinder(proxies, settings.trust.device_header, settings.trust.device_uri_prefix),
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
    epoch_api = EpochApi(runtime.cache_epoch, settings.policy.epoch_wait_seconds)

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
        # Read when scraped: the JWKS caches know their health, nothing pushes it.
        runtime.metrics.observe_jwks(enforcer.authenticator.jwks_status())
        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document())

    tracing = runtime.tracing

    def decision_route(
        path: str, handler: Handler, adapter: str, methods: list[str], header: str = "authorization"
    ) -> Route:
        """A decision endpoint behind the PEP gate, in its trace when tracing is on."""
        if tracing is None:
            return Route(path, pep_gate.guard(handler, header), methods=methods)
        inner = pep_gate.guard(traced.adapter(tracing, handler, adapter), header)
        return Route(path, traced.root(tracing, inner, path, adapter), methods=methods)

    evaluation_app: ASGIApp = pep_gate.guard_app(authzen.evaluation_app)
    if tracing is not None:
        evaluation_app = traced.RootApp(
            tracing,
            pep_gate.guard_app(traced.AdapterApp(tracing, authzen.evaluation_app, "authzen")),
            "/access/v1/evaluation",
            "authzen",
        )
    envoy_methods = list(FORWARD_AUTH_METHODS)
    routes = [
        Route("/access/v1/evaluation", evaluation_app, methods=["POST"]),
        decision_route("/access/v1/evaluations", authzen.evaluations, "authzen", ["POST"]),
        *(
            decision_route(f"/access/v1/search/{kind}", handler, "authzen", ["POST"])
            for kind, handler in (
                ("subject", authzen.search_subject),
                ("resource", authzen.search_resource),
                ("action", authzen.search_action),
            )
        ),
        Route("/.well-known/authzen-configuration", authzen.configuration, methods=["GET"]),
        Route(EPOCH_PATH, pep_gate.guard(epoch_api.handle, timed=False), methods=["GET"]),
        # Here `Authorization` is the end user's (the held request's): the PEP uses its own.
        decision_route(
            "/v1/forward-auth", forward_auth.handle, "forward_auth", envoy_methods, PEP_HEADER
        ),
        decision_route(
            EnvoyHttp.PREFIX, envoy_http.handle, "envoy_http", envoy_methods, PEP_HEADER
        ),
        decision_route(
            EnvoyHttp.PREFIX + "/{path:path}",
            envoy_http.handle,
            "envoy_http",
            envoy_methods,
            PEP_HEADER,
        ),
        decision_route(AdmissionWebhook.PATH, admission.handle, "admission", ["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *admin_routes(runtime, admin_gate),
        *identity_routes(identity),
        *attestation_routes(attestations, admin_gate),
        *(
            ui_routes(runtime, admin_gate, enforcer.authenticator.jwks_status)
            if settings.ui.enabled
            else []
        ),
    ]

    def for_people(request: Request) -> bool:
        path = request.url.path
        return settings.ui.enabled and (path == UI_PREFIX or path.startswith(UI_PREFIX + "/"))

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        if for_people(request):  # the pages answer in HTML, and a 401 signs in again
            return problem_page(request, exc)
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
        problem = Problem(exc.status_code, slug, detail, detail, headers=headers)
        if for_people(request):
            return problem_page(request, problem)
        return problem.response(request.url.path)

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
    app.direct[("POST", "/access/v1/evaluation")] = evaluation_app
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

    def draining(self) -> None:
        """The server is shutting down: epoch long-polls answer now (decision/epoch.py)."""
        self._runtime.cache_epoch.close()

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
