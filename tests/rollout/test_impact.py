"""Impact replay without a server: records made by the real decision path's pieces (trust
assessor, evaluator, ledger entry) are replayed against the same bundle (nothing flips, a
property over generated requests) and against a crafted candidate (exactly the expected
flips); records that cannot be replayed are counted by reason."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SHOP
from tests.rollout.recorded import (
    ACTIONS,
    ASSESS,
    PRINCIPALS,
    RESOURCES,
    SHOP_BUNDLE,
    ask,
    load,
    record_of,
)
from trustplane.decision.loader import LoadedBundle
from trustplane.model import AccessRequest, Elevation, refusal
from trustplane.rollout.impact import Grants, replay
from trustplane.telemetry.ledger import decision_entry
from trustplane.telemetry.masking import Masker

requests = st.builds(
    ask,
    st.sampled_from(PRINCIPALS),
    st.sampled_from(ACTIONS),
    st.sampled_from(RESOURCES),
    mfa=st.booleans(),
    auth_age_seconds=st.integers(0, 5000),
    amount_cents=st.integers(0, 100_000),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=20))
def test_replaying_the_bundle_that_decided_flips_nothing(asked: list[AccessRequest]) -> None:
    records = [record_of(SHOP_BUNDLE, request) for request in asked]
    report = replay(records, SHOP_BUNDLE.evaluator, Grants())
    assert (report.replayed, report.flips, report.unchanged) == (len(asked), 0, len(asked))
    assert not report.not_replayed


def enforced_refund_limit(tmp_path: Path) -> LoadedBundle:
    """The shop with forbid-large-refunds enforced, and a permit for bob's refunds added."""
    target = tmp_path / "candidate"
    shutil.copytree(SHOP, target)
    (target / "tests" / "observe.yaml").unlink()  # its tests expect the policy observed
    guardrails = target / "guardrails.cedar"
    guardrails.write_text(
        guardrails.read_text().replace('@mode("observe")\n', "", 1)
        + '\n@id("bob-refunds")\n@owner("payments")\npermit (principal == User::"bob", '
        'action == Action::"payments:refund", resource == Api::"payments.refund");\n'
    )
    return load(target)


def test_a_crafted_set_flips_exactly_as_expected(tmp_path: Path) -> None:
    candidate = enforced_refund_limit(tmp_path)
    erin, bob = {"type": "User", "id": "erin"}, {"type": "User", "id": "bob"}
    refund = {"type": "Api", "id": "payments.refund"}
    ctx = {"mfa": True, "auth_age_seconds": 60}
    records = (
        [record_of(SHOP_BUNDLE, ask(erin, "payments:refund", refund, **ctx, amount_cents=90_000))]
        * 4
        + [record_of(SHOP_BUNDLE, ask(erin, "payments:refund", refund, **ctx, amount_cents=10))] * 3
        + [record_of(SHOP_BUNDLE, ask(bob, "payments:refund", refund, **ctx, amount_cents=10))] * 2
    )
    assert [r["decision"] for r in records] == ["allow"] * 7 + ["deny"] * 2
    report = replay(records, candidate.evaluator, Grants())
    doc = report.as_dict()
    assert (doc["replayed"], doc["flips"], doc["allow_to_deny"], doc["deny_to_allow"]) == (
        9,
        6,
        4,
        2,
    )
    by_policy = {g["policy"]: g for g in doc["by_policy"]}
    assert by_policy["forbid-large-refunds"]["allow_to_deny"] == 4
    assert by_policy["bob-refunds"]["deny_to_allow"] == 2
    assert len(by_policy["forbid-large-refunds"]["examples"]) == 3
    principals = {g["principal"]: g["flips"] for g in doc["by_principal"]}
    assert principals == {'User::"erin"': 4, 'User::"bob"': 2}
    assert report.fails("new-denies") and report.fails("any-flip") and not report.fails(None)


def test_records_that_cannot_be_replayed_are_counted_by_reason() -> None:
    alice = {"type": "User", "id": "alice"}
    logs = {"type": "Service", "id": "payments"}
    masked = record_of(
        SHOP_BUNDLE,
        ask(alice, "ops:read-logs", logs, mfa=True, auth_age_seconds=10),
        Masker(["/context/mfa"]),
    )
    refused = dict(
        orjson.loads(
            decision_entry(
                ask(alice, "ops:read-logs", logs),
                refusal("credential_missing: no credential"),
                Masker([]),
            ).record
        )
    )
    fine = record_of(SHOP_BUNDLE, ask(alice, "ops:read-logs", logs, mfa=True, auth_age_seconds=1))
    granted = {**fine, "grants": ["g-unknown"]}
    report = replay([masked, refused, fine, granted], SHOP_BUNDLE.evaluator, Grants())
    assert (report.records, report.replayed) == (4, 1)
    assert dict(report.not_replayed) == {
        "masked input (/context/mfa)": 1,
        "settled before any policy (credential_missing)": 1,
        "grant or exception unknown here": 1,
    }
    doc = report.as_dict()
    assert doc["not_replayed"] == 3
    reasons = {item["reason"]: item["examples"] for item in doc["not_replayed_by_reason"]}
    assert reasons["masked input (/context/mfa)"] == [masked["decision_id"]]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=30))
def test_a_batch_answers_as_one_evaluation_at_a_time(asked: list[AccessRequest]) -> None:
    evaluator = SHOP_BUNDLE.evaluator
    now = 1_800_000_000.0
    batch = evaluator.evaluate_batch([(request, now, None) for request in asked])
    assert len(batch) == len(asked)
    for request, answer in zip(asked, batch, strict=True):
        one = evaluator.evaluate(request, at=datetime.fromtimestamp(now, UTC))
        assert (answer.effect, answer.shadow_effect, answer.errors) == (
            one.effect,
            one.shadow_effect,
            one.errors,
        )
        assert answer.reasons == one.reasons and answer.shadow_changes == one.shadow_changes


def test_a_grant_in_force_is_replayed_with_the_role_it_added() -> None:
    """A break-glass grant made alice a member of the payments-db role: her record names the
    grant, replay looks it up and asks with the same role; without it, the record is counted,
    not guessed at."""
    now = datetime.now(UTC).timestamp()
    row = {
        "id": "g-1",
        "role": 'Role::"break-glass-payments-db"',
        "starts_at": now - 60,
        "expires_at": now + 600,
    }
    grants = Grants.from_rows([row], [])
    request = ask(
        {"type": "User", "id": "bob"},
        "db:admin",
        {"type": "Database", "id": "payments-db-prod"},
        mfa=True,
        auth_age_seconds=30,
    )
    seen, assessment = ASSESS(request, SHOP_BUNDLE.bundle)
    elevation = Elevation(grants=(grants.grants["g-1"],))
    decision = SHOP_BUNDLE.evaluator.evaluate(seen, trust=assessment, elevation=elevation)
    assert decision.allowed and decision.grant_ids == ("g-1",)
    record = dict(orjson.loads(decision_entry(request, decision, Masker([])).record))
    report = replay([record], SHOP_BUNDLE.evaluator, grants)
    assert (report.replayed, report.flips) == (1, 0)
    unknown = replay([record], SHOP_BUNDLE.evaluator, Grants())
    assert dict(unknown.not_replayed) == {"grant or exception unknown here": 1}
