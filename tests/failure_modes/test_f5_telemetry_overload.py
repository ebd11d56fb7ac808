"""F5 telemetry overload: the store stops taking records while decisions keep coming.

Memory stays bounded (the in-memory queue never grows past its bound: batch records overflow to
the fsync'd disk spool), the degraded ledger shows in readiness and metrics, and nothing
answered is lost: the spool is replayed in order once the store takes records again, and at the
next start after a kill -9.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, delete, insert, select

from tests.conftest import ORIGIN, SHOP
from tests.support import Server, run_cli, running_server, wait_for
from tests.telemetry.test_ledger_store import decision, request
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions, ledger_lock
from trustplane.telemetry.appender import LocalSink
from trustplane.telemetry.checkpoint import NoteSigner
from trustplane.telemetry.ledger import Ledger, LedgerEntry, verify_ledger
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.metrics import Metrics
from trustplane.telemetry.recorder import DecisionRecorder
from trustplane.telemetry.spool import Spool

QUEUE_MAX = 100


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


class SwitchableStore:
    """The real ledger's sink, with a switch that makes the store refuse every commit."""

    def __init__(self, ledger: Ledger) -> None:
        self.inner = LocalSink(ledger)
        self.down = threading.Event()

    def append(self, entries: Sequence[LedgerEntry], skip_recorded: bool = False) -> int:
        if self.down.is_set():
            raise ConnectionRefusedError("store unavailable (test outage)")
        return self.inner.append(entries, skip_recorded)

    def checkpoint(self) -> bool:
        if self.down.is_set():
            raise ConnectionRefusedError("store unavailable (test outage)")
        return self.inner.checkpoint()

    def close(self) -> None:
        self.inner.close()


def stored_ids(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        query = select(decisions.c.decision_id).order_by(decisions.c.seq)
        return list(connection.execute(query).scalars())


def test_an_outage_spools_with_bounded_memory_and_loses_nothing(
    engine: Engine, signer: NoteSigner, tmp_path: Path
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    store = SwitchableStore(ledger)
    metrics = Metrics()
    recorder = DecisionRecorder(
        ledger,
        Masker([]),
        metrics,
        flush_interval=0.01,
        sink=store,
        queue_max=QUEUE_MAX,
        spool=Spool(tmp_path / "spool", 64 << 20),
    )
    recorder.start()
    store.down.set()
    threads, per_thread = 6, 300
    answered: list[list[str]] = [[] for _ in range(threads)]
    most_pending = [0]

    def client(index: int) -> None:
        for n in range(per_thread):
            d = decision()
            recorder.record_blocking(request(n), d)
            answered[index].append(d.decision_id)
            most_pending[0] = max(most_pending[0], recorder.pending)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    total = threads * per_thread
    assert sum(len(a) for a in answered) == total
    # Bounded: the queue never held more than its bound plus the callers waiting on the disk.
    assert most_pending[0] <= QUEUE_MAX + threads, most_pending[0]
    assert metrics.ledger_degraded._value.get() == 1
    assert metrics.ledger_spooled._value.get() > 0
    reason = recorder.health()
    assert reason is not None and "degraded" in reason and "spooled" in reason, reason
    assert stored_ids(engine) == []

    store.down.clear()  # the store is back: the spool is replayed
    wait_for(lambda: ledger.size == total, timeout=60)
    wait_for(lambda: recorder.health() is None, timeout=10)
    assert metrics.ledger_degraded._value.get() == 0
    recorder.stop()
    stored = stored_ids(engine)
    assert sorted(stored) == sorted(i for a in answered for i in a), "nothing answered is lost"
    position = {decision_id: seq for seq, decision_id in enumerate(stored)}
    for ids in answered:  # in order: each client's decisions in the order it was answered
        assert [position[i] for i in ids] == sorted(position[i] for i in ids)
    assert verify_ledger(engine, signer.verifier()).ok


class HeldStore(SwitchableStore):
    """The real ledger's sink, whose first commit waits until the test lets it go."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.started = threading.Event()
        self.release = threading.Event()

    def append(self, entries: Sequence[LedgerEntry], skip_recorded: bool = False) -> int:
        if not self.started.is_set():
            self.started.set()
            assert self.release.wait(60), "the test never released the first commit"
        return super().append(entries, skip_recorded)


def test_the_queue_overflowing_during_a_commit_is_spooled_and_replayed(
    engine: Engine, signer: NoteSigner, tmp_path: Path
) -> None:
    """A commit is under way with more queued than one batch when the queue overflows: the
    spooler takes what was queued, and the writer, finding nothing left of what it meant to
    commit, goes on to replay the spool. (It used to wait for the records it had counted,
    spinning on an empty queue with the GIL: a core burnt, the server starved and the spool
    never replayed, exactly when the store was already behind.)"""
    ledger = Ledger(engine, signer, ORIGIN)
    store = HeldStore(ledger)
    recorder = DecisionRecorder(
        ledger,
        Masker([]),
        Metrics(),
        flush_interval=0.01,
        sink=store,
        queue_max=6500,
        spool=Spool(tmp_path / "spool", 64 << 20),
    )
    submitted: list[str] = []

    def submit(count: int) -> None:
        for n in range(count):
            d = decision()
            recorder.submit(request(n), d)
            submitted.append(d.decision_id)

    submit(6000)  # more than one batch (5,000) queued when the writer starts
    recorder.start()
    assert store.started.wait(30), "the writer began its first commit"
    submit(6000)  # past queue_max while it commits: spooling, the spooler drains the queue
    wait_for(lambda: recorder.pending == 0, timeout=30)
    store.release.set()
    wait_for(lambda: ledger.size == len(submitted), timeout=60)
    wait_for(lambda: recorder.health() is None, timeout=10)
    recorder.stop()
    assert sorted(stored_ids(engine)) == sorted(submitted), "nothing queued is lost"
    assert verify_ledger(engine, signer.verifier()).ok


# -- a real server: kill -9 during the outage, then restart -----------------------------------

BODY = {
    "subject": {"type": "User", "id": "erin"},
    "action": {"name": "payments:refund"},
    "resource": {"type": "Api", "id": "payments.refund"},
    "context": {"mfa": True, "auth_age_seconds": 120, "risk_score": 10},
}


def gauges(server: Server) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(server.client.get("/metrics").text):
        for sample in family.samples:
            values[sample.name] = sample.value
    return values


def set_store_refusing(database_url: str, refusing: bool) -> None:
    """An outage every backend can stage: without its `ledger_lock` row the store refuses
    every ledger commit (not a data error: nothing is quarantined); putting it back ends it."""
    engine = create_store_engine(database_url)
    try:
        with engine.begin() as connection:
            if refusing:
                connection.execute(delete(ledger_lock))
            else:
                connection.execute(insert(ledger_lock).values(id=1, appends=0))
    finally:
        engine.dispose()


def ask(server: Server, answered: list[str], count: int) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(count):
            response = client.post("/access/v1/evaluation", json=BODY)
            assert response.status_code == 200, response.text
            answered.append(response.json()["context"]["decision_id"])


@pytest.mark.slow
def test_kill_9_during_an_outage_loses_nothing_answered(tmp_path: Path, database_url: str) -> None:
    state = tmp_path / "state"
    settings: dict[str, Any] = {"policy__watch": "false", "ledger__queue_max": QUEUE_MAX}
    answered: list[str] = []
    with running_server(state, database_url, SHOP, **settings) as server:
        ask(server, answered, 20)
        set_store_refusing(database_url, True)
        ask(server, answered, 150)  # more than the queue holds
        wait_for(lambda: gauges(server).get("trustplane_ledger_degraded") == 1, timeout=20)
        wait_for(lambda: gauges(server).get("trustplane_ledger_pending") == 0, timeout=20)
        ready = server.client.get("/readyz")
        assert ready.status_code == 503 and "degraded" in ready.json()["reason"], ready.text
        assert gauges(server)["trustplane_ledger_spooled"] > 0
        # Clients keep asking while the process is killed: every answer given was spooled.
        stop = threading.Event()
        late: list[str] = []

        def keep_asking() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while not stop.is_set():
                    try:
                        response = client.post("/access/v1/evaluation", json=BODY)
                    except httpx.HTTPError:
                        return
                    if response.status_code == 200:
                        late.append(response.json()["context"]["decision_id"])

        threads = [threading.Thread(target=keep_asking) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(late) >= 100, timeout=30)
        server.stop(signal.SIGKILL)
        stop.set()
        for thread in threads:
            thread.join(10)
    answered += late
    set_store_refusing(database_url, False)
    with running_server(state, database_url, SHOP, **settings) as server:
        # Ready again only once the spool is replayed.
        wait_for(lambda: server.client.get("/readyz").status_code == 200, timeout=30)
        engine = create_store_engine(database_url)
        try:
            missing = set(answered) - set(stored_ids(engine))
        finally:
            engine.dispose()
        assert not missing, f"{len(missing)} of {len(answered)} answered decisions were lost"
        env = server.env
    verify = run_cli("audit", "verify", "--json", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
