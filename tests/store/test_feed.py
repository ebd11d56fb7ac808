"""The change feed between processes sharing a store: announcements reach other listeners
(NOTIFY on PostgreSQL, polling on SQLite), and a listener that cannot read the store says so."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from tests.support import wait_for
from trustplane.store.database import create_store_engine
from trustplane.store.feed import ChangeFeed, announce
from trustplane.store.tables import change_versions


@pytest.fixture
def other(database_url: str, engine: Engine) -> Iterator[Engine]:
    """A second engine on the same store: another process's connections."""
    other = create_store_engine(database_url)
    yield other
    other.dispose()


def test_an_announcement_reaches_another_listener_once_per_change(
    engine: Engine, other: Engine
) -> None:
    heard: list[str] = []
    lock = threading.Lock()

    def hear(topic: str) -> None:
        with lock:
            heard.append(topic)

    feed = ChangeFeed(other, poll_interval=0.05, safety_interval=5.0)
    feed.subscribe("bundles", hear)
    with engine.begin() as connection:
        announce(connection, "bundles")  # before the listener starts: not announced to it
    feed.start()
    try:
        assert feed.healthy
        with engine.begin() as connection:
            announce(connection, "bundles")
        # On PostgreSQL this arrives by NOTIFY: the safety poll is 5 s, the wait is shorter.
        wait_for(lambda: heard == ["bundles"], timeout=4)
        with engine.begin() as connection:
            announce(connection, "other-topic")  # nobody subscribed: nothing to call
        with engine.begin() as connection:
            announce(connection, "bundles")
        wait_for(lambda: len(heard) == 2, timeout=4)
        assert heard == ["bundles", "bundles"]
    finally:
        feed.stop()


def test_a_change_rolled_back_is_not_announced(engine: Engine, other: Engine) -> None:
    heard: list[str] = []
    feed = ChangeFeed(other, poll_interval=0.05, safety_interval=0.2)
    feed.subscribe("bundles", heard.append)
    feed.start()
    try:
        with pytest.raises(RuntimeError), engine.begin() as connection:
            announce(connection, "bundles")
            raise RuntimeError("the change failed")
        threading.Event().wait(0.6)
        assert heard == []
    finally:
        feed.stop()


def test_a_listener_that_cannot_read_the_store_is_unhealthy_until_it_can(
    engine: Engine, other: Engine
) -> None:
    heard: list[str] = []
    feed = ChangeFeed(other, poll_interval=0.05, safety_interval=0.2)
    feed.subscribe("bundles", heard.append)
    feed.start()
    try:
        assert feed.healthy
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE change_versions"))
        wait_for(lambda: not feed.healthy, timeout=10)
        change_versions.create(engine)
        with engine.begin() as connection:
            announce(connection, "bundles")
        wait_for(lambda: feed.healthy, timeout=10)
        wait_for(lambda: heard == ["bundles"], timeout=10)  # caught up after reconnecting
    finally:
        feed.stop()


def test_a_subscriber_that_fails_keeps_the_node_not_ready_until_it_catches_up(
    engine: Engine, other: Engine
) -> None:
    """A revocation a node cannot load must not leave it ready and serving stale answers: the
    change is retried, and readiness comes back only once it has been applied."""
    attempts: list[int] = []
    failing = threading.Event()
    failing.set()

    def load(topic: str) -> None:
        attempts.append(1)
        if failing.is_set():
            raise RuntimeError("store hiccup")

    feed = ChangeFeed(other, poll_interval=0.05, safety_interval=0.2)
    feed.subscribe("revocations", load)
    feed.start()
    try:
        with engine.begin() as connection:
            announce(connection, "revocations")
        wait_for(lambda: not feed.healthy, timeout=4)
        wait_for(lambda: len(attempts) >= 2, timeout=4)  # retried, not dropped
        failing.clear()
        wait_for(lambda: feed.healthy, timeout=4)
        settled = len(attempts)
        with engine.begin() as connection:
            announce(connection, "other-topic")
        wait_for(lambda: feed.healthy, timeout=1)
        assert len(attempts) == settled, "once applied, the change is not delivered again"
    finally:
        feed.stop()
