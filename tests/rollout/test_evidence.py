"""`rollout_evidence`: the ledger writer derives it from each record in the same transaction
(would-denies, a canary's enforced denials), and `audit verify` recomputes it from the records,
naming a row that was altered, added or removed (on both backends)."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine

from trustplane.store.tables import rollout_evidence
from trustplane.telemetry.checkpoint import NoteSigner
from trustplane.telemetry.ledger import Ledger, _entry, rfc3339, verify_ledger
from trustplane.telemetry.rowcheck import evidence


def record(n: int, decision: str, shadow: str, **extra: object) -> dict[str, object]:
    return {
        "kind": "decision",
        "decision_id": f"00000000-0000-7000-8000-{n:012d}",
        "time": rfc3339(1_700_000_000.0 + n),
        "request": {
            "principal": {"type": "User", "id": f"u{n % 3}"},
            "action": {"type": "Action", "id": "read"},
            "resource": {"type": "Doc", "id": "d"},
        },
        "decision": decision,
        "shadow": shadow,
        "reasons": [],
        "shadow_reasons": [],
        "would_change": [],
        "revision": None,
        **extra,
    }


RECORDS = [
    record(0, "allow", "allow"),
    record(1, "allow", "deny", shadow_reasons=["watch"], would_change=["watch"]),
    record(2, "deny", "deny", reasons=["canary-p"], canary={"canary-p": "enforced"}),
    record(3, "allow", "deny", would_change=["canary-p"], canary={"canary-p": "observed"}),
    record(4, "deny", "deny", reasons=["other"]),
]


def stored(engine: Engine) -> list[tuple[str, int, str]]:
    ev = rollout_evidence.c
    query = select(ev.policy_id, ev.seq, ev.cohort).order_by(ev.seq, ev.policy_id)
    with engine.connect() as connection:
        return [(r[0], int(r[1]), r[2]) for r in connection.execute(query)]


def problems(engine: Engine, signer: NoteSigner) -> list[str]:
    report = verify_ledger(engine, signer.verifier())
    return [p for p in report.problems or [] if "rollout evidence" in p]


def test_the_writer_derives_evidence_and_verify_checks_it(
    engine: Engine, signer: NoteSigner
) -> None:
    assert [evidence(r) for r in RECORDS] == [
        [],
        [("watch", "observed")],
        [("canary-p", "enforced")],
        [("canary-p", "observed")],
        [],
    ]
    ledger = Ledger(engine, signer, "test")
    ledger.append([_entry(r, 1_700_000_000.0 + i) for i, r in enumerate(RECORDS)])
    assert stored(engine) == [
        ("watch", 1, "observed"),
        ("canary-p", 2, "enforced"),
        ("canary-p", 3, "observed"),
    ]
    assert problems(engine, signer) == []

    ev = rollout_evidence.c
    with engine.begin() as connection:
        connection.execute(update(rollout_evidence).where(ev.seq == 2).values(cohort="observed"))
        connection.execute(delete(rollout_evidence).where(ev.seq == 1))
        connection.execute(
            insert(rollout_evidence).values(
                policy_id="watch", seq=0, decision_id="x", ts=0.0, principal="p", cohort="observed"
            )
        )
    found = problems(engine, signer)
    assert len(found) == 3, found
    assert "rollout evidence row for policy watch at seq 0 is derived from no record" in found[0]
    assert "policy watch at seq 1" in found[1] and "is missing" in found[1]
    assert "policy canary-p at seq 2 holds" in found[2] and "'enforced'" in found[2]


@pytest.mark.parametrize("bad", [{"canary": "enforced"}, {"kind": "admin"}])
def test_odd_records_give_no_evidence(bad: dict[str, object]) -> None:
    assert evidence({**RECORDS[2], **bad}) == []


def test_migration_0015_derives_the_evidence_of_records_already_stored(
    database_url: str, signer: NoteSigner
) -> None:
    from tests.store.test_revocation_migration import upgrade
    from trustplane.store.database import create_store_engine, migrate
    from trustplane.store.tables import decisions
    from trustplane.telemetry.ledger import _COLUMNS

    engine = create_store_engine(database_url)
    try:
        upgrade(engine, "0012")
        entries = [_entry(r, 1_700_000_000.0 + i) for i, r in enumerate(RECORDS)]
        with engine.begin() as connection:
            connection.execute(
                insert(decisions),
                [dict(zip(_COLUMNS, e.values(i), strict=True)) for i, e in enumerate(entries)],
            )
        migrate(engine)
        assert stored(engine) == [
            ("watch", 1, "observed"),
            ("canary-p", 2, "enforced"),
            ("canary-p", 3, "observed"),
        ]
        assert problems(engine, signer) == []
    finally:
        engine.dispose()
