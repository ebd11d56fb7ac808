"""Nothing answered is lost: `sync` survives kill -9, `batch` survives a graceful stop."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import SHOP
from tests.support import Server, run_cli, running_server
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions

pytestmark = pytest.mark.slow

BODY = {
    "subject": {"type": "User", "id": "erin"},
    "action": {"name": "payments:refund"},
    "resource": {"type": "Api", "id": "payments.refund"},
    "context": {"mfa": True, "auth_age_seconds": 120, "risk_score": 10},
}


def hammer(
    server: Server, answered: list[str], stop: threading.Event, workers: int = 4
) -> list[threading.Thread]:
    """Clients that keep asking until `stop`, remembering every decision id they were given."""

    def loop() -> None:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            while not stop.is_set():
                try:
                    response = client.post("/access/v1/evaluation", json=BODY)
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    answered.append(response.json()["context"]["decision_id"])

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for thread in threads:
        thread.start()
    return threads


def stored_ids(database_url: str) -> set[str]:
    engine = create_store_engine(database_url)
    try:
        with engine.connect() as connection:
            return {row[0] for row in connection.execute(select(decisions.c.decision_id))}
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("durability", "sig", "appender"),
    [
        ("sync", signal.SIGKILL, "thread"),
        ("sync", signal.SIGKILL, "process"),
        ("batch", signal.SIGTERM, "thread"),
        ("batch", signal.SIGTERM, "process"),
    ],
)
def test_answered_decisions_survive_the_stop(
    tmp_path: Path, database_url: str, durability: str, sig: int, appender: str
) -> None:
    answered: list[str] = []
    stop = threading.Event()
    state = tmp_path / "state"
    with running_server(
        state,
        database_url,
        SHOP,
        policy__watch="false",
        ledger__durability=durability,
        ledger__appender=appender,
    ) as server:
        threads = hammer(server, answered, stop)
        deadline = time.monotonic() + 20
        while len(answered) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.stop(sig)  # mid-traffic: clients are still sending
        stop.set()
        for thread in threads:
            thread.join(10)
        env = server.env
    assert len(answered) >= 300, "the load did not get going"
    missing = set(answered) - stored_ids(database_url)
    assert not missing, (
        f"{len(missing)} answered decisions were lost ({durability}, {sig}, {appender})"
    )
    verify = run_cli("audit", "verify", "--json", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
