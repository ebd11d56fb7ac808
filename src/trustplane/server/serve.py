"""Run a serving node under uvicorn: one process, or several workers behind one socket.

With `workers` > 1, uvicorn's supervisor spawns fresh interpreters that rebuild the app from
the settings passed in the environment, and restarts a worker that dies. The supervisor is the
bundle authority: it activates the directory's bundle before the workers start and again on
SIGHUP, and the workers serve the store's newest activation and follow every later one (see
BundleManager.follow), so a restarted worker never undoes a rollback. The workers share the
store: the ledger serialises their appends.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.supervisors import Multiprocess

from trustplane.config import Settings
from trustplane.decision.manager import BundleManager, reload_or_log
from trustplane.enforcement.pep import check_listen_policy
from trustplane.server.app import create_app
from trustplane.server.pep_gate import PepClientTrust, TlsPeerProtocol, client_ca_file
from trustplane.server.runtime import Runtime, load_options
from trustplane.server.tls import serving_certificate
from trustplane.store.bundles import BundleStore
from trustplane.store.database import create_store_engine, migrate
from trustplane.telemetry.metrics import MULTIPROCESS_ENV, Metrics, multiprocess_dir

WORKER_SETTINGS_ENV = "_TRUSTPLANE_WORKER_SETTINGS"  # outside TRUSTPLANE_*: not a setting


def serve(settings: Settings) -> None:
    check_listen_policy(settings)
    _configure_logging(settings)
    if settings.workers == 1:
        config = _uvicorn_config(settings, create_app(Runtime(settings)))
        uvicorn.Server(config).run()
        return
    authority = _BundleAuthority(settings)  # migrates the store and activates the bundle
    metrics_dir = multiprocess_dir(settings.state_dir)
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters start at zero, like one process
    metrics_dir.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROCESS_ENV] = str(metrics_dir)
    os.environ[WORKER_SETTINGS_ENV] = _worker_settings(settings)
    config = _uvicorn_config(settings, "trustplane.server.serve:worker_app", factory=True)
    try:
        _Supervisor(config, sockets=[config.bind_socket()], on_hup=authority.reload).run()
    finally:
        authority.close()


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, with SIGHUP reloading the bundle instead of restarting workers."""

    def __init__(self, config: uvicorn.Config, sockets: list[Any], on_hup: Any) -> None:
        super().__init__(config, sockets)
        self._on_hup = on_hup

    def handle_hup(self) -> None:
        self._on_hup("sighup")


class _BundleAuthority:
    """The supervisor's view of the store: activates the directory's bundle for the workers."""

    def __init__(self, settings: Settings) -> None:
        self._engine = create_store_engine(settings.effective_database_url)
        migrate(self._engine)  # once, before the workers open the store side by side
        self._bundles = BundleManager(
            BundleStore(self._engine),
            load_options(settings),
            Metrics(),
            bundle_dir=settings.bundle_dir,
        )
        self._bundles.start()

    def reload(self, reason: str) -> None:
        reload_or_log(self._bundles, reason)

    def close(self) -> None:
        self._engine.dispose()


def _worker_settings(settings: Settings) -> str:
    """The settings as JSON for the workers. Secret values dump masked ("**********"), so the
    KEK is written out as itself: a worker given the mask could not open the trust domain's
    keys (it came from this process's environment or config file, which the workers see too)."""
    values = json.loads(settings.model_dump_json())
    if settings.identity_kek is not None:
        values["identity_kek"] = settings.identity_kek.get_secret_value()
    return json.dumps(values)


def worker_app() -> Starlette:
    """The app of one worker process (uvicorn calls this in each spawned interpreter)."""
    settings = Settings.model_validate_json(os.environ[WORKER_SETTINGS_ENV])
    _configure_logging(settings)
    return create_app(Runtime(settings))


def _uvicorn_config(settings: Settings, app: Any, factory: bool = False) -> uvicorn.Config:
    tls = serving_certificate(settings)
    # PEPs may authenticate with a client certificate of the trust domain (server/pep_gate.py).
    client_ca = client_ca_file(settings) if tls else None
    context_factory = tls.context_factory if tls else None
    if client_ca is not None:
        context_factory = PepClientTrust(context_factory)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        server_header=False,
        factory=factory,
        workers=settings.workers,
        ssl_certfile=tls.cert_file if tls else None,
        ssl_keyfile=tls.key_file if tls else None,
        ssl_context_factory=context_factory,
        ssl_cert_reqs=ssl.CERT_OPTIONAL if client_ca else ssl.CERT_NONE,
        ssl_ca_certs=str(client_ca) if client_ca else None,
        http=TlsPeerProtocol if client_ca else "auto",
    )


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
