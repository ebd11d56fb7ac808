"""Run a serving node under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from trustplane.config import Settings
from trustplane.server.app import create_app
from trustplane.server.runtime import Runtime


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    runtime = Runtime(settings)
    app = create_app(runtime)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    uvicorn.Server(config).run()
