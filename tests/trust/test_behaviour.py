"""Behaviour signals on each backend with an injected clock: novelty of an action or resource
type for one principal, velocity and denial rate against the principal's own baseline, and the
history written behind by one replica and read by another (and by a restarted process)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from tests.trust.test_network_travel import Bundle, Clock
from trustplane.model import AccessRequest, EntityRef
from trustplane.trust.assessor import TrustAssessor
from trustplane.trust.behaviour import BehaviourSignals, BehaviourState
from trustplane.trust.behaviour_store import BehaviourWriter
from trustplane.trust.policy import SignalRule

NOVELTY = Bundle(novelty=10)


class Replica:
    """One serving process's behaviour plane: state, writer and assessor on a shared store."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.state = BehaviourState()
        self.writer = BehaviourWriter(engine, self.state, clock=clock)
        self.writer.load()
        self.assessor = TrustAssessor([BehaviourSignals(self.state)], clock=clock)

    def ask(
        self,
        bundle: Bundle,
        who: str = "alice",
        action: str = "db:query",
        resource: tuple[str, str] = ("Database", "prod"),
        denied: bool = False,
    ) -> dict[str, Any]:
        request = AccessRequest(
            EntityRef("User", who), EntityRef("Action", action), EntityRef(*resource), {}
        )
        _, record = self.assessor(request, bundle)  # type: ignore[arg-type]
        self.assessor.outcome(request, denied)
        return {s["name"]: s for s in record["signals"]} | {"_": record}


def test_novelty_of_an_action_and_a_resource_type(engine: Engine) -> None:
    clock = Clock()
    one = Replica(engine, clock)
    first = one.ask(NOVELTY)
    assert "novelty" in first["_"]["quiet"], "a principal's first request is not flagged"
    clock.now += 60
    assert "novelty" in one.ask(NOVELTY)["_"]["quiet"]
    clock.now += 60
    new_action = one.ask(NOVELTY, action="db:drop")
    assert new_action["novelty"]["points"] == 10
    assert new_action["novelty"]["observed"] == {"new": ['action Action::"db:drop"']}
    new_type = one.ask(NOVELTY, action="db:query", resource=("Bucket", "logs"))
    assert "resource type Bucket" in new_type["novelty"]["explanation"]
    clock.now += 31 * 86400  # past novelty.days (30): used before, but not within the window
    again = one.ask(NOVELTY)
    assert again["novelty"]["points"] == 10 and "in 30 days" in again["novelty"]["explanation"]


def test_the_history_is_shared_between_replicas_and_survives_a_restart(engine: Engine) -> None:
    clock = Clock()
    a, b = Replica(engine, clock), Replica(engine, clock)
    a.ask(NOVELTY, who="bob")
    a.ask(NOVELTY, who="bob", action="db:drop")
    a.writer.flush()
    clock.now += 5
    b.writer.flush()  # b writes nothing of its own and reads what a wrote
    on_b = b.ask(NOVELTY, who="bob", action="db:drop")
    assert "novelty" in on_b["_"]["quiet"], "b knows bob used db:drop on a"
    assert b.ask(NOVELTY, who="bob", action="db:alter")["novelty"]["points"] == 10
    b.writer.flush()
    restarted = Replica(engine, clock)  # a new process: loads the retained history
    assert "novelty" in restarted.ask(NOVELTY, who="bob", action="db:alter")["_"]["quiet"]


def test_velocity_against_the_principals_own_baseline(engine: Engine) -> None:
    clock = Clock()
    clock.now = 1_900_000_020.0  # 20 s into a minute
    one = Replica(engine, clock)
    bundle = Bundle(SignalRule("velocity", 30, True, 1.0, {"min_requests": 20}))
    for _ in range(10):  # ten quiet minutes: 5 requests a minute
        for _ in range(5):
            one.ask(bundle, who="carol")
        clock.now += 60
    calm = one.ask(bundle, who="carol")
    assert "velocity" in calm["_"]["quiet"]
    for _ in range(60):  # then a burst: 60 in 30 s, 12 times the baseline
        burst = one.ask(bundle, who="carol")
        clock.now += 0.5  # an assessment holds for its clock second (test_assessor)
    assert burst["velocity"]["points"] == 30, burst["velocity"]
    assert burst["velocity"]["observed"]["baseline"] == 5.0
    other = one.ask(bundle, who="dave")
    assert "velocity" in other["_"]["quiet"], "dave has no baseline of his own"


def test_an_assessment_holds_for_its_second_and_every_request_still_counts(
    engine: Engine,
) -> None:
    """A busy caller is assessed once per clock second: its other requests of that second get
    the same record (a first use stays flagged through it), yet each one counts towards the
    rates, which the next second's assessment shows."""
    clock = Clock()
    clock.now = 1_900_000_020.0
    one = Replica(engine, clock)
    bundle = Bundle(SignalRule("velocity", 30, True, 1.0, {"min_requests": 20}), novelty=10)
    for _ in range(10):  # ten quiet minutes: 5 requests a minute
        for _ in range(5):
            one.ask(bundle, who="carol")
            clock.now += 1
        clock.now += 55
    first = one.ask(bundle, who="carol", action="db:drop")
    assert first["novelty"]["points"] == 10
    for _ in range(59):  # the rest of a burst of 60, all within this second
        clock.now += 0.01
        held = one.ask(bundle, who="carol", action="db:drop")
        assert held["_"] is first["_"], "the same principal, action and evidence: held"
    assert "velocity" in held["_"]["quiet"], "the burst shows from the next second"
    other = one.ask(bundle, who="carol", action="db:query")
    assert other["_"] is not first["_"] and "novelty" in other["_"]["quiet"]
    clock.now = float(int(clock.now) + 1)
    after = one.ask(bundle, who="carol", action="db:drop")
    assert "novelty" in after["_"]["quiet"], "used in the second before: no longer new"
    assert after["velocity"]["points"] == 30
    # 60 of the burst, db:query and this one (and the minute before's last requests): the
    # 59 held requests counted, without them it would be under 10.
    assert after["velocity"]["observed"]["per_minute"] >= 62, "every held request counted"


def test_velocity_is_shared_by_replicas_through_the_store(engine: Engine) -> None:
    """Half of carol's baseline and half of her burst on each replica: each sees the total."""
    clock = Clock()
    clock.now = 1_900_000_005.0
    a, b = Replica(engine, clock), Replica(engine, clock)
    bundle = Bundle(velocity=30)
    for _ in range(10):
        for replica in (a, b):
            for _ in range(3):
                replica.ask(bundle, who="carol")
        clock.now += 60
        a.writer.flush()
        b.writer.flush()
    for _ in range(30):
        a.ask(bundle, who="carol")
    a.writer.flush()
    b.writer.flush()
    seen = b.ask(bundle, who="carol")
    assert seen["velocity"]["observed"]["baseline"] == 6.0
    assert seen["velocity"]["observed"]["per_minute"] >= 31
    assert seen["velocity"]["points"] > 0


def test_denial_rate_above_the_baseline(engine: Engine) -> None:
    clock = Clock()
    one = Replica(engine, clock)
    bundle = Bundle(denial_rate=20)
    for _ in range(6):  # six quiet minutes: five of them before the last are the baseline
        for _ in range(4):
            one.ask(bundle, who="erin")
        clock.now += 60
    for _ in range(4):
        early = one.ask(bundle, who="erin", action="db:drop", denied=True)
    assert "denial_rate" in early["_"]["quiet"], "below min_denials (5): not yet"
    for _ in range(6):
        one.ask(bundle, who="erin", action="db:drop", denied=True)
    fired = one.ask(bundle, who="erin")
    assert fired["denial_rate"]["points"] == 20, fired["denial_rate"]
    assert fired["denial_rate"]["observed"]["denied"] == 10


def test_denial_rate_waits_for_a_baseline_of_the_principals_own(engine: Engine) -> None:
    """A new principal whose first calls fail (a job deployed with the wrong role) has no
    share of its own to exceed: not flagged until `min_minutes` of history."""
    clock = Clock()
    one = Replica(engine, clock)
    bundle = Bundle(denial_rate=20)
    for _ in range(2):  # two minutes of history, then a minute of nothing but denials
        one.ask(bundle, who="frank")
        clock.now += 60
    for _ in range(10):
        newcomer = one.ask(bundle, who="frank", action="db:drop", denied=True)
    assert "denial_rate" in newcomer["_"]["quiet"], newcomer
    lowered = Bundle(SignalRule("denial_rate", 20, True, 1.0, {"min_minutes": 1}))
    assert one.ask(lowered, who="frank")["denial_rate"]["points"] == 20, "min_minutes tunes it"


def test_no_history_kept_is_zero_and_says_so() -> None:
    assessor = TrustAssessor([BehaviourSignals(None)], clock=Clock())
    request = AccessRequest(
        EntityRef("User", "a"), EntityRef("Action", "x"), EntityRef("Doc", "d"), {}
    )
    _, record = assessor(request, NOVELTY)  # type: ignore[arg-type]
    assert record["quiet"] == ["novelty"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 200)), min_size=1, max_size=60
    )
)
def test_counts_are_never_lost_or_doubled_by_a_write(events: list[tuple[int, bool, int]]) -> None:
    """Whatever is in flight or merged, the minutes hold exactly the requests and denials."""
    state = BehaviourState()
    now = 1_900_000_000.0
    expected = [0, 0]
    written: dict[tuple[str, int], list[int]] = {}
    for step, (principal, denied, seconds) in enumerate(events):
        now += seconds / 100
        who = f"p{principal}"
        state.use(who, "a", "t", now)
        expected[0] += 1
        if denied:
            state.denied(who, now)
            expected[1] += 1
        if step % 7 == 3:  # a write: the totals come back from the "store"
            _, counts = state.take()
            for p, minutes in counts.items():
                for m, (c, d) in minutes.items():
                    total = written.setdefault((p, m), [0, 0])
                    total[0] += c
                    total[1] += d
            state.merge(
                [(p, "minute", str(m), m * 60.0, c, d) for (p, m), (c, d) in written.items()]
            )
            state.written(True)
    seen = [0, 0]
    for source in (state._shared, state._inflight, state._local):
        for minutes in source.values():
            for c, d in minutes.values():
                seen[0] += c
                seen[1] += d
    assert seen == expected
