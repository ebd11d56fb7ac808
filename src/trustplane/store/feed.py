"""The change feed: how every serving process learns that shared state changed.

A change is announced by bumping its topic's version in the same transaction as the change
itself (`announce`). Each process runs one `ChangeFeed` listener thread that reads the versions
and calls the topic's subscribers when one moved; subscribers then re-read the authoritative
state (the newest bundle activation, say), so a missed or merged wake-up never loses a change.

On PostgreSQL the announcing transaction also sends `NOTIFY trustplane_changes`, delivered at
commit, and the listener holds a `LISTEN` connection: replicas hear of a change within
milliseconds, with a slow poll behind it in case a notification is lost. On SQLite (one machine)
the listener polls the tiny versions table. A listener that cannot read the store marks itself
unhealthy, so the node reports not ready rather than serving stale state, and catches up by
comparing versions once it reconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg
from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from trustplane.retry import Backoff, Retry
from trustplane.store.database import is_postgres
from trustplane.store.tables import change_versions

log = logging.getLogger("trustplane.feed")

CHANNEL = "trustplane_changes"
_BACKOFF = Backoff(first=0.1, cap=2.0)  # reconnecting after the store was lost
Subscriber = Callable[[str], None]


def announce(connection: Connection, topic: str) -> None:
    """Bump `topic`'s version inside the caller's transaction (and NOTIFY on PostgreSQL)."""
    bumped = connection.execute(
        update(change_versions)
        .where(change_versions.c.topic == topic)
        .values(version=change_versions.c.version + 1)
    ).rowcount
    if not bumped:
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        connection.execute(
            dialect.insert(change_versions)
            .values(topic=topic, version=1)
            .on_conflict_do_update(
                index_elements=["topic"], set_={"version": change_versions.c.version + 1}
            )
        )
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_notify(:channel, :topic)"), {"channel": CHANNEL, "topic": topic}
        )


class ChangeFeed:
    def __init__(
        self,
        engine: Engine,
        *,
        poll_interval: float = 0.1,
        safety_interval: float = 1.0,
        on_health: Callable[[bool, float], None] | None = None,
    ) -> None:
        """`poll_interval`: how often SQLite is polled; `safety_interval`: how often
        PostgreSQL is read even without a notification; `on_health(healthy, lag_seconds)` is
        told after every read and every failure (the metrics)."""
        self._engine = engine
        self._poll = poll_interval
        self._safety = safety_interval
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_read = 0.0
        self._failing = False
        self._on_health = on_health

    def subscribe(self, topic: str, callback: Subscriber) -> None:
        self._subscribers.setdefault(topic, []).append(callback)

    def start(self) -> None:
        """Read the current versions (so only later changes are announced), then listen."""
        self._seen = self._versions()
        self._last_read = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="change-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    @property
    def healthy(self) -> bool:
        """False once the store could not be read for a few intervals."""
        limit = 3 * max(self._safety if is_postgres(self._engine) else self._poll, 0.5)
        return not self._failing and time.monotonic() - self._last_read < limit

    @property
    def lag_seconds(self) -> float:
        """Seconds since the store was last read successfully."""
        return time.monotonic() - self._last_read

    def _report(self) -> None:
        if self._on_health is not None:
            self._on_health(self.healthy, self.lag_seconds)

    # -- listening ----------------------------------------------------------------------------

    def _run(self) -> None:
        retry = Retry(
            _BACKOFF,
            retry_on=(SQLAlchemyError, psycopg.Error, OSError),
            on_failure=self._lost,
            sleep=self._stop.wait,
        )
        retry.call_until(self._follow, give_up=self._stop.is_set)

    def _follow(self) -> None:
        """Follow the store until stopped."""
        while not self._stop.is_set():
            if is_postgres(self._engine):
                self._listen_postgres()
            else:
                self._poll_loop()

    def _lost(self, exc: BaseException, failures: int) -> None:
        if not self._failing:
            log.error("change feed lost the store (%s); not ready until it is back", exc)
        self._failing = True
        self._report()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll):
            self._check()

    def _listen_postgres(self) -> None:
        url = self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f"LISTEN {CHANNEL}")
            self._check()  # changes made while we were not listening
            while not self._stop.is_set():
                # Wake on the first notification, or after the safety interval without one.
                for _notification in connection.notifies(timeout=self._safety, stop_after=1):
                    pass
                self._check()

    def _check(self) -> None:
        versions = self._versions()
        self._last_read = time.monotonic()
        was_failing = self._failing
        failed = False
        for topic, version in versions.items():
            if self._seen.get(topic) == version:
                continue
            try:
                for callback in self._subscribers.get(topic, []):
                    callback(topic)
            except Exception:
                # Not marked seen: retried on the next read; until then the node is not ready
                # (a revocation it cannot load must not leave it serving stale answers).
                log.exception("change feed subscriber for %s failed; will retry", topic)
                failed = True
                continue
            self._seen[topic] = version
        self._failing = failed
        self._report()
        if was_failing and not failed:
            log.info("change feed caught up")

    def _versions(self) -> dict[str, int]:
        with self._engine.connect() as connection:
            rows = connection.execute(select(change_versions.c.topic, change_versions.c.version))
            return {topic: int(version) for topic, version in rows}
