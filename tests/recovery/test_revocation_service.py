"""The revocation service on each store (SQLite and PostgreSQL): revocations that expire by
themselves, lifting by id or unique prefix, history kept, expiry recorded once however many
processes run housekeeping, and principals nobody knows refused unless forced."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from trustplane.model import EntityRef
from trustplane.recovery.revocation import (
    EXPIRY_ACTOR,
    RevocationError,
    RevocationKind,
    RevocationList,
    RevocationState,
    RevocationStore,
)
from trustplane.recovery.service import (
    Caller,
    RevocationService,
    UnknownPrincipal,
    parse_expiry,
)
from trustplane.telemetry.ledger import LedgerEntry

ALICE = 'User::"alice"'
OPS = Caller("ops")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def no_governance(*args: Any) -> tuple[float, bool, dict[str, Any]]:
    raise AssertionError("no governed kind in these tests")


def service(
    engine: Engine, clock: Clock, records: list[LedgerEntry], known: set[str] | None = None
) -> tuple[RevocationService, RevocationList]:
    store = RevocationStore(engine, clock)
    listed = RevocationList(store, clock)
    revoker = RevocationService(
        store,
        listed,
        no_governance,
        known=lambda p: p in (known or {ALICE}),
        record=records.append,
        clock=clock,
    )
    return revoker, listed


def test_a_revocation_with_an_expiry_stops_denying_when_it_passes(engine: Engine) -> None:
    clock, records = Clock(), []
    revoker, listed = service(engine, clock, records)
    revoked = revoker.revoke(OPS, RevocationKind.PRINCIPAL, ALICE, "suspicious login", expires="2h")
    assert revoked.created and revoked.revocation.expires_at == clock.now + 7200
    assert listed.principal(EntityRef("User", "alice")) is not None
    clock.now += 7199
    assert listed.principal(EntityRef("User", "alice")) is not None, "not yet"
    clock.now += 1
    assert listed.principal(EntityRef("User", "alice")) is None, "no longer denies at expiry"
    assert revoker.listing()[0] == [], "not listed as in force either"
    assert records == [], "housekeeping has not run yet"


def test_expiry_is_recorded_once_whichever_process_gets_there_first(engine: Engine) -> None:
    clock, records = Clock(), []
    first, _ = service(engine, clock, records)
    second, second_list = service(engine, clock, records)
    made = first.revoke(OPS, RevocationKind.CREDENTIAL, "jti-9", "leaked", expires="30m")
    second_list.refresh()
    epoch = second_list.epoch
    clock.now += 1800
    ended = first.expire_due() + second.expire_due() + first.expire_due()
    assert [r.id for r in ended] == [made.revocation.id]
    assert len(records) == 1
    assert records[0].action == "revocation:expire"
    assert records[0].principal == EXPIRY_ACTOR
    assert b'"revoked_by":"ops"' in records[0].record
    second_list.refresh()
    assert second_list.epoch > epoch, "the expiry moves the epoch: outside caches drop answers"
    history, _ = first.listing(ended=True)
    assert [(r.id, r.state()) for r in history] == [(made.revocation.id, RevocationState.EXPIRED)]


def test_a_revocation_is_lifted_by_a_unique_prefix_and_the_history_stays(engine: Engine) -> None:
    clock, records = Clock(), []
    revoker, listed = service(engine, clock, records)
    made = revoker.revoke(OPS, RevocationKind.PRINCIPAL, ALICE, "laptop stolen").revocation
    assert listed.named(ALICE) is not None
    clock.now += 60
    lifted, done = revoker.lift(Caller("lead"), made.id[:8].upper(), "laptop found")
    assert done and lifted.id == made.id
    assert lifted.state() is RevocationState.LIFTED
    assert (lifted.ended_by, lifted.end_reason, lifted.ended_at) == (
        "lead",
        "laptop found",
        clock.now,
    )
    assert listed.named(ALICE) is None, "this process stops denying at once"
    again, done_again = revoker.lift(Caller("other"), made.id, "again")
    assert not done_again and again.ended_by == "lead", "the first lift stands"
    remade = revoker.revoke(OPS, RevocationKind.PRINCIPAL, ALICE, "stolen again")
    assert remade.created and remade.revocation.id != made.id, "a new revocation, not the old"
    history, _ = revoker.listing(ended=True)
    assert [r.reason for r in history] == ["laptop stolen", "stolen again"]
    assert [r.id for r in revoker.listing()[0]] == [remade.revocation.id]


def test_lifting_names_what_is_wrong(engine: Engine) -> None:
    clock, records = Clock(), []
    revoker, _ = service(engine, clock, records)
    made = revoker.revoke(OPS, RevocationKind.CREDENTIAL, "jti-1", "r", expires="1m").revocation
    with pytest.raises(RevocationError, match="no revocation 0000") as missing:
        revoker.lift(OPS, "0000", "r")
    assert missing.value.status == 404
    with pytest.raises(RevocationError, match="must be an id") as bad:
        revoker.lift(OPS, "not an id!", "r")
    assert bad.value.status == 422
    with pytest.raises(RevocationError, match="reason is required"):
        revoker.lift(OPS, made.id, "  ")
    clock.now += 61
    with pytest.raises(RevocationError, match="already expired") as expired:
        revoker.lift(OPS, made.id, "too late")
    assert expired.value.status == 409


def test_an_ambiguous_prefix_is_refused(engine: Engine) -> None:
    clock, records = Clock(), []
    revoker, _ = service(engine, clock, records)
    ids = [
        revoker.revoke(OPS, RevocationKind.CREDENTIAL, f"jti-{n}", "r").revocation.id
        for n in range(40)
    ]
    # 40 ids over 16 hex digits: by pigeonhole some first digit starts at least three of them
    first, sharing = Counter(i[0] for i in ids).most_common(1)[0]
    assert sharing >= 3
    with pytest.raises(RevocationError, match="ambiguous") as ambiguous:
        revoker.lift(OPS, first, "r")
    assert ambiguous.value.status == 409


def test_revoking_again_after_an_unrecorded_expiry_makes_a_new_revocation(engine: Engine) -> None:
    clock, records = Clock(), []
    revoker, listed = service(engine, clock, records)
    old = revoker.revoke(OPS, RevocationKind.PRINCIPAL, ALICE, "first", expires="10s").revocation
    clock.now += 11
    new = revoker.revoke(OPS, RevocationKind.PRINCIPAL, ALICE, "second")
    assert new.created and new.revocation.id != old.id
    in_force = listed.named(ALICE)
    assert in_force is not None and in_force.reason == "second"
    assert [r.principal for r in records] == [EXPIRY_ACTOR], "the old one's expiry is recorded"


def test_an_unknown_principal_needs_force(engine: Engine) -> None:
    clock, records = Clock(), []
    revoker, listed = service(engine, clock, records)
    with pytest.raises(UnknownPrincipal, match='User::"alcie" is not known') as refused:
        revoker.revoke(OPS, RevocationKind.PRINCIPAL, 'User::"alcie"', "typo")
    assert refused.value.status == 409
    assert listed.named('User::"alcie"') is None
    forced = revoker.revoke(OPS, RevocationKind.PRINCIPAL, 'User::"alcie"', "sure", force=True)
    assert forced.created
    assert revoker.revoke(OPS, RevocationKind.PRINCIPAL, ALICE, "known").created
    credential = revoker.revoke(OPS, RevocationKind.CREDENTIAL, "any-jti", "not a principal")
    assert credential.created, "only principals are checked against what is known"


def test_governed_kinds_cannot_expire(engine: Engine) -> None:
    revoker, _ = service(engine, Clock(), [])
    with pytest.raises(RevocationError, match="cannot expire") as refused:
        revoker.revoke(OPS, RevocationKind.GRANT, "g-1", "r", expires="1h")
    assert refused.value.field == "expires"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d12h", 129_600), ("1w", 604_800)],
)
def test_expiries_as_durations(text: str, seconds: int) -> None:
    assert parse_expiry(text, 1000.0) == 1000.0 + seconds


def test_expiries_as_rfc3339() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert (
        parse_expiry("2030-01-31T18:00:00Z", now)
        == datetime(2030, 1, 31, 18, tzinfo=UTC).timestamp()
    )
    assert parse_expiry("2030-01-01T02:00:00+01:00", now) == now + 3600


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("soon", "duration such as 30m"),
        ("0s", "longer than zero"),
        ("2029-12-31T00:00:00Z", "not in the future"),
        ("2030-02-01T00:00:00", "UTC offset"),
        ("5000w", "ten years"),
    ],
)
def test_bad_expiries_name_the_problem(text: str, expected: str) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    with pytest.raises(RevocationError, match=expected) as refused:
        parse_expiry(text, now)
    assert refused.value.field == "expires"
