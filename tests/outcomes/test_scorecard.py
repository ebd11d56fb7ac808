"""The scorecard figure by figure on a crafted store (both backends): decisions written as
ledger records at known times of November 2026, with grants, requests, revocations, labels,
exceptions, reviews and keys around them, so each figure's value is known in advance."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, insert, update

from tests.conftest import ORIGIN, SHOP
from trustplane.decision.policy_bundle import Bundle, BundleSource, compile_bundle
from trustplane.governance.catalog import BUNDLE_FILES
from trustplane.model import AccessRequest, Decision, Effect, EntityRef, PolicyReason
from trustplane.outcomes.report import render_html, render_markdown
from trustplane.outcomes.scorecard import (
    Scorecard,
    ScorecardError,
    auth_success,
    compute_scorecard,
    parse_period,
)
from trustplane.outcomes.simulation_runs import save_run
from trustplane.outcomes.snapshots import load_snapshots, save_snapshot
from trustplane.store.tables import (
    access_grants,
    access_requests,
    break_glass_reviews,
    checkpoints,
    policy_drift,
    policy_exceptions,
    revocations,
    rollout_labels,
)
from trustplane.telemetry.checkpoint import NoteSigner
from trustplane.telemetry.ledger import Ledger, decision_entry
from trustplane.telemetry.masking import Masker

PERIOD, START, END = parse_period("2026-11")
NOW = END + 3600  # an hour into December: November is complete


def shop() -> Bundle:
    return compile_bundle(BundleSource.from_dir(SHOP), extra_files=BUNDLE_FILES)


def made(
    principal: tuple[str, str],
    at: float,
    effect: Effect = Effect.ALLOW,
    *,
    mfa: bool = True,
    errors: tuple[str, ...] = (),
    policy: str | None = "support-refunds-with-mfa",
    grants: tuple[str, ...] = (),
    micros: int = 100,
    resource: str = "payments.refund",
) -> tuple[AccessRequest, Decision]:
    request = AccessRequest(
        EntityRef(*principal),
        EntityRef("Action", "payments:refund"),
        EntityRef("Api", resource),
        {"mfa": mfa},
    )
    effect_text = "permit" if effect is Effect.ALLOW else "forbid"
    reasons = () if policy is None else (PolicyReason(policy, effect_text, "enforce", "team"),)
    decision = Decision(
        str(uuid.uuid4()), effect, reasons, effect, (), (), errors, "rev", micros, at,
        grant_ids=grants,
    )  # fmt: skip
    return request, decision


@pytest.fixture
def card(engine: Engine, signer: NoteSigner) -> Iterator[tuple[Engine, Scorecard]]:
    alice, bob, erin, ghost = ("User", "alice"), ("User", "bob"), ("User", "erin"), ("User", "x")
    history = [
        made(alice, START - 86400),  # October: outside the period
        made(alice, START + 10, micros=100),
        made(alice, START + 20, mfa=False, micros=200),
        made(alice, START + 30, micros=300),
        made(ghost, START + 40, grants=("g-1",), micros=400),  # privileged through a grant
        made(bob, START + 1300, micros=500),  # 300 s after bob's revocation
        made(erin, START + 50, Effect.DENY, errors=("token_expired: the token expired",)),
        made(erin, START + 60, Effect.DENY, errors=("cedar blew up",), policy=None),
        made(erin, START + 70, Effect.DENY, policy=None, resource="payments.charge"),
    ]
    masker = Masker([])
    ledger = Ledger(engine, signer, ORIGIN)
    ledger.append([decision_entry(request, decision, masker) for request, decision in history])
    assert ledger.checkpoint() is not None
    with engine.begin() as conn:
        conn.execute(update(checkpoints).values(created_at=START + 1400))
        conn.execute(
            insert(access_grants),
            [
                grant("g-1", "jit", START + 30, START + 3600),
                grant("g-2", "jit", START + 5000, START + 9000),
                grant("g-old", "jit", START - 9000, START - 5000),  # over before November
            ],
        )
        conn.execute(
            insert(access_requests),
            [request_row("r-1", START + 100, START + 220), request_row("r-2", START, START + 60)],
        )
        conn.execute(
            insert(revocations),
            {
                "id": "v-1",
                "kind": "principal",
                "target": 'User::"bob"',
                "reason": "left",
                "actor": "carol",
                "created_at": START + 1000,
            },
        )
        conn.execute(
            insert(rollout_labels),
            [
                {
                    "decision_id": f"d-{n}",
                    "policy_id": "p",
                    "verdict": "false-positive" if n == 0 else "true-positive",
                    "note": "",
                    "actor": "carol",
                    "principal": 'User::"erin"',
                    "labelled_at": START + n,
                }
                for n in range(10)
            ],
        )
        conn.execute(
            insert(policy_exceptions),
            [exception_row("e-late", NOW - 60), exception_row("e-soon", NOW + 86400)],
        )
        conn.execute(
            insert(policy_drift),
            [drift_row(START + 500), drift_row(START - 500)],  # one in November, one before
        )
        conn.execute(
            insert(break_glass_reviews),
            {"grant_id": "g-2", "opened_by": "alice", "due_at": NOW - 10},
        )
    save_run(engine, SIMULATED, "rev", now=START + 600)
    yield engine, compute_scorecard(engine, shop(), PERIOD, now=NOW)


SIMULATED = {  # outcomes.simulate.run's result, as much of it as is saved
    "lateral_movement": {"paths_without_authz": 4, "blocked_by_authz": 3, "resistance": 0.75},
    "scenarios": [
        {
            "scenario": "rogue-workload",
            "start": 'Service::"checkout"',
            "tier0_paths": {'Database::"payments-db-prod"': []},
            "lateral_movement": {"blocked": ['Dataset::"audit-log"']},
        },
        {
            "scenario": "stolen-token",
            "start": 'User::"erin"',
            "tier0_paths": {},
            "lateral_movement": {"blocked": ['Dataset::"audit-log"', 'Dataset::"customers-pii"']},
        },
    ],
}


def grant(grant_id: str, kind: str, starts: float, expires: float) -> dict[str, Any]:
    return {
        "id": grant_id,
        "kind": kind,
        "principal": 'User::"x"',
        "role": 'Role::"sre"',
        "reason": "incident",
        "ticket": "INC-1",
        "created_by": "carol",
        "starts_at": starts,
        "expires_at": expires,
    }


def request_row(request_id: str, created: float, decided: float) -> dict[str, Any]:
    return {
        "id": request_id,
        "principal": 'User::"bob"',
        "role": 'Role::"sre"',
        "reason": "on call",
        "ticket": "INC-2",
        "duration_seconds": 3600,
        "approvals_required": 1,
        "tier": "1",
        "status": "approved",
        "created_at": created,
        "expires_at": created + 3600,
        "decided_at": decided,
        "revision": "rev",
    }


def drift_row(detected: float) -> dict[str, Any]:
    return {
        "detected_at": detected,
        "revision": "rev",
        "source": "shop/",
        "source_revision": "src",
        "files": '{"changed": ["humans.cedar"]}',
    }


def exception_row(exception_id: str, expires: float) -> dict[str, Any]:
    return {
        "id": exception_id,
        "policy_id": "p",
        "policy_tier": "1",
        "principal": 'User::"erin"',
        "owner": "carol",
        "reason": "migration",
        "ticket": "CHG-1",
        "requested_by": "erin",
        "status": "approved",
        "approvals_required": 1,
        "created_at": START,
        "duration_seconds": 86400,
        "starts_at": START,
        "expires_at": expires,
    }


def test_privilege_figures(card: tuple[Engine, Scorecard]) -> None:
    _, scorecard = card
    standing = scorecard.figure("standing_privilege")
    # The shop's entities make alice a standing sre and carol a standing security engineer,
    # both roles access.yaml offers just in time; two grants overlap November.
    assert standing.value == pytest.approx(2 / 4) and standing.verdict == "not met"
    assert 'User::"alice" in Role::"sre"' in standing.evidence
    assert 'User::"carol" in Role::"security"' in standing.evidence

    mfa = scorecard.figure("mfa_privileged")  # alice's three allows and the grant holder's one
    assert (mfa.value, mfa.verdict) == (pytest.approx(3 / 4), "not met")
    named = scorecard.figure("attributable_privileged")  # User::"x" is no bundle entity
    assert (named.value, named.verdict) == (pytest.approx(3 / 4), "not met")


def test_error_and_friction_figures(card: tuple[Engine, Scorecard]) -> None:
    _, scorecard = card
    fp = scorecard.figure("false_positives")
    assert fp.value == pytest.approx(0.1)
    assert fp.verdict == "not met", "1 in 10 has an upper bound far above 5%"
    # the simulation saved in November: 4 paths to tier 0 without authorization, 3 blocked
    lateral = scorecard.figure("lateral_movement")
    assert (lateral.value, lateral.verdict) == (pytest.approx(0.75), "not met")
    missed = scorecard.figure("false_negatives")
    assert (missed.value, missed.verdict) == (1, "not met")
    assert 'Service::"checkout" → Database::"payments-db-prod"' in missed.evidence

    revoke = scorecard.figure("time_to_revoke")  # bob's allow came 300 s after his revocation
    assert (revoke.value, revoke.verdict) == (pytest.approx(300.0), "met")

    friction = scorecard.figure("friction_denials")  # 3 denials over alice, x, bob, erin
    assert friction.value == pytest.approx(3 / 4)
    assert scorecard.figure("jit_wait").value == pytest.approx(90.0)  # median of 120 and 60


def test_slis(card: tuple[Engine, Scorecard]) -> None:
    engine, scorecard = card
    figure = scorecard.figure
    assert figure("auth_success").value == pytest.approx(7 / 8)  # one expired token
    # the same counts for any window (the executive page's 30 days)
    counts = auth_success(engine, scorecard.start, scorecard.end)
    assert (counts.decisions, counts.refused) == (8, 1)
    assert counts.errors >= figure("pdp_errors").value + counts.refused, "both carry errors"
    assert figure("pdp_errors").value == 1 and figure("pdp_errors").verdict == "not met"
    assert figure("deny_permit").value == pytest.approx(3 / 5)
    assert figure("latency_p50").value == 200  # 100 ×4, 200, 300, 400, 500: the upper median
    # refund decided by a policy every time; charge only by default deny
    assert figure("entitlement_coverage").value == pytest.approx(1 / 2)
    ingest = figure("audit_ingest")  # the checkpoint came at START + 1400
    assert ingest.value == pytest.approx(1400 - 10)
    assert ingest.verdict == "not met"
    assert figure("token_issuance").verdict == "not measured"
    assert (figure("drift_incidents").value, figure("drift_incidents").verdict) == (1, "not met")


def test_drift_unchecked_is_not_measured(engine: Engine) -> None:
    card = compute_scorecard(engine, shop(), PERIOD, now=NOW, drift_checked=False)
    drift = card.figure("drift_incidents")
    assert drift.verdict == "not measured" and "drift_check_seconds" in drift.to_measure


def test_hygiene_and_maturity(card: tuple[Engine, Scorecard]) -> None:
    _, scorecard = card
    assert scorecard.figure("exceptions_overdue").value == 1
    assert scorecard.figure("exceptions_open").value == 1
    assert "1 expiring within 7 days" in scorecard.figure("exceptions_open").evidence
    assert scorecard.figure("breakglass_overdue").value == 1
    stages = {stage.pillar: stage for stage in scorecard.stages}
    assert stages["Identity"].stage == "Traditional"  # MFA on privileged actions is not 100%
    assert stages["Data"].stage == "Traditional"
    assert stages["Data"].evidence[0].startswith("not measured")
    assert stages["Visibility and Analytics"].stage == "Initial"  # ingest over 30 s
    assert {s.pillar for s in scorecard.stages} >= {
        "Identity",
        "Devices",
        "Networks",
        "Applications and Workloads",
        "Data",
    }


def test_reports_and_snapshots(card: tuple[Engine, Scorecard]) -> None:
    engine, scorecard = card
    markdown = render_markdown(scorecard)
    for figure in scorecard.figures:
        assert figure.title in markdown
    october = compute_scorecard(engine, shop(), "2026-10", now=NOW)
    assert october.figure("deny_permit").value == 0  # one allow in October, no deny
    save_snapshot(engine, october)
    save_snapshot(engine, scorecard)
    save_snapshot(engine, scorecard)  # computing a month again replaces it
    history = load_snapshots(engine)
    assert [h["period"] for h in history] == ["2026-10", "2026-11"]
    page = render_html(scorecard, history)
    assert page.count("<polyline") >= 3, "a trend line where both months have a value"
    assert "http://" not in page and "https://" not in page, "nothing fetched when it opens"
    assert "<script" not in page


@pytest.mark.parametrize("period", ["2026-13", "November", "2026-1", ""])
def test_periods_are_months(period: str) -> None:
    with pytest.raises(ScorecardError, match="YYYY-MM"):
        parse_period(period)
