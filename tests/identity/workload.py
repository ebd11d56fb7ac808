"""A Workload API server on its own event loop in a thread, for tests and the benchmark."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from trustplane.identity.service import IdentityService
from trustplane.identity.workload_api import WorkloadApiServer


class WorkloadThread:
    def __init__(self, service: IdentityService, socket_path: Path) -> None:
        self.server = WorkloadApiServer(service, socket_path)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> WorkloadThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Workload API server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
