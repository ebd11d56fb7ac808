"""The deny-spike detector's judgment, with a clock the test moves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from trustplane.telemetry.deny_spike import DenySpikeDetector


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def detector(clock: Clock, registry: CollectorRegistry) -> DenySpikeDetector:
    gauge = Gauge("spike", "test", ["revision"], registry=registry)
    return DenySpikeDetector(gauge, threshold=0.3, window_seconds=60, min_decisions=10, clock=clock)


def test_a_rise_past_the_threshold_alarms_and_the_next_activation_clears_it() -> None:
    registry = CollectorRegistry()
    spikes = detector(Clock(), registry)
    spikes.activated("r1")
    for i in range(10):
        spikes.observe(i == 0)  # 10 % denied
    spikes.activated("r2")
    for i in range(10):
        spikes.observe(i < 5)  # 50 % denied: +40 points
    assert spikes.alarm is not None and spikes.alarm.revision == "r2"
    assert spikes.alarm.deny_rate_before == 0.1 and spikes.alarm.deny_rate_after == 0.5
    assert registry.get_sample_value("spike", {"revision": "r2"}) == 1
    spikes.activated("r3")
    assert spikes.alarm is None
    assert registry.get_sample_value("spike", {"revision": "r2"}) == 0


def test_a_rise_below_the_threshold_does_not_alarm() -> None:
    spikes = detector(Clock(), CollectorRegistry())
    spikes.activated("r1")
    for i in range(10):
        spikes.observe(i == 0)
    spikes.activated("r2")
    for i in range(10):
        spikes.observe(i < 3)  # +20 points
    assert spikes.alarm is None


def test_no_baseline_or_too_few_decisions_in_the_window_judges_nothing() -> None:
    clock = Clock()
    spikes = detector(clock, CollectorRegistry())
    spikes.activated("r1")  # at start-up: nothing before it
    for _ in range(10):
        spikes.observe(True)
    assert spikes.alarm is None
    spikes.activated("r2")
    for _ in range(10):
        spikes.observe(False)
    spikes.activated("r3")  # baseline: none denied; then a window that runs out
    for _ in range(5):
        spikes.observe(True)
    clock.now = 61
    for _ in range(10):
        spikes.observe(True)
    assert spikes.alarm is None, "decisions after the window are not the activation's"
