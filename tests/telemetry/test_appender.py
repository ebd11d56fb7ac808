"""The ledger appender process: batches committed by a child process over the same store, the
serving process's tree kept in step, and nothing lost or doubled when the child dies."""

from __future__ import annotations

import base64
import os
import signal

from sqlalchemy import Engine, func, select

from tests.telemetry.test_ledger_store import ORIGIN, decision, entries, request
from trustplane.store.tables import decisions
from trustplane.telemetry.appender import AppenderProcess
from trustplane.telemetry.checkpoint import NoteSigner
from trustplane.telemetry.ledger import Ledger, verify_ledger
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.merkle import verify_inclusion
from trustplane.telemetry.metrics import Metrics
from trustplane.telemetry.recorder import DecisionRecorder


def stored(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(decisions)).scalar_one())


def test_batches_are_committed_by_the_child_and_proofs_work_here(
    engine: Engine, database_url: str, signer: NoteSigner
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    appender = AppenderProcess(ledger, database_url, signer.signer_key())
    try:
        assert appender.append(entries(5)) == 5
        assert appender.append(entries(3, 100)) == 8
        assert appender.checkpoint() is True
        assert appender.checkpoint() is False, "nothing new since the last checkpoint"
    finally:
        appender.close()
    assert stored(engine) == 8 and ledger.size == 8
    latest = ledger.latest_checkpoint()
    assert latest is not None and latest.size == 8
    with engine.connect() as connection:
        decision_id = connection.execute(
            select(decisions.c.decision_id).where(decisions.c.seq == 6)
        ).scalar_one()
    # The serving process's own tree answers proofs for leaves the child committed.
    proof = ledger.inclusion_proof(decision_id)
    assert proof["leaf_index"] == 6 and proof["tree_size"] == 8
    assert verify_inclusion(
        base64.b64decode(proof["leaf_hash"]),
        proof["leaf_index"],
        proof["tree_size"],
        [base64.b64decode(h) for h in proof["inclusion_path"]],
        latest.root_hash,
    )


def test_a_killed_appender_is_replaced_and_a_resent_batch_is_not_doubled(
    engine: Engine, database_url: str, signer: NoteSigner
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    appender = AppenderProcess(ledger, database_url, signer.signer_key())
    try:
        first = entries(4)
        appender.append(first)
        child = appender._process
        assert child is not None
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        # The next batch starts a new child.
        assert appender.append(entries(2, 50)) == 6
        assert appender._process is not None and appender._process.pid != child.pid
        # A batch whose commit was never acknowledged is sent again: what is stored is skipped.
        appender._unsure = True
        assert appender.append([*first, *entries(1, 90)]) == 7
    finally:
        appender.close()
    assert stored(engine) == 7
    report = verify_ledger(engine, signer.verifier())
    assert report.ok and report.records == 7


def test_recorder_through_the_appender_survives_its_death_and_drains(
    engine: Engine, database_url: str, signer: NoteSigner
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    appender = AppenderProcess(ledger, database_url, signer.signer_key())
    metrics = Metrics()
    recorder = DecisionRecorder(
        ledger, Masker([]), metrics, flush_interval=0.01, checkpoint_interval=0.05, sink=appender
    )
    appender.start()
    recorder.start()
    for n in range(20):
        recorder.submit(request(n), decision())
    child = appender._process
    assert child is not None
    os.kill(child.pid, signal.SIGKILL)
    for n in range(20, 40):
        recorder.submit(request(n), decision())
    recorder.stop()
    assert stored(engine) == 40, "every record committed once, across the appender's death"
    assert ledger.size == 40
    latest = ledger.latest_checkpoint()
    assert latest is not None and latest.size == 40, "the final checkpoint covers everything"
    assert verify_ledger(engine, signer.verifier()).ok
