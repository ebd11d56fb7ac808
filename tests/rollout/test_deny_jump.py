"""The per-route deny-rate jump after an activation (telemetry/deny_spike.py), with a clock the
test moves: the preceding window, the ratio and absolute bounds, once per activation, within the
window; and the rollback guard's outcomes (rollout/rollback.py) without a server."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge

from trustplane.rollout.rollback import RollbackGuard
from trustplane.telemetry.deny_spike import DenyJump, DenySpikeDetector

BUSY, QUIET = ("Api", "busy"), ("Api", "quiet")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def detector(clock: Clock, found: list[DenyJump], ratio: float = 3, least: int = 5) -> Any:
    gauge = Gauge("spike", "test", ["revision"], registry=CollectorRegistry())
    return DenySpikeDetector(
        gauge,
        threshold=0.3,
        window_seconds=60,
        min_decisions=1000,  # the whole-bundle alarm stays out of these tests
        clock=clock,
        jump_ratio=ratio,
        jump_min_denies=least,
        on_jump=found.append,
    )


def traffic(spikes: Any, route: Any, allowed: int, denied: int, policy: str = "f") -> None:
    for _ in range(allowed):
        spikes.observe(False, route, None)
    for _ in range(denied):
        spikes.observe(True, route, policy)


def test_a_route_denied_past_the_bounds_is_a_jump_once() -> None:
    clock, found = Clock(), []
    spikes = detector(clock, found)
    spikes.activated("r1")
    traffic(spikes, BUSY, allowed=40, denied=0)
    traffic(spikes, QUIET, allowed=2, denied=0)
    spikes.activated("r2")
    traffic(spikes, BUSY, allowed=0, denied=4)
    assert found == [], "fewer denies than jump_min_denies"
    traffic(spikes, BUSY, allowed=0, denied=1)
    (jump,) = found
    assert (jump.revision, jump.route, jump.policy) == ("r2", 'Api::"busy"', "f")
    assert (jump.denies_before, jump.decisions_before) == (0, 40)
    assert (jump.denies_after, jump.decisions_after, jump.rate_after) == (5, 5, 1.0)
    traffic(spikes, BUSY, allowed=0, denied=20)
    assert len(found) == 1, "judged once per activation"


def test_what_is_not_a_jump() -> None:
    clock, found = Clock(), []
    spikes = detector(clock, found)
    spikes.activated("r1")
    traffic(spikes, BUSY, allowed=10, denied=10)  # half denied before
    spikes.activated("r2")
    traffic(spikes, BUSY, allowed=0, denied=30)  # all after: 2x, below the ratio 3
    traffic(spikes, ("Api", "new"), allowed=0, denied=30)  # unseen before: not judged
    assert found == []
    spikes.activated("r3")
    clock.now += 61  # the window before is over: nothing to compare with
    traffic(spikes, QUIET, allowed=0, denied=30)
    assert found == []


def test_no_jump_after_the_window() -> None:
    clock, found = Clock(), []
    spikes = detector(clock, found)
    spikes.activated("r1")
    traffic(spikes, BUSY, allowed=40, denied=0)
    spikes.activated("r2")
    clock.now += 61
    traffic(spikes, BUSY, allowed=0, denied=30)
    assert found == []


@given(st.integers(1, 50), st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))
def test_a_jump_is_exactly_the_bounds(
    allowed_before: int, denied_before: int, allowed_after: int, denied_after: int
) -> None:
    """Denies after ≥ the minimum and a rate after ≥ ratio × smoothed rate before, on a route
    seen before, judged at each deny in order."""
    clock, found = Clock(), []
    spikes = detector(clock, found, ratio=3, least=5)
    spikes.activated("r1")
    traffic(spikes, BUSY, allowed_before, denied_before)
    spikes.activated("r2")
    traffic(spikes, BUSY, allowed_after, denied_after)
    before = allowed_before + denied_before
    smoothed = (denied_before + 1) / (before + 1)
    expected = any(
        n >= 5 and n / (allowed_after + n) >= 3 * smoothed for n in range(1, denied_after + 1)
    )
    assert bool(found) == expected


class Bundles:
    """The manager's surface the guard uses."""

    def __init__(self, revision: str, fail: bool = False) -> None:
        self.active = type("L", (), {"bundle": type("B", (), {"revision": revision})()})()
        self.fail = fail
        self.rolled: list[str] = []

    def rollback(self, actor: str = "") -> Any:
        from trustplane.decision.manager import ActivationError

        if self.fail:
            raise ActivationError("no earlier revision to roll back to")
        self.rolled.append(actor)
        return type("L", (), {"bundle": type("B", (), {"revision": "r1"})()})()


def jump(revision: str = "r2") -> DenyJump:
    return DenyJump(revision, 'Api::"busy"', "f", 0, 40, 5, 5, 0.0, 1.0, 0.1, 0.0)


@pytest.mark.parametrize(
    ("auto", "active", "fail", "outcome"),
    [
        (True, "r2", False, "rolled_back"),
        (False, "r2", False, "alarm_only"),
        (True, "r3", False, "superseded"),
        (True, "r2", True, "rollback_failed"),
    ],
)
def test_the_guard_always_records_and_rolls_back_only_when_asked(
    auto: bool, active: str, fail: bool, outcome: str
) -> None:
    registry = CollectorRegistry()
    counter = Counter("jumps", "test", ["outcome"], registry=registry)
    records: list[Any] = []
    bundles = Bundles(active, fail)
    guard = RollbackGuard(bundles, counter, records.append, auto_rollback=auto)  # type: ignore[arg-type]
    details = guard.handle(jump())
    assert details["outcome"] == outcome
    assert registry.get_sample_value("jumps_total", {"outcome": outcome}) == 1
    (entry,) = records
    assert entry.kind == "admin" and entry.action == "bundle:deny-jump"
    assert bundles.rolled == (["trustplane:rollback-guard"] if outcome == "rolled_back" else [])
    assert guard.handled == [details]
