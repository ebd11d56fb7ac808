"""The pages' counts over the ledger's rows: every decision lands in exactly one hourly bucket
of its window on both backends, and the on-call query returns denials after a sequence number,
oldest first."""

from __future__ import annotations

from sqlalchemy import Engine

from trustplane.model import AccessRequest, Decision, Effect, EntityRef
from trustplane.telemetry.ledger import Ledger, decision_entry
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.summary import decision_buckets, recent_denials, service_of

START = 1_800_000_000.0  # on an hour


def _entry(n: int, effect: Effect, ts: float, resource: str = "checkout") -> object:
    request = AccessRequest(
        EntityRef("User", f"u{n}"), EntityRef("Action", "read"), EntityRef("Service", resource), {}
    )
    decision = Decision(
        f"01a20000-0000-7000-8000-{n:012d}", effect, (), effect, (), (), (), "rev", 5, ts
    )
    return decision_entry(request, decision, Masker([]))


def test_buckets_count_every_decision_once_and_denials_follow_their_sequence(
    engine: Engine,
) -> None:
    ledger = Ledger(engine, None, "test.example/ledger")
    times = [START + 1, START + 3599.9, START + 3600, START + 7199, START + 3 * 3600 - 0.5]
    effects = [Effect.ALLOW, Effect.DENY, Effect.DENY, Effect.ALLOW, Effect.DENY]
    entries = [_entry(n, e, t) for n, (e, t) in enumerate(zip(effects, times, strict=True))]
    outside = [_entry(90, Effect.DENY, START - 1), _entry(91, Effect.ALLOW, START + 3 * 3600)]
    ledger.append([*entries, *outside])  # type: ignore[list-item]

    buckets = decision_buckets(engine, START, START + 3 * 3600, 3600)
    assert [(b.allowed, b.denied) for b in buckets] == [(1, 1), (1, 1), (0, 1)]
    assert [b.start for b in buckets] == [START, START + 3600, START + 7200]

    newest, top = recent_denials(engine, None, limit=2)
    assert [r["request"]["principal"]["id"] for r in newest] == ["u4", "u90"], "oldest first"
    assert top == 6, "the highest sequence number seen, to ask from next"
    after, top_after = recent_denials(engine, newest[0]["seq"] - 1)
    assert [r["seq"] for r in after] == [newest[0]["seq"], newest[1]["seq"]]
    assert top_after == newest[1]["seq"]
    assert service_of(newest[0]) == "checkout"
    assert service_of({"kind": "admin"}) == "admin"
