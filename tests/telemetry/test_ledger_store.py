"""The ledger on a real store (SQLite and PostgreSQL): appends, checkpoints, proofs, tamper
detection, concurrent appenders and the recorder's retry."""

from __future__ import annotations

import base64
import threading
import time

import pytest
from sqlalchemy import Engine, delete, select, update

from tests.conftest import ORIGIN
from trustplane.config import Durability
from trustplane.model import AccessRequest, Decision, Effect, EntityRef, new_decision_id
from trustplane.store.database import create_store_engine
from trustplane.store.tables import checkpoints, decisions
from trustplane.telemetry.checkpoint import NoteSigner, open_checkpoint
from trustplane.telemetry.ledger import (
    Ledger,
    LedgerError,
    decision_entry,
    verify_ledger,
)
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.merkle import leaf_hash, verify_consistency, verify_inclusion
from trustplane.telemetry.metrics import Metrics
from trustplane.telemetry.recorder import DecisionRecorder


def request(n: int = 0) -> AccessRequest:
    return AccessRequest(
        EntityRef("User", f"u{n}"),
        EntityRef("Action", "read"),
        EntityRef("Doc", "d"),
        {"n": n, "token": "secret"},
    )


def decision(effect: Effect = Effect.ALLOW) -> Decision:
    return Decision(new_decision_id(), effect, (), effect, (), (), (), "rev", 5, time.time())


def entries(count: int, start: int = 0) -> list:  # type: ignore[type-arg]
    masker = Masker(["/context/token"])
    return [decision_entry(request(start + i), decision(), masker) for i in range(count)]


def test_append_checkpoint_and_proofs(engine: Engine, signer: NoteSigner) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    batch = entries(37)
    assert ledger.append(batch) == 37
    first = ledger.checkpoint()
    assert first is not None and first.size == 37
    assert ledger.checkpoint() is None, "no new checkpoint without new records"
    opened = open_checkpoint(first.note, signer.verifier())
    assert opened.origin == ORIGIN and opened.root_hash == first.root_hash

    proof = ledger.inclusion_proof(batch[11].decision_id)
    assert proof["leaf_index"] == 11
    path = [base64.b64decode(h) for h in proof["inclusion_path"]]
    assert verify_inclusion(batch[11].leaf_hash, 11, 37, path, first.root_hash)
    assert batch[11].leaf_hash == leaf_hash(batch[11].record)

    ledger.append(entries(20, 100))
    second = ledger.checkpoint()
    assert second is not None
    consistency = ledger.consistency_proof(37, second.size)
    assert verify_consistency(
        37,
        57,
        first.root_hash,
        second.root_hash,
        [base64.b64decode(h) for h in consistency["consistency_path"]],
    )
    with pytest.raises(LedgerError, match="outside"):
        ledger.consistency_proof(1, 10_000)
    with pytest.raises(LedgerError, match="not in the ledger"):
        ledger.inclusion_proof("no-such-decision")


def test_reopened_ledger_continues_the_same_tree(engine: Engine, signer: NoteSigner) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    ledger.append(entries(10))
    root = ledger.checkpoint()
    reopened = Ledger(engine, signer, ORIGIN)
    assert reopened.size == 10
    assert root is not None and reopened.latest_checkpoint() == root
    reopened.append(entries(5, 10))
    assert verify_ledger(engine, signer.verifier()).ok


def test_two_appenders_never_fork_the_tree(engine: Engine, signer: NoteSigner) -> None:
    """Replicas sharing one store: an appender that is behind catches up before inserting."""
    a = Ledger(engine, signer, ORIGIN)
    b = Ledger(engine, signer, ORIGIN)
    a.append(entries(3))
    b.append(entries(4, 10))  # b is behind: it loads a's leaves, then appends after them
    a.append(entries(2, 20))
    assert a.size == 9 and b.size == 7
    b.checkpoint()
    report = verify_ledger(engine, signer.verifier())
    assert report.ok and report.records == 9


def test_concurrent_appenders_on_their_own_connections_share_one_tree(
    database_url: str, engine: Engine, signer: NoteSigner
) -> None:
    """Serving workers each hold a Ledger over their own connections and append at once."""
    errors: list[BaseException] = []
    engines = [create_store_engine(database_url) for _ in range(3)]
    ledgers = [Ledger(e, signer, ORIGIN) for e in engines]

    def work(ledger: Ledger, base: int) -> None:
        try:
            for n in range(15):
                ledger.append(entries(4, base + n * 4))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(ledger, i * 1000)) for i, ledger in enumerate(ledgers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for other in engines:
        other.dispose()
    assert errors == []
    with engine.connect() as connection:
        seqs = [row[0] for row in connection.execute(select(decisions.c.seq).order_by("seq"))]
    assert seqs == list(range(180)), "no gaps, no duplicates"
    fresh = Ledger(engine, signer, ORIGIN)
    assert fresh.checkpoint() is not None
    report = verify_ledger(engine, signer.verifier())
    assert report.ok and report.records == 180


def test_verify_names_an_altered_record(engine: Engine, signer: NoteSigner) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    batch = entries(25)
    ledger.append(batch)
    ledger.checkpoint()
    assert verify_ledger(engine, signer.verifier()).ok
    forged = batch[7].record.replace(b'"allow"', b'"deny"', 1)
    with engine.begin() as connection:
        connection.execute(update(decisions).where(decisions.c.seq == 7).values(record=forged))
    report = verify_ledger(engine, signer.verifier())
    assert not report.ok
    assert any("seq 7" in p and batch[7].decision_id in p for p in report.problems or [])


def test_verify_catches_a_rewritten_leaf_hash_through_the_checkpoint(
    engine: Engine, signer: NoteSigner
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    batch = entries(16)
    ledger.append(batch)
    ledger.checkpoint()
    forged = batch[3].record.replace(b'"allow"', b'"deny"', 1)
    with engine.begin() as connection:  # a careful forger also fixes the leaf hash
        connection.execute(
            update(decisions)
            .where(decisions.c.seq == 3)
            .values(record=forged, leaf_hash=leaf_hash(forged))
        )
    report = verify_ledger(engine, signer.verifier())
    assert not report.ok
    assert any(
        "checkpoint at size 16" in p and "root does not match" in p for p in report.problems or []
    )


def test_verify_catches_deleted_records_and_forged_checkpoints(
    engine: Engine, signer: NoteSigner
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    ledger.append(entries(10))
    ledger.checkpoint()
    with engine.begin() as connection:
        connection.execute(delete(decisions).where(decisions.c.seq == 4))
    report = verify_ledger(engine, signer.verifier())
    assert any("missing" in p for p in report.problems or [])

    other = NoteSigner.generate(ORIGIN)
    report = verify_ledger(engine, other.verifier())
    assert any("signature invalid" in p for p in report.problems or [])


def test_verify_detects_a_checkpoint_note_edited_in_place(
    engine: Engine, signer: NoteSigner
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    ledger.append(entries(5))
    ledger.checkpoint()
    with engine.connect() as connection:
        note = connection.execute(select(checkpoints.c.note)).scalar_one()
    with engine.begin() as connection:
        connection.execute(update(checkpoints).values(note=note.replace("\n5\n", "\n4\n")))
    report = verify_ledger(engine, signer.verifier())
    assert any("checkpoint at size 5" in p for p in report.problems or [])


@pytest.mark.parametrize("durability", [Durability.BATCH, Durability.SYNC])
def test_recorder_commits_masks_and_drains_on_stop(
    engine: Engine, signer: NoteSigner, durability: Durability
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    recorder = DecisionRecorder(
        ledger,
        Masker(["/context/token"]),
        Metrics(),
        durability=durability,
        flush_interval=0.05,
        checkpoint_interval=0.1,
    )
    recorder.start()
    ids = []
    for n in range(50):
        d = decision()
        recorder.record_blocking(request(n), d)
        ids.append(d.decision_id)
        if durability is Durability.SYNC:
            with engine.connect() as connection:  # committed before record_blocking returned
                assert (
                    connection.execute(
                        select(decisions.c.seq).where(decisions.c.decision_id == d.decision_id)
                    ).first()
                    is not None
                )
    recorder.stop()
    with engine.connect() as connection:
        rows = connection.execute(select(decisions.c.decision_id, decisions.c.record)).all()
    assert {r[0] for r in rows} == set(ids)
    assert all(b"secret" not in r[1] for r in rows)
    assert ledger.latest_checkpoint() is not None
    assert ledger.latest_checkpoint().size == 50  # type: ignore[union-attr]


def fail_appends(ledger: Ledger, monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """The store refuses the next `times` commits, then recovers."""
    real_append = ledger.append
    left = [times]

    def flaky(batch):  # type: ignore[no-untyped-def]
        if left[0]:
            left[0] -= 1
            raise OSError("store unavailable")
        return real_append(batch)

    monkeypatch.setattr(ledger, "append", flaky)


def test_recorder_retries_when_the_store_fails(
    engine: Engine, signer: NoteSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    metrics = Metrics()
    recorder = DecisionRecorder(ledger, Masker([]), metrics, flush_interval=0.02)
    fail_appends(ledger, monkeypatch, times=3)
    recorder.start()
    for n in range(20):
        recorder.submit(request(n), decision())
    recorder.stop()
    assert ledger.size == 20, "records are kept and retried, never dropped"
    assert metrics.ledger_write_failures._value.get() == 3
    assert verify_ledger(engine, signer.verifier()).ok


def test_batch_commits_and_checkpoints_while_running(engine: Engine, signer: NoteSigner) -> None:
    """Under batch durability, records reach the store within a few flush intervals and a
    checkpoint covers them, without waiting for a stop; a backlog queued later still drains."""
    ledger = Ledger(engine, signer, ORIGIN)
    recorder = DecisionRecorder(
        ledger, Masker([]), Metrics(), flush_interval=0.01, checkpoint_interval=0.01
    )
    recorder.start()
    try:
        for n in range(30):
            recorder.submit(request(n), decision())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            latest = ledger.latest_checkpoint()
            if ledger.size == 30 and latest is not None and latest.size == 30:
                break
            time.sleep(0.01)
        assert ledger.size == 30
        assert ledger.latest_checkpoint().size == 30  # type: ignore[union-attr]
        for n in range(30, 35):
            recorder.submit(request(n), decision())
    finally:
        recorder.stop()
    assert ledger.size == 35
    assert ledger.latest_checkpoint().size == 35  # type: ignore[union-attr]
    assert verify_ledger(engine, signer.verifier()).ok


def test_batch_groups_steady_load_into_one_commit_per_interval(
    engine: Engine, signer: NoteSigner
) -> None:
    """Steady submissions are committed about once per flush interval, not one small
    transaction after another; each record is still stored within about an interval."""
    ledger = Ledger(engine, signer, ORIGIN)
    commits: list[int] = []
    real_append = ledger.append

    def counting_append(batch):  # type: ignore[no-untyped-def]
        commits.append(len(batch))
        return real_append(batch)

    ledger.append = counting_append  # type: ignore[method-assign]
    recorder = DecisionRecorder(ledger, Masker([]), Metrics(), flush_interval=0.2)
    recorder.start()
    try:
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 1.0:
            recorder.submit(request(n), decision())
            n += 1
            time.sleep(0.001)
        submitted_at = time.monotonic()
        while ledger.size < n and time.monotonic() - submitted_at < 10:
            time.sleep(0.01)
        stored_after = time.monotonic() - submitted_at
    finally:
        recorder.stop()
    assert ledger.size == n
    assert stored_after < 2.0, "the last records waited far longer than a flush interval"
    # ~1 s of load at 0.2 s per commit: about 5 commits (plus the final one), never hundreds.
    assert len(commits) <= 10, commits
    assert sum(commits) == n
