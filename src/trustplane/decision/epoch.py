"""The cache epoch: one number that moves whenever a reused answer may have become wrong.

It is the sum of versions every replica on one store agrees on, so an enforcement point behind
a load balancer compares numbers from any replica: the revocation list's (recovery/, moved also
by grant, exception and session revocations), governance's (grants and exceptions approved,
revoked or expired), the newest bundle activation's id, and the trust state's
(trust/epoch.py: device posture and other state a signal reads). Each part only grows, so the
sum does; a replica that has not yet heard of a change answers with a smaller number, which
callers ignore.

Every decision carries it (`cache_epoch`), and `GET /access/v1/epoch?after=N` answers as soon
as it passes N (server/authzen.py): the SDK long-polls it and drops cached answers when it
moves (enforcement/sdk.py). `changed()` is called by whoever refreshed a part (the change feed's
subscribers, a local activation); it wakes the waiting requests on their own event loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping


class CacheEpoch:
    def __init__(self, parts: Mapping[str, Callable[[], int]]) -> None:
        """`parts`: name → a reader of that part's current version (memory only)."""
        self._parts = dict(parts)
        self._readers = tuple(self._parts.values())
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]] = []
        self._closed = False

    def add(self, name: str, read: Callable[[], int]) -> None:
        """Another part (a plane's state that answers rest on); call `changed()` when it moves."""
        self._parts[name] = read
        self._readers = tuple(self._parts.values())

    @property
    def value(self) -> int:
        return sum(max(0, read()) for read in self._readers)

    def parts(self) -> dict[str, int]:
        return {name: max(0, read()) for name, read in self._parts.items()}

    def changed(self) -> None:
        """Wake every waiter whose `after` the epoch has now passed. Any thread."""
        value = self.value
        with self._lock:
            waiting, self._waiters = self._waiters, []
        for loop, future in waiting:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
                loop.call_soon_threadsafe(_settle, future, value)

    def close(self) -> None:
        """The server is shutting down: every long-poll answers now, and later ones at once,
        so open polls do not hold the graceful shutdown."""
        self._closed = True
        self.changed()

    async def wait_past(self, after: int, timeout: float) -> int:
        """The epoch once it exceeds `after`, or the current one after `timeout` seconds (at
        once after `close`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = self.value
            remaining = deadline - loop.time()
            if value > after or remaining <= 0 or self._closed:
                return value
            future: asyncio.Future[int] = loop.create_future()
            with self._lock:
                self._waiters.append((loop, future))
            try:
                if self.value > after or self._closed:  # moved between read and registration
                    return self.value
                await asyncio.wait_for(asyncio.shield(future), remaining)
            except TimeoutError:
                return self.value
            finally:
                with self._lock:
                    if (loop, future) in self._waiters:
                        self._waiters.remove((loop, future))


def _settle(future: asyncio.Future[int], value: int) -> None:
    if not future.done():
        future.set_result(value)
