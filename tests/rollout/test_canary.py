"""Canary mode: `@mode("canary") @canary("N")` validated at load with file and line, cohorts by
hash (stable, monotone in the percentage, within binomial tolerance of it), and the evaluator
enforcing a canary forbid for its enforced cohort only, each answer saying which cohort."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.decision.test_bundle import NOW, minimal, refusal, source_of
from trustplane.decision.canary import ENFORCED, OBSERVED, cohort, position
from trustplane.decision.engine import Evaluator
from trustplane.decision.policy_bundle import compile_bundle
from trustplane.model import AccessRequest, Effect, EntityRef
from trustplane.telemetry.rowcheck import evidence

CANARY = (
    '@id("no-level-1") @owner("docs") @mode("canary") @canary("25")\n'
    "forbid(principal, action, resource) when { principal.level == 1 };\n"
)


def split(percent: float, count: int, policy: str = "p") -> int:
    return sum(cohort(f'User::"u{i}"', policy, percent) == ENFORCED for i in range(count))


@pytest.mark.parametrize("percent", [1, 10, 25, 50, 90])
def test_the_enforced_share_is_within_its_binomial_tolerance(percent: float) -> None:
    """20,000 principals: the enforced count is within 4.5 standard deviations of n·p (a
    uniform hash falls outside with probability below 1e-5)."""
    n, p = 20_000, percent / 100
    enforced = split(percent, n)
    assert abs(enforced - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)), enforced


def test_policies_split_principals_independently() -> None:
    """Half of each policy's canary, a quarter in both: the policy id is in the hash."""
    n = 20_000
    both = sum(
        cohort(f'User::"u{i}"', "a", 50) == ENFORCED
        and cohort(f'User::"u{i}"', "b", 50) == ENFORCED
        for i in range(n)
    )
    assert abs(both - n / 4) <= 4.5 * math.sqrt(n * 0.25 * 0.75)


@given(st.text(min_size=1, max_size=40), st.floats(0.1, 99.9), st.floats(0.1, 99.9))
def test_cohorts_are_stable_and_grow_with_the_percentage(uid: str, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)
    assert cohort(uid, "p", low) == cohort(uid, "p", low)
    assert 0 <= position(uid, "p") < 1
    if cohort(uid, "p", low) == ENFORCED:
        assert cohort(uid, "p", high) == ENFORCED


@pytest.mark.parametrize(
    ("annotations", "pattern"),
    [
        ('@mode("canary")', r'@mode\("canary"\) needs @canary\("PERCENT"\)'),
        ('@mode("canary") @canary("150")', "@canary must be a percentage above 0 and below 100"),
        ('@mode("canary") @canary("0")', "@canary must be a percentage above 0 and below 100"),
        ('@mode("canary") @canary("ten")', "@canary must be a percentage"),
        ('@mode("observe") @canary("10")', r'@canary applies only with @mode\("canary"\)'),
        ('@canary("10")', r'@canary applies only with @mode\("canary"\)'),
        ('@mode("canery")', '@mode must be "enforce", "observe" or "canary"'),
    ],
)
def test_bad_canary_annotations_are_refused_with_file_and_line(
    annotations: str, pattern: str
) -> None:
    policy = f'\n\n@id("c") @owner("x") {annotations}\nforbid(principal, action, resource);\n'
    problems = refusal(minimal(**{"canary.cedar": policy}))
    found = [p for p in problems if p.file == "canary.cedar"]
    assert found and found[0].line == 3, problems
    assert re.search(pattern, found[0].message), found[0].message


def test_a_canary_forbid_is_enforced_for_its_cohort_and_observed_for_the_rest() -> None:
    users = [f"user{i}" for i in range(400)]
    entities = [
        {"uid": {"type": "Group", "id": "staff"}, "attrs": {}, "parents": []},
        *(
            {
                "uid": {"type": "User", "id": user},
                "attrs": {"level": 1},
                "parents": [{"type": "Group", "id": "staff"}],
            }
            for user in users
        ),
    ]
    files = minimal(**{"canary.cedar": CANARY, "entities.json": json.dumps(entities)})
    bundle = compile_bundle(source_of(files), now=NOW)
    (info,) = [p for p in bundle.policies if p.policy_id == "no-level-1"]
    assert (info.mode, info.canary) == ("canary", 25.0)
    evaluator = Evaluator(bundle, cache_size=64)
    enforced = 0
    for user in users:
        request = AccessRequest(
            EntityRef("User", user), EntityRef("Action", "read"), EntityRef("Doc", "d")
        )
        expected = cohort(f'User::"{user}"', "no-level-1", 25)
        for _ in range(2):  # the second from the cache: same cohort, same answer
            decision = evaluator.evaluate(request)
            assert decision.canary == (("no-level-1", expected),)
            assert decision.shadow_effect is Effect.DENY
            record = {
                "kind": "decision",
                "decision": decision.effect.value,
                "shadow": decision.shadow_effect.value,
                "reasons": [r.policy_id for r in decision.reasons],
                "would_change": [r.policy_id for r in decision.shadow_changes],
                "canary": dict(decision.canary),
            }
            if expected == ENFORCED:
                assert decision.effect is Effect.DENY
                assert [r.policy_id for r in decision.reasons] == ["no-level-1"]
                assert evidence(record) == [("no-level-1", ENFORCED)]
            else:
                assert decision.effect is Effect.ALLOW
                assert [r.policy_id for r in decision.shadow_changes] == ["no-level-1"]
                assert evidence(record) == [("no-level-1", OBSERVED)]
        enforced += expected == ENFORCED
    assert 0 < enforced < len(users)
