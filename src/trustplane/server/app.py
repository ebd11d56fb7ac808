"""The ASGI application: routes, error handling and the lifecycle of a serving node."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.decision.manager import reload_or_log
from trustplane.enforcement.admission import AdmissionWebhook
from trustplane.enforcement.credentials import Authenticator
from trustplane.enforcement.enforcer import HttpEnforcer
from trustplane.enforcement.envoy import EnvoyAuthorization, EnvoyHttp
from trustplane.enforcement.forward_auth import FORWARD_AUTH_METHODS, ForwardAuth
from trustplane.enforcement.native import start_ext_authz
from trustplane.identity.tokens import verifier_from_settings
from trustplane.identity.workload_api import WorkloadApiServer
from trustplane.server.admin import AdminApi, admin_routes
from trustplane.server.admin_gate import AdminGate
from trustplane.server.attestations import AttestationsApi, attestation_routes
from trustplane.server.authzen import AuthZenApi
from trustplane.server.governance_api import GovernanceApi, governance_routes
from trustplane.server.identity import IdentityApi, identity_routes
from trustplane.server.openapi import openapi_document
from trustplane.server.pdp import PolicyDecisionPoint
from trustplane.server.problems import Problem, json_response
from trustplane.server.runtime import Runtime
from trustplane.telemetry.recorder import RecordingError

log = logging.getLogger("trustplane.server")


def create_app(runtime: Runtime, *, manage_runtime: bool = True) -> Starlette:
    """The app for `runtime`. With `manage_runtime`, the app's lifespan starts the runtime
    (bundle, ledger writer, file watcher, SIGHUP reload) and drains it on shutdown."""
    pdp = PolicyDecisionPoint(runtime)
    authzen = AuthZenApi(pdp, runtime.settings.max_body_bytes)
    gate = AdminGate(runtime)  # every admin route goes through it (server/admin_gate.py)
    settings = runtime.settings
    enforcer = HttpEnforcer(pdp, Authenticator.from_settings(settings), runtime.seen)
    forward_auth = ForwardAuth(enforcer)
    envoy_http = EnvoyHttp(enforcer, settings.strip_credential)
    identity = IdentityApi(runtime, verifier_from_settings(settings.issuers))
    admission = AdmissionWebhook(pdp, settings, runtime.attestations)
    attestations = AttestationsApi(runtime, pdp)

    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(request: Request) -> Response:
        active = runtime.bundles.active
        if active is None:
            return json_response({"status": "not ready", "reason": "no active bundle"}, 503)
        if not runtime.feed.healthy:
            reason = "change feed lost: changes made elsewhere may not be seen"
            return json_response({"status": "not ready", "reason": reason}, 503)
        return json_response({"status": "ready", "revision": active.bundle.revision})

    async def metrics(request: Request) -> Response:
        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document())

    routes = [
        Route("/access/v1/evaluation", authzen.evaluation, methods=["POST"]),
        Route("/access/v1/evaluations", authzen.evaluations, methods=["POST"]),
        Route("/.well-known/authzen-configuration", authzen.configuration, methods=["GET"]),
        Route("/v1/forward-auth", forward_auth.handle, methods=list(FORWARD_AUTH_METHODS)),
        Route(EnvoyHttp.PREFIX, envoy_http.handle, methods=list(FORWARD_AUTH_METHODS)),
        Route(
            EnvoyHttp.PREFIX + "/{path:path}",
            envoy_http.handle,
            methods=list(FORWARD_AUTH_METHODS),
        ),
        Route(AdmissionWebhook.PATH, admission.handle, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *admin_routes(AdminApi(runtime), gate),
        *identity_routes(identity, gate),
        *attestation_routes(attestations, gate),
        *governance_routes(GovernanceApi(runtime), gate),
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
        grpc_server = None
        if settings.grpc_enabled:
            service = EnvoyAuthorization(enforcer, settings.strip_credential)
            grpc_server, transport = await start_ext_authz(settings, service)
            log.info(
                "Envoy ext_authz gRPC on %s:%d (%s transport)",
                settings.host,
                grpc_server.port,
                transport,
            )
        workload_api = None  # one process owns the socket: `identity agent` serves it for N
        if settings.workload_socket and runtime.identity is not None and settings.workers == 1:
            workload_api = WorkloadApiServer(runtime.identity, settings.workload_socket)
            await workload_api.start()
        _freeze_startup_heap()
        tasks = [asyncio.create_task(_watch_bundle(runtime))] if runtime.settings.watch else []
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
            if grpc_server is not None:
                await grpc_server.stop()  # answers in flight are recorded before close
            if workload_api is not None:
                await workload_api.stop()
            await run_in_threadpool(runtime.close)

    return Starlette(
        routes=routes,
        exception_handlers={
            Problem: on_problem,
            HTTPException: on_http,
            RecordingError: on_recording,
            Exception: on_error,
        },
        lifespan=lifespan,
    )


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
    from watchfiles import awatch

    try:
        async for _changes in awatch(directory, debounce=300, step=100):
            await _reload(runtime, "file-change")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("bundle watcher stopped; SIGHUP and the admin API still reload")
