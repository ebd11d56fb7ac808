"""Grants and exceptions on the decision path: a grant adds a role only inside its window, an
exception sets aside one forbid only inside its window, and answers carry their ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SHOP
from trustplane.decision.loader import LoadedBundle, LoadOptions, load_bundle
from trustplane.decision.policy_bundle import BundleSource
from trustplane.governance.catalog import BUNDLE_FILES
from trustplane.model import AccessRequest, Effect, Elevation, EntityRef, ExceptionRef, GrantRef

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
T = NOW.timestamp()
CTX = {"mfa": True, "auth_age_seconds": 60, "risk_score": 10}
# bob (developer) may not read the checkout service's logs; SREs may, with MFA.
LOGS = AccessRequest(
    EntityRef("User", "bob"),
    EntityRef("Action", "ops:read-logs"),
    EntityRef("Service", "checkout"),
    CTX,
)


@pytest.fixture(scope="module")
def shop() -> LoadedBundle:
    return load_bundle(
        BundleSource.from_dir(SHOP),
        LoadOptions(decision_cache_size=100, decision_ttl_seconds=60, extra_files=BUNDLE_FILES),
    )


def sre_grant(start: float, end: float, grant_id: str = "g-1") -> Elevation:
    return Elevation(grants=(GrantRef(grant_id, "Role", "sre", start, end),))


def test_a_grant_in_force_adds_the_role_and_its_id_goes_in_the_answer(shop: LoadedBundle) -> None:
    evaluator = shop.evaluator
    assert evaluator.evaluate(LOGS, at=NOW).effect is Effect.DENY
    granted = evaluator.evaluate(LOGS, at=NOW, elevation=sre_grant(T - 60, T + 3600))
    assert granted.effect is Effect.ALLOW
    assert [r.policy_id for r in granted.reasons] == ["sre-operate-with-mfa"]
    assert granted.grant_ids == ("g-1",)
    assert granted.as_dict()["grants"] == ["g-1"]
    assert "grants" not in evaluator.evaluate(LOGS, at=NOW).as_dict()


def test_an_answer_under_a_grant_is_never_reused_past_its_expiry(shop: LoadedBundle) -> None:
    granted = shop.evaluator.evaluate(LOGS, at=NOW, elevation=sre_grant(T - 60, T + 12))
    assert granted.allowed and granted.ttl_seconds == 12
    again = shop.evaluator.evaluate(LOGS, at=NOW, elevation=sre_grant(T - 60, T + 12))
    assert again.cached and again.allowed and again.grant_ids == ("g-1",)
    later = shop.evaluator.evaluate(
        LOGS, at=NOW + timedelta(seconds=12), elevation=sre_grant(T - 60, T + 12)
    )
    assert not later.allowed and later.grant_ids == (), "the cache never outlives the grant"


@settings(max_examples=200, deadline=None)
@given(
    start=st.floats(-7200, 7200, allow_nan=False),
    length=st.floats(0, 7200, allow_nan=False),
    offset=st.floats(-10_000, 10_000, allow_nan=False),
)
def test_a_grant_never_applies_outside_its_window(
    shop: LoadedBundle, start: float, length: float, offset: float
) -> None:
    starts, expires = T + start, T + start + length
    instant = datetime.fromtimestamp(T + offset, UTC)
    at = instant.timestamp()  # what the evaluator sees (microsecond precision)
    decision = shop.evaluator.evaluate(LOGS, at=instant, elevation=sre_grant(starts, expires))
    inside = starts <= at < expires
    assert decision.allowed is inside
    assert decision.grant_ids == (("g-1",) if inside else ())


def trust(score: int) -> dict[str, Any]:
    """context.trust as the trust plane gives it to Cedar, at a chosen score."""
    return {"score": score, "level": "high" if score < 80 else "critical", "signals": {}}


def test_an_exception_sets_aside_one_forbid_only_while_it_lasts(shop: LoadedBundle) -> None:
    # Tier 0 at a risk score of 50 is forbidden; the reconciler's migration export needs it.
    export = AccessRequest(
        EntityRef("Service", "reconciler"),
        EntityRef("Action", "customers:export"),
        EntityRef("Dataset", "customers-pii"),
        {"mfa": False, "auth_age_seconds": 1800, "trust": trust(50)},
    )
    evaluator = shop.evaluator
    denied = evaluator.evaluate(export, at=NOW)
    assert [r.policy_id for r in denied.reasons] == ["forbid-elevated-risk-on-tier0"]
    ref = ExceptionRef("x-1", "forbid-elevated-risk-on-tier0", T - 10, T + 100)
    excepted = evaluator.evaluate(export, at=NOW, elevation=Elevation(exceptions=(ref,)))
    assert excepted.allowed and excepted.exception_ids == ("x-1",)
    after = evaluator.evaluate(
        export, at=NOW + timedelta(seconds=100), elevation=Elevation(exceptions=(ref,))
    )
    assert not after.allowed, "an expired exception stops applying by itself"
    # Another forbid still holds: the exception names one policy, not the flow.
    risky = AccessRequest(
        export.principal, export.action, export.resource, {**export.context, "trust": trust(90)}
    )
    still = evaluator.evaluate(risky, at=NOW, elevation=Elevation(exceptions=(ref,)))
    assert not still.allowed
    assert "forbid-high-risk" in [r.policy_id for r in still.reasons]


def test_an_exception_never_removes_a_permit(shop: LoadedBundle) -> None:
    carol = AccessRequest(
        EntityRef("User", "carol"),
        EntityRef("Action", "audit:export"),
        EntityRef("Dataset", "audit-log"),
        CTX,
    )
    ref = ExceptionRef("x-2", "security-exports-audit-log", T - 10, T + 100)
    assert shop.evaluator.evaluate(carol, at=NOW, elevation=Elevation(exceptions=(ref,))).allowed


def test_a_grant_of_a_parent_the_schema_does_not_allow_denies(shop: LoadedBundle) -> None:
    bogus = Elevation(grants=(GrantRef("g-9", "Service", "payments", T - 1, T + 100),))
    decision = shop.evaluator.evaluate(LOGS, at=NOW, elevation=bogus)
    assert not decision.allowed and decision.errors, "fail closed, with the reason"
