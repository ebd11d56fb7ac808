"""Sync durability: a decision whose caller was answered 503 is never in the ledger as one a
client received: never committed if it was still queued, marked `undelivered` if its commit was
already under way when the caller gave up."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from sqlalchemy import Engine, select

from tests.conftest import ORIGIN
from tests.telemetry.test_ledger_store import decision, request
from trustplane.config import Durability
from trustplane.store.tables import decisions
from trustplane.telemetry.appender import LocalSink
from trustplane.telemetry.checkpoint import NoteSigner
from trustplane.telemetry.ledger import Ledger, LedgerEntry
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.metrics import Metrics
from trustplane.telemetry.recorder import DecisionRecorder, RecordingError


class SlowStore:
    """The real ledger's sink; a commit waits for `release` once `hold` is set."""

    def __init__(self, ledger: Ledger) -> None:
        self.inner = LocalSink(ledger)
        self.hold = threading.Event()
        self.release = threading.Event()
        self.entered = threading.Event()

    def append(self, entries: Sequence[LedgerEntry], skip_recorded: bool = False) -> int:
        if self.hold.is_set():
            self.entered.set()
            self.release.wait(30)
        return self.inner.append(entries, skip_recorded)

    def checkpoint(self) -> bool:
        return self.inner.checkpoint()

    def close(self) -> None:
        self.inner.close()


def undelivered(engine: Engine) -> dict[str, bool]:
    with engine.connect() as connection:
        rows = connection.execute(select(decisions.c.decision_id, decisions.c.undelivered))
        return {decision_id: bool(flag) for decision_id, flag in rows}


def test_a_decision_answered_503_mid_commit_is_marked_undelivered(
    engine: Engine, signer: NoteSigner
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    store = SlowStore(ledger)
    recorder = DecisionRecorder(
        ledger, Masker([]), Metrics(), durability=Durability.SYNC, sink=store
    )
    recorder.start()
    try:
        kept = decision()
        recorder.record_blocking(request(1), kept)
        store.hold.set()
        late = decision()
        with pytest.raises(RecordingError):
            recorder.record_blocking(request(2), late, timeout=3)  # gives up: a 503
        assert store.entered.is_set(), "its commit was under way"
        store.hold.clear()
        store.release.set()
        after = decision()
        recorder.record_blocking(request(3), after)
    finally:
        recorder.stop()
    flags = undelivered(engine)
    assert flags == {kept.decision_id: False, late.decision_id: True, after.decision_id: False}
