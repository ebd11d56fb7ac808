"""The trust state's epoch: the hook by which a change in what signals read ends cached answers.

Answers reused by the decision cache and by enforcement points rest on the signals computed
when they were given. When state a signal reads changes in a way that matters (a device
turning non-compliant, say), its owner advances this epoch, and the cache epoch that every
decision carries moves with it (decision/epoch.py): the SDK drops what it cached.

A source shared by replicas advances with its change-feed topic's version
(`advance("devices", version)`), so every replica computes the same epoch; a state held by one
process only may `bump(name)`. Each source only moves forward.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class TrustEpoch:
    def __init__(self) -> None:
        self._sources: dict[str, int] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self.value = 0

    def advance(self, source: str, version: int) -> None:
        """`source` is now at `version` (a store topic's version); older news is ignored."""
        with self._lock:
            if version <= self._sources.get(source, 0):
                return
            self._sources[source] = version
            self.value = sum(self._sources.values())
        self._notify()

    def bump(self, source: str) -> None:
        """`source` changed (state one process holds alone)."""
        with self._lock:
            self._sources[source] = self._sources.get(source, 0) + 1
            self.value = sum(self._sources.values())
        self._notify()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
