"""The pages' counts over the ledger's rows: every decision lands in exactly one hourly bucket
of its window on both backends, and in one cell of the latency heatmap by its recorded
evaluation time; the on-call query returns denials after a sequence number, oldest first; the
admin records of one action are found by their query column."""

from __future__ import annotations

from sqlalchemy import Engine

from trustplane.model import AccessRequest, Decision, Effect, EntityRef
from trustplane.telemetry.ledger import Ledger, admin_entry, decision_entry
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.summary import (
    admin_actions,
    decision_buckets,
    latency_grid,
    recent_denials,
    service_of,
)

START = 1_800_000_000.0  # on an hour


def _entry(
    n: int, effect: Effect, ts: float, resource: str = "checkout", micros: int = 5
) -> object:
    request = AccessRequest(
        EntityRef("User", f"u{n}"), EntityRef("Action", "read"), EntityRef("Service", resource), {}
    )
    decision = Decision(
        f"01a20000-0000-7000-8000-{n:012d}", effect, (), effect, (), (), (), "rev", micros, ts
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


def test_the_latency_grid_puts_each_decision_in_one_cell_by_time_and_evaluation_time(
    engine: Engine,
) -> None:
    ledger = Ledger(engine, None, "test.example/ledger")
    made = [  # (ts, eval_micros) → (row, column) with edges (100, 1000)
        (START + 1, 100, (0, 0)),
        (START + 299, 101, (0, 1)),
        (START + 300, 1000, (1, 1)),
        (START + 599, 1001, (1, 2)),
        (START + 550, 0, (1, 0)),
        (START + 899.5, 250_000, (2, 2)),
    ]
    entries = [_entry(n, Effect.ALLOW, ts, micros=m) for n, (ts, m, _) in enumerate(made)]
    outside = [_entry(90, Effect.DENY, START - 1), _entry(91, Effect.DENY, START + 900)]
    ledger.append([*entries, *outside, admin_entry("a", "x:y", "t", "r", True, now=START + 5)])  # type: ignore[list-item]

    grid = latency_grid(engine, START, START + 900, 300, (100, 1000))
    expected = [[0, 0, 0] for _ in range(3)]
    for _, _, (row, column) in made:
        expected[row][column] += 1
    assert grid.counts == expected
    assert grid.starts == [START, START + 300, START + 600]
    assert grid.total == len(made) and grid.unmeasured == 0


def test_admin_actions_are_found_by_action_and_time(engine: Engine) -> None:
    ledger = Ledger(engine, None, "test.example/ledger")
    ledger.append(
        [
            admin_entry("guard", "bundle:deny-jump", "bundle:r1", "old", True, now=START - 10),
            admin_entry("guard", "bundle:deny-jump", "bundle:r2", "first", True, now=START + 1),
            admin_entry("carol", "bundle:read", "bundle", "", True, now=START + 2),
            admin_entry("guard", "bundle:deny-jump", "bundle:r3", "second", True, now=START + 3),
        ]
    )
    found = admin_actions(engine, "bundle:deny-jump", START)
    assert [r["reason"] for r in found] == ["second", "first"], "newest first, none before"
