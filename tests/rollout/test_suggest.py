"""Suggestions from recorded decisions: candidates validate against the bundle's schema and,
added to the bundle, allow what was observed (a property over generated traffic); principals
are generalised to a role only when every member was observed; coverage counts the pairs an
explicit policy decided."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SHOP
from tests.rollout.recorded import ACTIONS, PRINCIPALS, RESOURCES, SHOP_BUNDLE, ask, load, record_of
from trustplane.decision.loader import LoadedBundle
from trustplane.model import AccessRequest, Effect
from trustplane.rollout.suggest import suggest

CTX = {"mfa": True, "auth_age_seconds": 60}
BOB, DAVE, ERIN = ({"type": "User", "id": u} for u in ("bob", "dave", "erin"))
CHECKOUT = {"type": "Service", "id": "checkout"}


def with_candidates(tmp_path: Path, text: str, enforce: bool = False) -> LoadedBundle:
    target = tmp_path / "with-suggestions"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(SHOP, target)
    if enforce:
        text = text.replace('@mode("observe")', '@mode("enforce")')
    (target / "suggested.cedar").write_text(text)
    # Enforced, a candidate changes answers the bundle's own tests pin down: not run then.
    return load(target, run_tests=not enforce)


def test_candidates_validate_and_allow_what_was_observed(tmp_path: Path) -> None:
    asked = (
        [ask(BOB, "payments:read", {"type": "Api", "id": "payments.transactions"}, **CTX)] * 3
        + [ask(DAVE, "billing:read", {"type": "Api", "id": "billing.invoices"}, **CTX)] * 2
        + [ask(ERIN, "payments:refund", {"type": "Api", "id": "payments.refund"}, **CTX)] * 2
        + [ask(CHECKOUT, "inventory:read", {"type": "Api", "id": "inventory.stock"}, **CTX)]
    )
    records = [record_of(SHOP_BUNDLE, request) for request in asked]
    assert [r["decision"] for r in records] == ["deny"] * 5 + ["allow"] * 3
    found = suggest(records, SHOP_BUNDLE.bundle, owner="platform")
    assert found.used == 8 and all(c.valid for c in found.candidates)
    texts = {c.principals[0]: c for c in found.candidates}
    bob = texts['User::"bob"']
    assert 'principal == User::"bob"' in bob.text
    # Every one of bob's decisions was made with MFA: the candidate asks for it too.
    assert "when { context has mfa && context.mfa }" in bob.text
    assert 'action == Action::"payments:read"' in bob.text
    assert 'resource == Api::"payments.transactions"' in bob.text
    assert '@mode("observe")' in bob.text and '@owner("platform")' in bob.text
    assert bob.evidence.count == 3 and bob.evidence.denied == 3
    assert "// evidence: 3 decision(s), first seen" in bob.text
    erin = texts['User::"erin"']
    assert erin.evidence.allowed_by == {"support-refunds-with-mfa": 2}
    assert "allowed by: support-refunds-with-mfa (2)" in erin.text

    observed = with_candidates(tmp_path, found.text())
    for request in asked:
        assert observed.evaluator.evaluate(request).shadow_effect is Effect.ALLOW
    enforced = with_candidates(tmp_path, found.text(), enforce=True)
    for request in asked:
        assert enforced.evaluator.evaluate(request).effect is Effect.ALLOW

    assert (found.pairs, found.explicit_pairs) == (4, 2)
    assert found.coverage == 0.5
    assert {"action": 'Action::"billing:read"', "resource": 'Api::"billing.invoices"'} in (
        found.uncovered
    )


def test_a_role_stands_for_its_members_only_when_every_one_was_seen(tmp_path: Path) -> None:
    target = tmp_path / "shop"
    shutil.copytree(SHOP, target)
    entities = json.loads((target / "entities.json").read_text())
    support = [{"type": "Role", "id": "support"}]
    frank = {"uid": {"type": "User", "id": "frank"}, "attrs": {"email": "f@x"}, "parents": support}
    (target / "entities.json").write_text(json.dumps([*entities, frank]))
    loaded = load(target)
    refund = {"type": "Api", "id": "payments.refund"}
    erin_only = [record_of(loaded, ask(ERIN, "payments:refund", refund, **CTX))]
    both = [*erin_only, record_of(loaded, ask(frank["uid"], "payments:refund", refund, **CTX))]
    (one,) = suggest(erin_only, loaded.bundle).candidates
    assert 'principal == User::"erin"' in one.text
    (group,) = suggest(both, loaded.bundle).candidates
    assert 'principal is User in Role::"support"' in group.text and group.valid


def test_principals_are_named_when_not_every_member_was_seen() -> None:
    records = [
        record_of(SHOP_BUNDLE, ask(ERIN, "ops:read-logs", {"type": "Service", "id": s}, **CTX))
        for s in ("payments", "checkout")
    ]
    (candidate,) = suggest(records, SHOP_BUNDLE.bundle).candidates
    assert 'principal == User::"erin"' in candidate.text
    assert "[Service::" in candidate.text and ".contains(resource)" in candidate.text
    assert candidate.valid


requests = st.builds(
    ask,
    st.sampled_from(PRINCIPALS),
    st.sampled_from(ACTIONS),
    st.sampled_from(RESOURCES),
    mfa=st.booleans(),
    auth_age_seconds=st.integers(0, 800),
    amount_cents=st.integers(0, 1000),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=12))
def test_every_used_decision_is_allowed_once_its_candidates_are_enforced(
    tmp_path_factory: Any, asked: list[AccessRequest]
) -> None:
    records = [record_of(SHOP_BUNDLE, request) for request in asked]
    found = suggest(records, SHOP_BUNDLE.bundle)
    assert all(c.valid for c in found.candidates), [c.problems for c in found.candidates]
    used = [
        request
        for request, record in zip(asked, records, strict=True)
        if not record["errors"] and (record["decision"] == "allow" or not record["reasons"])
    ]
    assert found.used == len(used)
    if not used:
        return
    enforced = with_candidates(tmp_path_factory.mktemp("s"), found.text(), enforce=True)
    for request in used:
        assert enforced.evaluator.evaluate(request).effect is Effect.ALLOW
