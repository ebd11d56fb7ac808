"""uvicorn's server, taught to start the app's other listeners once HTTP listens.

uvicorn runs the ASGI lifespan before it listens, so a gRPC server started there takes calls
while the HTTP socket is still closed, and keeps taking them if listening then fails. Here the
app's `state.listeners` (ext_authz gRPC, the Workload API; see server/app.py) start only after
uvicorn has started the app and listens. A failure to start is one line in `failed_to_start`,
and a worker's exit status is the one uvicorn's supervisor stops on (instead of restarting a
worker that would fail the same way).

Kept apart from serve.py and light to import: uvicorn unpickles `WorkerProcess` in each new
worker before that worker answers its supervisor's health check, so importing the app here
would delay the answer past the check's timeout and get the worker killed.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any, Protocol

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

log = logging.getLogger("trustplane.server")


class StartsListeners(Protocol):
    async def start(self) -> None: ...

    def draining(self) -> None: ...


class ListeningServer(uvicorn.Server):
    failed_to_start: str | None = None

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        super().run(sockets)
        if self.failed_to_start is not None and self.config.workers > 1:
            sys.exit(STARTUP_FAILURE)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except OSError as exc:  # listen() lost the port to a server that started alongside
            self._failed(f"cannot listen on {self.config.host}:{self.config.port}: {exc}")
            await self.lifespan.shutdown()
            return
        if self.should_exit or not self.started:
            return
        try:
            await _listeners(self.config.loaded_app).start()
        except Exception as exc:  # serve() then shuts down what started, listeners included
            self._failed(f"ext_authz gRPC or the Workload API could not start: {exc}")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Long-polls (GET /access/v1/epoch) answer first: uvicorn waits for open requests
        before it shuts the app down, and would otherwise wait out their hold."""
        try:
            _listeners(self.config.loaded_app).draining()
        except Exception:  # an app without listeners (never create_app's): nothing held
            log.debug("no listeners to drain", exc_info=True)
        await super().shutdown(sockets)

    def _failed(self, message: str) -> None:
        log.error("stopping: %s", message)
        self.failed_to_start = message
        self.should_exit = True


def _listeners(app: Any) -> StartsListeners:
    """The listeners of the app uvicorn loaded (beneath its proxy-header middleware)."""
    for _ in range(8):
        listeners = getattr(getattr(app, "state", None), "listeners", None)
        if listeners is not None:
            return listeners  # type: ignore[no-any-return]
        app = getattr(app, "app", None)
    raise TypeError("the served app has no state.listeners (made by server.app.create_app)")


class WorkerProcess(multiprocess.Process):
    """A worker process whose server is `ListeningServer`."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = ListeningServer(config=self.config)
        return self._server


def use_listening_workers() -> None:
    """Make uvicorn's supervisor start `WorkerProcess`es: it creates workers by the module's
    name `Process`, in three places, with no parameter to pass another class."""
    multiprocess.Process = WorkerProcess  # type: ignore[misc]
