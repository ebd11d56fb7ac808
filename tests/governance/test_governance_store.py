"""Governance against a real store (SQLite and PostgreSQL), with a clock the tests move:
JIT requests and approvals, break-glass and its review, the exception register, revocation,
expiry, and notifications through the outbox."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from tests.conftest import SHOP
from trustplane.decision.loader import LoadOptions, load_bundle
from trustplane.decision.policy_bundle import Bundle, BundleSource
from trustplane.governance.catalog import BUNDLE_FILES
from trustplane.governance.outbox import Outbox, WebhookFormat, backoff, webhook_body
from trustplane.governance.records import Actor, Conflict, GovernanceError, NotFound, Refused
from trustplane.governance.service import Governance
from trustplane.model import AccessRequest, EntityRef
from trustplane.telemetry.metrics import Metrics

START = 1_800_000_000.0
BOB = Actor('User::"bob"', 'User::"bob"')  # developer
ALICE = Actor('User::"alice"', 'User::"alice"')  # sre
CAROL = Actor('User::"carol"', 'User::"carol"')  # security
ERIN = Actor('User::"erin"', 'User::"erin"')  # support
BOOTSTRAP = Actor("bootstrap", None, bootstrap=True)
SRE = 'Role::"sre"'
SECURITY = 'Role::"security"'


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Hook:
    """A webhook that fails while `down`, recording what it was sent."""

    def __init__(self) -> None:
        self.down = False
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, url: str, body: dict[str, Any]) -> int:
        if self.down:
            raise OSError("connection refused")
        self.bodies.append(body)
        return 204


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(BundleSource.from_dir(SHOP), LoadOptions(extra_files=BUNDLE_FILES)).bundle


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hook() -> Hook:
    return Hook()


@pytest.fixture
def gov(engine: Engine, bundle: Bundle, clock: Clock, hook: Hook) -> Governance:
    governance = Governance(
        engine, lambda: bundle, Metrics(), webhook_url="http://hook.test/", clock=clock, post=hook
    )
    governance.state.refresh()
    return governance


def logs(principal: str = "bob") -> AccessRequest:
    return AccessRequest(
        EntityRef("User", principal),
        EntityRef("Action", "ops:read-logs"),
        EntityRef("Service", "checkout"),
        {"mfa": True, "auth_age_seconds": 60, "risk_score": 10},
    )


def events(gov: Governance, hook: Hook) -> list[str]:
    gov.outbox.deliver_due()
    return [b["event"] for b in hook.bodies]


# -- JIT access --------------------------------------------------------------------------------


def test_an_approved_request_becomes_a_grant_that_applies_until_it_expires(
    gov: Governance, clock: Clock, hook: Hook
) -> None:
    asked = gov.access.request(BOB, SRE, 7200, "INC-42 checkout errors", "INC-42")
    assert asked.status == "pending" and asked.approvals_required == 1
    assert gov.state.elevation(logs()) is None, "nothing applies before approval"
    decided, grant = gov.access.approve(ALICE, asked.id, "go")
    assert grant is not None and decided.status == "approved" and decided.grant_id == grant.id
    assert grant.starts_at == START and grant.expires_at == START + 7200
    gov.state.refresh()
    elevation = gov.state.elevation(logs())
    assert elevation is not None and [g.grant_id for g in elevation.grants] == [grant.id]
    assert gov.state.elevation(logs("alice")) is None
    assert events(gov, hook) == ["access.requested", "access.approved"]
    clock.now = START + 7200
    assert not gov.access.grant(grant.id).active(clock.now)
    gov.tick()
    assert events(gov, hook)[-1] == "access.expired"


@pytest.mark.parametrize(
    ("actor", "role", "seconds", "reason", "ticket", "error", "match"),
    [
        (BOB, 'Role::"root"', 3600, "r", "t", GovernanceError, "not requestable"),
        (BOB, SRE, 5 * 3600, "r", "t", GovernanceError, "over the maximum of 4h"),
        (BOB, SRE, 0, "r", "t", GovernanceError, "longer than zero"),
        (BOB, SRE, 3600, "", "t", GovernanceError, "reason is required"),
        (BOB, SRE, 3600, "r", "", GovernanceError, "ticket is required"),
        (ERIN, SRE, 3600, "r", "t", Refused, "may not request"),
        (BOOTSTRAP, SRE, 3600, "r", "t", Refused, "bootstrap token"),
    ],
)
def test_bad_requests_are_refused_naming_the_problem(
    gov: Governance,
    actor: Actor,
    role: str,
    seconds: int,
    reason: str,
    ticket: str,
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        gov.access.request(actor, role, seconds, reason, ticket)
    assert gov.access.find() == [], "nothing is stored from a refused request"


def test_approvals_never_come_from_the_requester_or_outsiders(gov: Governance) -> None:
    asked = gov.access.request(BOB, SRE, 3600, "deploy", "CHG-1")
    with pytest.raises(Refused, match="their own request"):
        gov.access.approve(BOB, asked.id)
    with pytest.raises(Refused, match="may not approve"):
        gov.access.approve(CAROL, asked.id)  # security is not an approver of sre
    with pytest.raises(Refused, match="bootstrap token"):
        gov.access.approve(BOOTSTRAP, asked.id)
    assert gov.access.get(asked.id).status == "pending"
    gov.access.approve(ALICE, asked.id)
    with pytest.raises(Conflict, match="already approved"):
        gov.access.approve(ALICE, asked.id)
    with pytest.raises(Conflict, match="already approved"):
        gov.access.deny(ALICE, asked.id, "changed my mind")
    with pytest.raises(NotFound):
        gov.access.approve(ALICE, "no-such-request")


def test_tier0_needs_two_distinct_approvers(gov: Governance) -> None:
    asked = gov.access.request(ERIN, SECURITY, 1800, "fraud investigation", "SEC-7")
    assert asked.approvals_required == 2
    first, grant = gov.access.approve(CAROL, asked.id)
    assert grant is None and first.status == "pending"
    with pytest.raises(Conflict, match="already decided"):
        gov.access.approve(CAROL, asked.id)
    second, grant = gov.access.approve(ALICE, asked.id)
    assert grant is not None and second.status == "approved"
    assert {a["approver"] for a in second.approvals} == {CAROL.name, ALICE.name}


def test_a_pending_request_expires_unreviewed(gov: Governance, clock: Clock, hook: Hook) -> None:
    asked = gov.access.request(BOB, SRE, 3600, "deploy", "CHG-2")
    clock.now = asked.expires_at
    with pytest.raises(Conflict, match="expired unreviewed"):
        gov.access.approve(ALICE, asked.id)
    assert gov.access.get(asked.id).status == "expired"
    assert "access.expired" in events(gov, hook)
    again = gov.access.request(BOB, SRE, 3600, "deploy, again", "CHG-2")
    assert again.id != asked.id, "an expired request does not block a new one"


def test_a_second_pending_request_for_the_same_role_is_refused(gov: Governance) -> None:
    first = gov.access.request(BOB, SRE, 3600, "deploy", "CHG-3")
    with pytest.raises(Conflict, match=first.id):
        gov.access.request(BOB, SRE, 1800, "deploy", "CHG-3")


def test_a_denied_request_grants_nothing(gov: Governance, hook: Hook) -> None:
    asked = gov.access.request(BOB, SRE, 3600, "curious", "CHG-4")
    with pytest.raises(GovernanceError, match="reason"):
        gov.access.deny(ALICE, asked.id, " ")
    denied = gov.access.deny(ALICE, asked.id, "not on call")
    assert denied.status == "denied" and denied.grant_id is None
    with pytest.raises(Conflict, match="already denied"):
        gov.access.approve(ALICE, asked.id)
    assert "access.denied" in events(gov, hook)


def test_revoking_a_grant_is_idempotent_and_stops_it(gov: Governance, hook: Hook) -> None:
    asked = gov.access.request(BOB, SRE, 3600, "deploy", "CHG-5")
    _, grant = gov.access.approve(ALICE, asked.id)
    assert grant is not None
    gov.state.refresh()
    assert gov.state.elevation(logs()) is not None
    revoked, created = gov.access.revoke(CAROL, grant.id, "done early")
    again, created_again = gov.access.revoke(CAROL, grant.id, "again")
    assert created and not created_again
    assert again.revoked_at == revoked.revoked_at and again.revoke_reason == "done early"
    gov.state.refresh()
    assert gov.state.elevation(logs()) is None
    assert events(gov, hook).count("access.revoked") == 1
    with pytest.raises(NotFound):
        gov.access.revoke(CAROL, "no-such-grant", "r")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(["erin", "bob", "alice", "carol", "dave"]), max_size=6))
def test_a_tier0_grant_exists_only_after_two_distinct_eligible_approvers(
    gov: Governance, approvers: list[str]
) -> None:
    """Whatever order and repetition, the requester never counts and the grant appears exactly
    when two distinct approvers (security or sre) other than the requester have approved."""
    asked = gov.access.request(ERIN, SECURITY, 600, "investigation", "SEC-9")
    counted: set[str] = set()
    for name in approvers:
        actor = Actor(f'User::"{name}"', f'User::"{name}"')
        try:
            _, grant = gov.access.approve(actor, asked.id)
        except (Refused, Conflict):
            grant = None
        else:
            counted.add(name)
        assert counted <= {"alice", "carol"}
        assert (grant is not None) == (len(counted) == 2)
        if grant is not None:
            break
    state = gov.access.get(asked.id)
    assert (state.status == "approved") == (counted == {"alice", "carol"})
    assert all(a["approver"] != ERIN.name for a in state.approvals)
    if state.status == "pending":  # make room for the next example's request
        gov.access.deny(CAROL if "carol" not in counted else ALICE, asked.id, "cleanup")


# -- break-glass -------------------------------------------------------------------------------


def test_break_glass_is_short_loud_and_reviewed_by_someone_else(
    gov: Governance, clock: Clock, hook: Hook
) -> None:
    with pytest.raises(GovernanceError, match="hard cap of 30m"):
        gov.break_glass.open(ALICE, "payments-db", "db on fire", 3600)
    with pytest.raises(Refused, match="may not open"):
        gov.break_glass.open(CAROL, "payments-db", "db on fire")
    with pytest.raises(GovernanceError, match="no break-glass profile"):
        gov.break_glass.open(ALICE, "root", "db on fire")
    with pytest.raises(GovernanceError, match="reason"):
        gov.break_glass.open(ALICE, "payments-db", " ")
    session, review = gov.break_glass.open(ALICE, "payments-db", "INC-9 payments db locked")
    assert session.expires_at - session.starts_at == 1800, "the profile's cap by default"
    assert review.due_at == START + 48 * 3600
    with pytest.raises(Conflict, match="already has payments-db open"):
        gov.break_glass.open(ALICE, "payments-db", "again")
    gov.state.refresh()
    held = gov.state.elevation(logs("alice"))
    assert held is not None and held.grants[0].parent_id == "break-glass-payments-db"
    assert "break_glass.opened" in events(gov, hook)
    assert "BREAK-GLASS" in hook.bodies[-1]["text"]

    clock.now = review.due_at + 1
    assert gov.break_glass.overdue_count() == 1
    assert [g.id for g, _ in gov.break_glass.sessions(overdue_only=True)] == [session.id]
    with pytest.raises(Refused, match="someone else"):
        gov.break_glass.review(ALICE, session.id, "all fine")
    with pytest.raises(GovernanceError, match="notes"):
        gov.break_glass.review(CAROL, session.id, "")
    closed = gov.break_glass.review(CAROL, session.id, "lock cleared; runbook updated")
    assert closed.closed_by == CAROL.name
    with pytest.raises(Conflict, match="already closed"):
        gov.break_glass.review(BOB, session.id, "me too")
    assert gov.break_glass.overdue_count() == 0


def test_a_break_glass_session_can_be_revoked(gov: Governance) -> None:
    session, _ = gov.break_glass.open(BOB, "payments-db", "INC-10", 600)
    _, created = gov.access.revoke(CAROL, session.id, "incident over")
    assert created
    gov.state.refresh()
    assert gov.state.elevation(logs("bob")) is None


# -- exceptions --------------------------------------------------------------------------------

EXCEPTION = {
    "policy_id": "forbid-elevated-risk-on-tier0",
    "principal": 'Service::"reconciler"',
    "action": "customers:export",
    "resource": 'Dataset::"customers-pii"',
    "owner": "finance",
    "reason": "billing migration backfill",
    "ticket": "FIN-2291",
    "duration_seconds": 7 * 86400,
}


def export(risk: int = 50) -> AccessRequest:
    return AccessRequest(
        EntityRef("Service", "reconciler"),
        EntityRef("Action", "customers:export"),
        EntityRef("Dataset", "customers-pii"),
        {"mfa": False, "auth_age_seconds": 1800, "risk_score": risk},
    )


def test_a_tier0_exception_needs_two_approvers_from_security(gov: Governance) -> None:
    item = gov.exceptions.create(BOB, **EXCEPTION)  # type: ignore[arg-type]
    assert item.status == "pending" and item.approvals_required == 2, "Tier 0 policy"
    assert item.action == 'Action::"customers:export"'
    with pytest.raises(Refused, match="their own"):
        gov.exceptions.approve(BOB, item.id)
    with pytest.raises(Refused, match="may not approve exceptions"):
        gov.exceptions.approve(ALICE, item.id)  # approvers: security
    assert gov.exceptions.approve(CAROL, item.id).status == "pending"
    with pytest.raises(Conflict, match="already approved"):
        gov.exceptions.approve(CAROL, item.id)
    stranger = Actor('User::"mallory"', 'User::"mallory"')  # in no role of the bundle
    with pytest.raises(Refused, match="may not approve exceptions"):
        gov.exceptions.approve(stranger, item.id)
    assert gov.exceptions.get(item.id).status == "pending", "one of two approvals so far"


def test_exceptions_need_a_forbid_an_owner_and_an_end(gov: Governance) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"policy_id": "nope"}, "no policy"),
        ({"policy_id": "support-refunds-with-mfa"}, "is a permit"),
        ({"duration_seconds": 0}, "needs an expiry"),
        ({"duration_seconds": 91 * 86400}, "over the cap of 90d"),
        ({"owner": " "}, "owner is required"),
        ({"ticket": ""}, "ticket is required"),
        ({"principal": "reconciler"}, "expected Type"),
    ]
    for change, match in cases:
        with pytest.raises(GovernanceError, match=match):
            gov.exceptions.create(BOB, **{**EXCEPTION, **change})  # type: ignore[arg-type]
    assert gov.exceptions.find() == []


def test_a_tier1_exception_applies_expires_and_revokes(
    gov: Governance, clock: Clock, hook: Hook
) -> None:
    item = gov.exceptions.create(
        ALICE,
        **{**EXCEPTION, "policy_id": "forbid-high-risk", "duration_seconds": 10 * 86400},  # type: ignore[arg-type]
    )
    assert item.approvals_required == 1
    approved = gov.exceptions.approve(CAROL, item.id, "ok for the migration")
    assert approved.status == "approved" and approved.expires_at == START + 10 * 86400
    gov.state.refresh()
    held = gov.state.elevation(export(90))
    assert held is not None and [e.exception_id for e in held.exceptions] == [item.id]
    other_flow = AccessRequest(
        EntityRef("Service", "reconciler"),
        EntityRef("Action", "billing:read"),
        EntityRef("Dataset", "billing-reports"),
        {},
    )
    assert gov.state.elevation(other_flow) == type(held)((), ()), "scoped to the flow"
    assert [e.id for e in gov.exceptions.find(expiring_within=7 * 86400)] == []
    clock.now = START + 4 * 86400
    assert [e.id for e in gov.exceptions.find(expiring_within=7 * 86400)] == [item.id]
    revoked, created = gov.exceptions.revoke(CAROL, item.id, "migration done")
    _, again = gov.exceptions.revoke(CAROL, item.id, "migration done")
    assert created and not again and revoked.revoked_at is not None
    gov.state.refresh()
    assert gov.state.elevation(export(90)) is None
    assert {"exception.requested", "exception.approved", "exception.revoked"} <= set(
        events(gov, hook)
    )


# -- the outbox --------------------------------------------------------------------------------


def test_notifications_survive_a_crash_and_are_retried_with_backoff(
    engine: Engine, gov: Governance, clock: Clock, hook: Hook, bundle: Bundle
) -> None:
    hook.down = True
    asked = gov.access.request(BOB, SRE, 3600, "deploy", "CHG-6")
    gov.access.approve(ALICE, asked.id)
    assert gov.outbox.deliver_due() == 0
    pending = gov.outbox.pending()
    assert [p["event"] for p in pending] == ["access.requested", "access.approved"]
    assert all(p["attempts"] == 1 and "connection refused" in p["last_error"] for p in pending)
    # "Crash": a new process with a new outbox finds the same notifications.
    hook.down = False
    fresh = Outbox(engine, "http://hook.test/", clock=clock, post=hook)
    assert fresh.deliver_due() == 0, "not before the backoff has passed"
    clock.now += backoff(1)
    assert fresh.deliver_due() == 2
    assert [b["event"] for b in hook.bodies] == ["access.requested", "access.approved"]
    assert fresh.pending() == []
    assert backoff(1) == 1 and backoff(4) == 8 and backoff(50) == 300


def test_slack_bodies_carry_only_text() -> None:
    body = webhook_body({"event": "access.approved", "text": "bob holds sre"}, WebhookFormat.SLACK)
    assert body == {"text": "[trustplane] access.approved: bob holds sre"}
