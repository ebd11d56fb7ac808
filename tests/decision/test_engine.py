"""Evaluator.evaluate: enforced and shadow answers, reasons, errors and failing closed."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import cedarpy
import pytest

from tests.support import REPO
from trustplane.decision.engine import Evaluator
from trustplane.decision.loader import LoadOptions, load_bundle
from trustplane.decision.policy_bundle import BundleSource, compile_bundle
from trustplane.model import AccessRequest, Decision, Effect, EntityRef

SCHEMA = """
entity Group;
entity User in [Group] { level: Long };
entity Doc { tier: Long };
action read, write, delete, audit appliesTo {
  principal: User, resource: Doc, context: { flag: Bool, n?: Long }
};
"""
ENTITIES = [
    {"uid": {"type": "Group", "id": "staff"}, "attrs": {}, "parents": []},
    {
        "uid": {"type": "User", "id": "ann"},
        "attrs": {"level": 1},
        "parents": [{"type": "Group", "id": "staff"}],
    },
    {"uid": {"type": "User", "id": "bo"}, "attrs": {"level": 5}, "parents": []},
    {"uid": {"type": "Doc", "id": "memo"}, "attrs": {"tier": 2}, "parents": []},
    {"uid": {"type": "Doc", "id": "secret"}, "attrs": {"tier": 9}, "parents": []},
]
EXPIRY = datetime(2030, 1, 1, tzinfo=UTC)
POLICIES = f"""
@id("staff-read") @owner("docs-team") @tier("1") @description("Staff may read documents.")
permit(principal in Group::"staff", action == Action::"read", resource);

@id("level-read") @owner("docs-team") @description("Readers need a level at least the tier.")
permit(principal, action == Action::"read", resource) when {{ principal.level >= resource.tier }};

@id("no-secret") @owner("security") @description("Nobody reads secrets.")
forbid(principal, action == Action::"read", resource == Doc::"secret");

@id("flag-blocks-read") @owner("security") @mode("observe") @description("Flagged reads.")
forbid(principal, action == Action::"read", resource) when {{ context.flag }};

@id("anyone-writes") @owner("docs-team") @mode("observe")
permit(principal, action == Action::"write", resource);

@id("overflow") @owner("math")
permit(principal, action == Action::"delete", resource)
when {{ context has n && context.n + 9223372036854775807 > 0 }};

@id("staff-delete") @owner("docs-team")
permit(principal in Group::"staff", action == Action::"delete", resource);

@id("temporary-audit") @owner("audit") @expires("{EXPIRY.isoformat()}")
permit(principal, action == Action::"audit", resource);
"""


def make_evaluator(
    policies: str = POLICIES, entities: list[dict[str, Any]] = ENTITIES
) -> Evaluator:
    source = BundleSource(
        {
            "schema.cedarschema": SCHEMA.encode(),
            "entities.json": json.dumps(entities).encode(),
            "policies.cedar": policies.encode(),
        }
    )
    return Evaluator(compile_bundle(source, now=datetime(2029, 1, 1, tzinfo=UTC)))


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return make_evaluator()


def ask(
    evaluator: Evaluator,
    user: str,
    action: str,
    doc: str = "memo",
    context: dict[str, Any] | None = None,
    *,
    user_props: dict[str, Any] | None = None,
    doc_props: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> Decision:
    request = AccessRequest(
        EntityRef("User", user, user_props),
        EntityRef("Action", action),
        EntityRef("Doc", doc, doc_props),
        {"flag": False} if context is None else context,
    )
    return evaluator.evaluate(request, at=at)


def ids(reasons: Any) -> set[str]:
    return {r.policy_id for r in reasons}


def test_default_deny_has_no_reasons(evaluator: Evaluator) -> None:
    decision = ask(evaluator, "bo", "delete")  # bo is not staff; no other policy applies
    assert decision.effect is Effect.DENY
    assert decision.reasons == () and decision.errors == ()
    assert decision.shadow_effect is Effect.DENY and decision.shadow_changes == ()
    assert decision.revision == evaluator.revision


def test_permit_allows_with_its_explanation(evaluator: Evaluator) -> None:
    decision = ask(evaluator, "ann", "read")
    assert decision.allowed
    (reason,) = decision.reasons
    assert reason.policy_id == "staff-read"
    assert reason.owner == "docs-team"
    assert reason.description == "Staff may read documents."
    assert reason.as_dict()["tier"] == "1"
    assert decision.as_dict()["reasons"][0]["policy"] == "staff-read"


def test_all_satisfied_permits_are_reasons(evaluator: Evaluator) -> None:
    decision = ask(evaluator, "ann", "read", user_props={"level": 7})
    assert decision.allowed
    assert ids(decision.reasons) == {"staff-read", "level-read"}


def test_forbid_overrides_permit_and_is_the_reason(evaluator: Evaluator) -> None:
    decision = ask(evaluator, "ann", "read", "secret")
    assert decision.effect is Effect.DENY
    assert ids(decision.reasons) == {"no-secret"}
    assert decision.reasons[0].effect == "forbid"
    assert decision.errors == ()


def test_observe_mode_forbid_only_changes_the_shadow(evaluator: Evaluator) -> None:
    decision = ask(evaluator, "ann", "read", context={"flag": True})
    assert decision.effect is Effect.ALLOW
    assert ids(decision.reasons) == {"staff-read"}
    assert decision.shadow_effect is Effect.DENY
    assert ids(decision.shadow_reasons) == {"flag-blocks-read"}
    assert ids(decision.shadow_changes) == {"flag-blocks-read"}
    assert decision.shadow_mismatch
    assert decision.as_dict()["shadow"]["would_change"][0]["mode"] == "observe"


def test_observe_mode_forbid_with_enforced_forbid_is_no_change(evaluator: Evaluator) -> None:
    decision = ask(evaluator, "ann", "read", "secret", context={"flag": True})
    assert decision.effect is Effect.DENY and ids(decision.reasons) == {"no-secret"}
    assert decision.shadow_effect is Effect.DENY
    assert decision.shadow_changes == ()


def test_observe_mode_permit_only_changes_the_shadow(evaluator: Evaluator) -> None:
    decision = ask(evaluator, "bo", "write")
    assert decision.effect is Effect.DENY
    assert decision.reasons == ()
    assert decision.shadow_effect is Effect.ALLOW
    assert ids(decision.shadow_reasons) == {"anyone-writes"}
    assert ids(decision.shadow_changes) == {"anyone-writes"}


def test_error_in_enforced_policy_denies_even_when_another_permit_holds(
    evaluator: Evaluator,
) -> None:
    assert ask(evaluator, "ann", "delete").allowed  # staff-delete holds without the overflow
    decision = ask(evaluator, "ann", "delete", context={"flag": False, "n": 1})
    assert decision.effect is Effect.DENY
    assert decision.shadow_effect is Effect.DENY
    assert any("overflow" in e and "`overflow`" in e for e in decision.errors), decision.errors


def test_error_denies_without_observe_policies_too() -> None:
    enforced_only = "\n".join(
        block for block in POLICIES.split("\n\n") if '@mode("observe")' not in block
    )
    evaluator = make_evaluator(enforced_only)
    assert ask(evaluator, "ann", "delete").allowed
    decision = ask(evaluator, "ann", "delete", context={"flag": False, "n": 1})
    assert decision.effect is Effect.DENY
    assert any("overflow" in e for e in decision.errors)


GUARDED = (
    POLICIES
    + """
@id("observe-overflow") @owner("math") @mode("observe")
forbid(principal, action == Action::"read", resource)
when { context has n && context.n + 9223372036854775807 > 0 };

@id("forbid-overflow") @owner("math")
forbid(principal, action == Action::"audit", resource)
when { context has n && context.n * 9223372036854775807 > 0 };
"""
)


def test_error_in_observe_policy_only_affects_the_shadow() -> None:
    evaluator = make_evaluator(GUARDED)
    decision = ask(evaluator, "ann", "read", context={"flag": False, "n": 3})
    assert decision.allowed and ids(decision.reasons) == {"staff-read"}
    assert decision.shadow_effect is Effect.DENY
    assert ids(decision.shadow_changes) == {"observe-overflow"}
    assert any("`observe-overflow`" in e for e in decision.errors)


def test_error_in_enforced_forbid_denies_although_a_permit_holds() -> None:
    evaluator = make_evaluator(GUARDED)
    at = EXPIRY - timedelta(days=1)
    assert ask(evaluator, "ann", "audit", context={"flag": False, "n": 0}, at=at).allowed
    decision = ask(evaluator, "ann", "audit", context={"flag": False, "n": 3}, at=at)
    assert decision.effect is Effect.DENY
    assert any("`forbid-overflow`" in e for e in decision.errors)


@pytest.mark.parametrize(
    ("context", "field"),
    [
        ({"flag": "yes"}, "flag"),
        ({}, "flag"),
        ({"flag": True, "surprise": 1}, "surprise"),
    ],
)
def test_context_not_matching_schema_denies_naming_the_field(
    evaluator: Evaluator, context: dict[str, Any], field: str
) -> None:
    decision = ask(evaluator, "ann", "read", context=context)
    assert decision.effect is Effect.DENY and decision.shadow_effect is Effect.DENY
    assert decision.errors and field in decision.errors[0]


def test_unknown_entity_type_denies_naming_the_entity(evaluator: Evaluator) -> None:
    request = AccessRequest(
        EntityRef("Robot", "r2"),
        EntityRef("Action", "read"),
        EntityRef("Doc", "memo"),
        {"flag": False},
    )
    decision = evaluator.evaluate(request)
    assert decision.effect is Effect.DENY
    assert 'Robot::"r2"' in decision.errors[0]


def test_unknown_action_denies_naming_it(evaluator: Evaluator) -> None:
    decision = ask(evaluator, "ann", "shred")
    assert decision.effect is Effect.DENY
    assert 'Action::"shred"' in decision.errors[0]


def test_entity_property_of_wrong_type_denies_naming_the_entity(evaluator: Evaluator) -> None:
    decision = ask(evaluator, "ann", "read", user_props={"level": "high"})
    assert decision.effect is Effect.DENY
    assert 'principal User::"ann"' in decision.errors[0]
    decision = ask(evaluator, "ann", "read", doc_props={"tier": "top"})
    assert decision.effect is Effect.DENY
    assert 'resource Doc::"memo"' in decision.errors[0]


def test_properties_merge_over_static_attributes_keeping_group_membership(
    evaluator: Evaluator,
) -> None:
    # bo (level 5) may read memo (tier 2) but not a tier-9 memo; ann is staff whatever her level.
    assert ids(ask(evaluator, "bo", "read").reasons) == {"level-read"}
    assert not ask(evaluator, "bo", "read", doc_props={"tier": 9}).allowed
    assert ids(ask(evaluator, "bo", "read", user_props={"level": 1}).reasons) == set()
    decision = ask(evaluator, "ann", "read", user_props={"level": 0}, doc_props={"tier": 9})
    assert ids(decision.reasons) == {"staff-read"}
    # The static entities are unchanged for the next request.
    assert ids(ask(evaluator, "bo", "read").reasons) == {"level-read"}


def test_entity_sets_built_for_request_properties_are_reused_only_for_the_same_properties() -> None:
    """The evaluator keeps the entity set it built for a caller's attributes: asking again with
    the same attributes gives the same answer, other attributes never get that set."""
    evaluator = make_evaluator()  # decision cache off: every answer is evaluated
    for _ in range(3):
        assert ids(ask(evaluator, "bo", "read", doc_props={"tier": 4}).reasons) == {"level-read"}
        assert not ask(evaluator, "bo", "read", doc_props={"tier": 9}).allowed
        assert not ask(evaluator, "bo", "read", user_props={"level": 1}).allowed
        assert ask(evaluator, "bo", "read").allowed


def test_unknown_principal_gets_attributes_only_from_properties(evaluator: Evaluator) -> None:
    decision = ask(evaluator, "newcomer", "read", user_props={"level": 3})
    assert ids(decision.reasons) == {"level-read"}  # not staff: no parents invented
    low = ask(evaluator, "newcomer", "read", user_props={"level": 1})
    assert not low.allowed and low.errors == ()
    missing = ask(evaluator, "newcomer", "read")
    assert missing.effect is Effect.DENY
    assert 'User::"newcomer"' in missing.errors[0]


def test_expiring_policy_applies_before_and_not_after_its_expiry(evaluator: Evaluator) -> None:
    before = ask(evaluator, "bo", "audit", at=EXPIRY - timedelta(seconds=1))
    assert before.allowed and ids(before.reasons) == {"temporary-audit"}
    assert not ask(evaluator, "bo", "audit", at=EXPIRY).allowed
    assert not ask(evaluator, "bo", "audit", at=EXPIRY + timedelta(days=400)).allowed
    # Asking about the past again after the expiry still answers for that time.
    assert ask(evaluator, "bo", "audit", at=EXPIRY - timedelta(days=1)).allowed


def test_expiry_follows_the_clock_without_at() -> None:
    now = [(EXPIRY - timedelta(minutes=1)).timestamp()]
    source = make_evaluator().bundle.source
    evaluator = Evaluator(
        compile_bundle(source, now=EXPIRY - timedelta(days=1)), clock=lambda: now[0]
    )
    assert ask(evaluator, "bo", "audit").allowed
    now[0] = (EXPIRY + timedelta(minutes=1)).timestamp()
    decision = ask(evaluator, "bo", "audit")
    assert not decision.allowed
    assert decision.timestamp == now[0]


UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_decision_ids_are_unique_time_ordered_uuid7(evaluator: Evaluator) -> None:
    decision_ids = [ask(evaluator, "ann", "read").decision_id for _ in range(200)]
    assert len(set(decision_ids)) == len(decision_ids)
    for value in decision_ids:
        assert UUID7.match(value), value
        assert uuid.UUID(value).version == 7
    # The first 48 bits are the millisecond timestamp: never decreasing in issue order.
    stamps = [uuid.UUID(v).int >> 80 for v in decision_ids]
    assert stamps == sorted(stamps)
    assert abs(stamps[0] / 1000 - datetime.now(UTC).timestamp()) < 3600


def test_a_forked_child_never_reuses_the_parents_random_bytes() -> None:
    """Decision ids draw random bytes in bulk; a fork must not hand out the same bytes twice."""
    from trustplane.model import new_decision_id

    new_decision_id()  # the parent now holds a partly used pool
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(writer, new_decision_id().encode())
        os._exit(0)
    os.close(writer)
    child_id = os.read(reader, 64).decode()
    os.close(reader)
    os.waitpid(pid, 0)
    parent_id = new_decision_id()
    assert child_id and parent_id
    assert child_id[-12:] != parent_id[-12:], "the random tail was shared across the fork"


def test_internal_failure_fails_closed(
    evaluator: Evaluator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(cedarpy, "is_authorized", broken)
    for action in ("read", "write"):
        decision = ask(evaluator, "ann", action)
        assert decision.effect is Effect.DENY and decision.shadow_effect is Effect.DENY
        assert decision.reasons == ()
        assert any("internal error" in e and "engine exploded" in e for e in decision.errors), (
            decision.errors
        )


# -- the answer cache ---------------------------------------------------------------------------


def cached_evaluator(size: int = 16, clock: Any = None) -> Evaluator:
    source = make_evaluator().bundle.source
    bundle = compile_bundle(source, now=EXPIRY - timedelta(days=1))
    if clock is None:
        return Evaluator(bundle, cache_size=size)
    return Evaluator(bundle, clock=clock, cache_size=size)


def test_a_repeated_request_is_answered_from_the_cache_with_a_new_decision_id() -> None:
    evaluator = cached_evaluator()
    first = ask(evaluator, "ann", "read", context={"flag": True})
    again = ask(evaluator, "ann", "read", context={"flag": True})
    assert not first.cached and again.cached
    assert again.decision_id != first.decision_id
    assert (again.effect, again.reasons, again.shadow_effect, again.shadow_changes) == (
        first.effect,
        first.reasons,
        first.shadow_effect,
        first.shadow_changes,
    )
    assert again.as_dict()["cached"] is True


def test_a_cached_answer_carries_every_field_of_the_first() -> None:
    """The cache hit builds its Decision field by field: a new field must be carried too."""
    evaluator = cached_evaluator()
    first = ask(evaluator, "ann", "read")
    again = ask(evaluator, "ann", "read")
    fresh = {"decision_id", "eval_micros", "timestamp", "cached", "ttl_seconds", "revocation_epoch"}
    fresh |= {"trust", "cache_epoch", "cache"}  # the decision point's, per request
    expected = dataclasses.replace(first, **{f: getattr(again, f) for f in fresh})
    assert again == expected
    assert {f.name for f in dataclasses.fields(Decision)} == fresh | {
        "effect",
        "reasons",
        "shadow_effect",
        "shadow_reasons",
        "shadow_changes",
        "errors",
        "revision",
        "grant_ids",
        "exception_ids",
        "canary",
    }, "a new Decision field: carry it in Evaluator.evaluate's cache hit"


def test_a_cached_answer_carries_the_assessment_it_is_given() -> None:
    evaluator = cached_evaluator()
    request = AccessRequest(
        EntityRef("User", "ann"), EntityRef("Action", "read"), EntityRef("Doc", "memo"), {}
    )
    first = evaluator.evaluate(request, trust={"score": 7})
    again = evaluator.evaluate(request, trust={"score": 40})
    assert (first.cached, first.trust) == (False, {"score": 7})
    assert (again.cached, again.trust) == (True, {"score": 40})


def test_the_cache_tells_apart_context_and_properties() -> None:
    evaluator = cached_evaluator()
    plain = ask(evaluator, "ann", "read")
    flagged = ask(evaluator, "ann", "read", context={"flag": True})
    assert plain.shadow_effect is Effect.ALLOW and not flagged.cached
    assert flagged.shadow_effect is Effect.DENY
    low = ask(evaluator, "cy", "read", user_props={"level": 1})
    high = ask(evaluator, "cy", "read", user_props={"level": 9})
    assert not low.allowed and high.allowed and not high.cached


def test_a_cached_answer_never_outlives_a_policy_expiry() -> None:
    now = [(EXPIRY - timedelta(minutes=1)).timestamp()]
    evaluator = cached_evaluator(clock=lambda: now[0])
    assert ask(evaluator, "bo", "audit").allowed
    assert ask(evaluator, "bo", "audit").cached
    now[0] = (EXPIRY + timedelta(seconds=1)).timestamp()
    after = ask(evaluator, "bo", "audit")
    assert not after.allowed and not after.cached


def test_the_cache_is_bounded_and_can_be_off() -> None:
    evaluator = cached_evaluator(size=2)
    for doc in ("a", "b", "c"):
        ask(evaluator, "ann", "read", doc)
    assert not ask(evaluator, "ann", "read", "a").cached, "least recently used was evicted"
    assert ask(evaluator, "ann", "read", "c").cached
    off = cached_evaluator(size=0)
    ask(off, "ann", "read")
    assert not ask(off, "ann", "read").cached


def test_internal_failures_are_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    evaluator = cached_evaluator()
    real = cedarpy.is_authorized

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(cedarpy, "is_authorized", broken)
    assert ask(evaluator, "ann", "read").errors
    monkeypatch.setattr(cedarpy, "is_authorized", real)
    healed = ask(evaluator, "ann", "read")
    assert healed.allowed and not healed.cached


# -- the example estate ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop() -> Evaluator:
    source = BundleSource.from_dir(REPO / "examples" / "shop")
    return load_bundle(source, LoadOptions(run_tests=False)).evaluator


def shop_refund(shop: Evaluator, amount: int, **context: Any) -> Decision:
    ctx = {"mfa": True, "auth_age_seconds": 120, "risk_score": 10, "amount_cents": amount}
    ctx.update(context)
    return shop.evaluate(
        AccessRequest(
            EntityRef("User", "erin"),
            EntityRef("Action", "payments:refund"),
            EntityRef("Api", "payments.refund"),
            ctx,
        )
    )


def test_shop_large_refund_is_allowed_with_an_observe_mode_warning(shop: Evaluator) -> None:
    decision = shop_refund(shop, 90_000)
    assert decision.allowed
    assert ids(decision.reasons) == {"support-refunds-with-mfa"}
    assert decision.shadow_effect is Effect.DENY
    assert ids(decision.shadow_changes) == {"forbid-large-refunds"}
    small = shop_refund(shop, 1_000)
    assert small.allowed and not small.shadow_mismatch


def test_shop_guardrails_beat_permits(shop: Evaluator) -> None:
    risky = shop_refund(shop, 1_000, trust={"score": 90, "level": "critical", "signals": {}})
    assert risky.effect is Effect.DENY
    assert "forbid-high-risk" in ids(risky.reasons)
    stale = shop_refund(shop, 1_000, auth_age_seconds=3600)
    assert ids(stale.reasons) == {"require-fresh-mfa-for-tier0-and-admin"}


def test_context_integer_beyond_64_bits_denies_with_a_cedar_error(evaluator: Evaluator) -> None:
    decision = ask(evaluator, "ann", "delete", context={"flag": False, "n": 2**70})
    assert decision.effect is Effect.DENY
    assert decision.errors and not any("internal error" in e for e in decision.errors)


# -- how long an answer may be reused -----------------------------------------------------------


@pytest.mark.parametrize("cache_size", [0, 16])
def test_ttl_is_the_maximum_cut_at_the_next_expiry_and_zero_on_errors(cache_size: int) -> None:
    now = [(EXPIRY - timedelta(hours=1)).timestamp()]
    source = make_evaluator().bundle.source
    evaluator = Evaluator(
        compile_bundle(source, now=EXPIRY - timedelta(days=1)),
        clock=lambda: now[0],
        cache_size=cache_size,
        max_ttl_seconds=30,
    )
    for _ in range(2):  # the second answer may come from the cache: same rules
        assert ask(evaluator, "ann", "read").ttl_seconds == 30
        assert ask(evaluator, "bo", "delete", context={"flag": False, "n": 1}).ttl_seconds == 0
    now[0] = (EXPIRY - timedelta(seconds=12)).timestamp()
    near = ask(evaluator, "bo", "audit")
    assert near.allowed and near.ttl_seconds == 12, "an answer never outlives @expires"
    assert near.as_dict()["ttl_seconds"] == 12
    assert ask(make_evaluator(), "ann", "read").ttl_seconds == 0, "no maximum: no reuse"
