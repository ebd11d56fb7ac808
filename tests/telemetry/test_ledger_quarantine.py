"""A value the store cannot take never stalls the ledger: query columns hold a column-safe form
(NUL, lone surrogates) on both backends, a record the store still refuses is quarantined with
its reason while the records behind it are committed, and `audit verify` accounts for it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from tests.conftest import ORIGIN, SHOP
from tests.support import run_cli, running_server, wait_for
from tests.telemetry.test_ledger_store import decision, entries
from trustplane.config import Durability
from trustplane.model import AccessRequest, EntityRef
from trustplane.store.tables import decisions, ledger_quarantine
from trustplane.store.text import column_text
from trustplane.telemetry.appender import AppenderProcess, LocalSink
from trustplane.telemetry.checkpoint import NoteSigner
from trustplane.telemetry.ledger import (
    DecisionQuery,
    Ledger,
    decision_entry,
    query_decisions,
    verify_ledger,
)
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.metrics import Metrics
from trustplane.telemetry.recorder import DecisionRecorder


def test_column_text() -> None:
    assert column_text("alice") == "alice"
    assert column_text("x\x00y") == "x\\u0000y"
    assert column_text("a\ud800b\udfff") == "a\\ud800b\\udfff"
    assert column_text("ünïcode ✓") == "ünïcode ✓"
    assert column_text("x" * 500, 400) == "x" * 400


def test_nul_and_lone_surrogates_are_recorded_and_found(engine: Engine, signer: NoteSigner) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    hostile = AccessRequest(
        EntityRef("User", "x\x00y"),
        EntityRef("Action", "re\ud800ad"),
        EntityRef("Doc", "/x\x00y"),
        {"path": "/x\x00y"},
    )
    entry = decision_entry(hostile, decision(), Masker([]))
    assert ledger.append([entry, *entries(3)]) == 4
    rows = query_decisions(engine, DecisionQuery(principal='User::"x\x00y"'))
    assert [r["decision_id"] for r in rows] == [entry.decision_id]
    assert rows[0]["request"]["principal"]["id"] == "x\x00y", "the record keeps the exact value"
    assert verify_ledger(engine, signer.verifier()).ok


def test_a_refused_record_is_quarantined_and_the_rest_committed(
    engine: Engine, signer: NoteSigner
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    first = entries(5)
    ledger.append(first)
    # The store refuses a row whose decision id is already stored (a unique column): the
    # record is kept in quarantine, in its place in the tree, and the others go in.
    twin = replace(entries(1, 50)[0], decision_id=first[2].decision_id)
    after = entries(6, 100)
    start, count = ledger.append_batch([*after[:3], twin, *after[3:]])
    assert (start, count) == (5, 7)
    assert ledger.size == 12 and ledger.quarantined == 1
    with engine.connect() as connection:
        held = connection.execute(select(ledger_quarantine)).all()
        stored = connection.execute(select(decisions.c.decision_id)).scalars().all()
    assert [(row.seq, row.decision_id) for row in held] == [(8, twin.decision_id)]
    assert "unique" in held[0].reason.lower()
    assert {e.decision_id for e in after} <= set(stored)
    ledger.checkpoint()
    report = verify_ledger(engine, signer.verifier())
    assert report.ok, report.problems
    assert (report.records, report.quarantined) == (12, 1)
    # Proofs cover leaves after the quarantined one; a fresh process loads the same tree.
    assert ledger.inclusion_proof(after[-1].decision_id)["leaf_index"] == 11
    assert Ledger(engine, signer, ORIGIN).size == 12


def test_the_appender_process_quarantines_too(
    engine: Engine, database_url: str, signer: NoteSigner
) -> None:
    ledger = Ledger(engine, signer, ORIGIN)
    appender = AppenderProcess(ledger, database_url, signer.signer_key())
    metrics = Metrics()
    recorder = DecisionRecorder(ledger, Masker([]), metrics, sink=appender)
    recorder.start()
    try:
        first = entries(3)
        for entry in first:
            recorder.record_entry_blocking(entry)
        twin = replace(entries(1, 9)[0], decision_id=first[0].decision_id)
        recorder.record_entry_blocking(twin)
        last = entries(1, 20)[0]
        recorder.record_entry_blocking(last)
        assert recorder.health() is None
    finally:
        recorder.stop()
    assert ledger.size == 5 and ledger.quarantined == 1
    assert metrics.ledger_quarantined._value.get() == 1
    assert verify_ledger(engine, signer.verifier()).ok


@pytest.mark.slow
@pytest.mark.parametrize("durability", [Durability.BATCH, Durability.SYNC])
def test_a_nul_in_a_request_never_stalls_the_ledger(
    tmp_path: Path, database_url: str, durability: Durability
) -> None:
    """The reproduction: subject id "x\\u0000y" on AuthZEN, an Envoy HTTP path with %00. Every
    decision answered afterwards is recorded, and /readyz stays 200."""
    with running_server(
        tmp_path / "state",
        database_url,
        SHOP,
        policy__watch="false",
        ledger__durability=durability.value,
    ) as server:
        client = server.client
        hostile = {
            "subject": {"type": "User", "id": "x\u0000y"},
            "action": {"name": "payments:refund"},
            "resource": {"type": "Api", "id": "payments.refund"},
        }
        answered = [client.post("/access/v1/evaluation", json=hostile).json()]
        envoy = client.get("/v1/envoy/http/x%00y")
        assert envoy.status_code in (401, 403)
        answered.append({"context": {"decision_id": envoy.headers["x-trustplane-decision-id"]}})
        good = {**hostile, "subject": {"type": "User", "id": "erin"}}
        for _ in range(20):
            response = client.post("/access/v1/evaluation", json=good)
            assert response.status_code == 200, response.text
            answered.append(response.json())
        ids = [a["context"]["decision_id"] for a in answered]

        def all_recorded() -> bool:
            found = client.get("/v1/decisions", params={"limit": 1000}, headers=server.admin)
            return set(ids) <= {d["decision_id"] for d in found.json()["decisions"]}

        wait_for(all_recorded, timeout=30)
        assert client.get("/readyz").status_code == 200
        found = client.get(
            "/v1/decisions", params={"principal": 'User::"x\u0000y"'}, headers=server.admin
        ).json()["decisions"]
        assert [d["decision_id"] for d in found] == [ids[0]]
        # Another table: a value PostgreSQL refuses is a 422 naming the problem, never a 500.
        revoke = client.post(
            "/v1/revocations",
            json={
                "kind": "principal",
                "target": 'User::"x\u0000y"',
                "reason": "nul",
                "force": True,
            },
            headers=server.admin,
        )
        if "postgresql" in database_url:
            assert revoke.status_code == 422, revoke.text
            assert revoke.json()["type"].endswith("value-not-storable")
        else:
            assert revoke.status_code == 201, revoke.text
        assert client.get("/readyz").status_code == 200
        env = server.env
    verify = run_cli("audit", "verify", "--json", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_readiness_names_a_ledger_that_is_not_draining(engine: Engine, signer: NoteSigner) -> None:
    ledger = Ledger(engine, signer, ORIGIN)

    class Failing:
        def append(self, entries: object) -> int:
            raise OSError("store unreachable")

        def checkpoint(self) -> bool:
            return False

        def close(self) -> None:
            pass

    recorder = DecisionRecorder(
        ledger,
        Masker([]),
        Metrics(),
        sink=Failing(),
        flush_interval=0.01,  # type: ignore[arg-type]
    )
    recorder.start()
    try:
        assert recorder.health() is None
        recorder.submit(*_pair())
        reason = wait_for(recorder.health, timeout=10)
        assert "failing" in reason and "store unreachable" in reason
    finally:
        recorder._sink = LocalSink(ledger)  # the store is back: the stop drains
        recorder.stop()
    assert ledger.size == 1 and recorder.health() is None


def _pair() -> tuple[AccessRequest, object]:
    return (
        AccessRequest(EntityRef("User", "a"), EntityRef("Action", "r"), EntityRef("Doc", "d"), {}),
        decision(),
    )
