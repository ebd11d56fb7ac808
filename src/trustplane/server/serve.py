"""Run a serving node under uvicorn: one process, or several workers behind one socket.

With `workers` > 1, uvicorn's supervisor spawns fresh interpreters that rebuild the app from
the settings passed in the environment; it restarts a worker that dies and, on SIGHUP, replaces
them one at a time. The workers share the store: the ledger serialises their appends, and each
follows bundle activations made by the others (see BundleManager.follow).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.supervisors import Multiprocess

from trustplane.config import Settings
from trustplane.server.app import create_app
from trustplane.server.runtime import Runtime
from trustplane.store.database import create_store_engine, migrate
from trustplane.telemetry.metrics import MULTIPROCESS_ENV, multiprocess_dir

WORKER_SETTINGS_ENV = "_TRUSTPLANE_WORKER_SETTINGS"  # outside TRUSTPLANE_*: not a setting


def serve(settings: Settings) -> None:
    _configure_logging(settings)
    if settings.workers == 1:
        config = _uvicorn_config(settings, create_app(Runtime(settings)))
        uvicorn.Server(config).run()
        return
    engine = create_store_engine(settings.effective_database_url)
    try:
        migrate(engine)  # once, before the workers open the store side by side
    finally:
        engine.dispose()
    metrics_dir = multiprocess_dir(settings.state_dir)
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters start at zero, like one process
    metrics_dir.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROCESS_ENV] = str(metrics_dir)
    os.environ[WORKER_SETTINGS_ENV] = settings.model_dump_json()
    config = _uvicorn_config(settings, "trustplane.server.serve:worker_app", factory=True)
    Multiprocess(config, sockets=[config.bind_socket()]).run()


def worker_app() -> Starlette:
    """The app of one worker process (uvicorn calls this in each spawned interpreter)."""
    settings = Settings.model_validate_json(os.environ[WORKER_SETTINGS_ENV])
    _configure_logging(settings)
    return create_app(Runtime(settings))


def _uvicorn_config(settings: Settings, app: Any, factory: bool = False) -> uvicorn.Config:
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
    )


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
