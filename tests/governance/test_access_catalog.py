"""access.yaml is part of the bundle: hashed into the revision, checked at load, every problem
located; and the admin Cedar policies shipped with trustplane say who may do what."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SHOP
from trustplane.decision.policy_bundle import BundleError, BundleSource, compile_bundle
from trustplane.governance.catalog import (
    BUNDLE_FILES,
    DurationError,
    access_catalog,
    parse_duration,
)
from trustplane.server.admin_auth import AdminAuthorizer, AdminCaller, AdminPolicyError, Target

GOOD = (SHOP / "access.yaml").read_text()


def compile_with(shop_copy: Path, text: str) -> list[str]:
    (shop_copy / "access.yaml").write_text(text)
    with pytest.raises(BundleError) as info:
        compile_bundle(BundleSource.from_dir(shop_copy), extra_files=BUNDLE_FILES)
    return [str(p) for p in info.value.problems]


def test_the_shop_declares_requestable_roles_profiles_and_exception_rules() -> None:
    bundle = compile_bundle(BundleSource.from_dir(SHOP), extra_files=BUNDLE_FILES)
    access = access_catalog(bundle)
    assert set(access.requestable) == {'Role::"sre"', 'Role::"security"'}
    sre = access.requestable['Role::"sre"']
    assert (sre.max_seconds, sre.approvals, sre.ticket_required) == (4 * 3600, 1, True)
    assert access.requestable['Role::"security"'].approvals == 2
    assert access.profiles["payments-db"].max_seconds == 1800
    assert access.exceptions.max_seconds == 90 * 86400
    assert access.member('User::"bob"', ['Role::"developer"'])
    assert not access.member('User::"bob"', ['Role::"sre"'])


def test_access_yaml_is_part_of_the_revision(shop_copy: Path) -> None:
    before = BundleSource.from_dir(shop_copy).revision
    (shop_copy / "access.yaml").write_text(GOOD.replace("max_duration: 4h", "max_duration: 2h"))
    assert BundleSource.from_dir(shop_copy).revision != before


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'role: Role::"sre"',
            'role: Role::"root"',
            r'access.yaml:6: .*Role::"root" is not an entity',
        ),
        ("max_duration: 30m", "max_duration: 2h", "over the cap of 1h"),
        ("approvals: 2", "approvals: 1", "Tier 0 access needs at least 2 approvals"),
        ("max_duration: 4h", "max_duration: forever", "is not a duration"),
        ("pending_ttl: 8h", "pending_tll: 8h", "unknown key 'pending_tll'"),
        ("exceptions:\n  max_duration: 90d", "exceptions:\n  max_duration: 400d", "over the cap"),
        ('requesters: [Role::"developer"]', "requesters: []", "non-empty list"),
    ],
)
def test_a_broken_access_yaml_refuses_the_bundle_naming_the_line(
    shop_copy: Path, old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    problems = compile_with(shop_copy, GOOD.replace(old, new, 1))
    assert any(re.search(expected, p) for p in problems), problems


@given(st.integers(1, 10_000), st.sampled_from("smhd"))
def test_durations_read_as_written(number: int, unit: str) -> None:
    assert (
        parse_duration(f"{number}{unit}") == number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    )


@pytest.mark.parametrize("bad", ["", "0h", "-1h", "1w", "h", "1.5h", True])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(bad)


# -- the admin policies ------------------------------------------------------------------------

AUTHZ = AdminAuthorizer()
ALICE = AdminCaller("person", 'User::"alice"', 'User::"alice"', ("sre",))
CAROL = AdminCaller("person", 'User::"carol"', 'User::"carol"', ("security",))
BOOT = AdminCaller("bootstrap", "bootstrap", None, ("bootstrap",))
ROBOT = AdminCaller("workload", "spiffe://trustplane.local/ops/deployer")


def allowed(caller: AdminCaller, action: str, target: Target) -> bool:
    return AUTHZ.authorize(caller, action, target).allowed


def test_the_shipped_admin_policies() -> None:
    own = Target("request", "r1", requester='User::"alice"', tier="1")
    other = Target("request", "r2", requester='User::"bob"', tier="1")
    assert not allowed(ALICE, "access:approve", own), "no self-approval"
    assert allowed(ALICE, "access:approve", other)
    assert not allowed(CAROL, "access:approve", Target("request", requester='User::"carol"'))
    tier0 = Target("exception", "x", requester='User::"bob"', tier="0")
    assert not allowed(ALICE, "exception:approve", tier0), "only security on Tier 0"
    assert allowed(CAROL, "exception:approve", tier0)
    assert not allowed(ALICE, "exception:request", Target("exception", tier="0"))
    assert allowed(ALICE, "exception:request", Target("exception", tier="1"))
    assert not allowed(ALICE, "breakglass:review", Target("session", opened_by='User::"alice"'))
    assert allowed(BOOT, "bundle:write", Target("bundle")), "first setup"
    assert not allowed(ALICE, "bundle:write", Target("bundle"))
    assert allowed(ROBOT, "ledger:read", Target("ledger")), "workloads witness the ledger"
    for action in ("bundle:read", "identity:read", "decisions:read", "attestation:read"):
        assert not allowed(ROBOT, action, Target(action.split(":")[0])), action
    assert not allowed(ROBOT, "revocation:write", Target("revocation"))
    assert not allowed(ALICE, "access:revoke", Target("grant", requester='User::"bob"'))
    assert allowed(ALICE, "access:revoke", Target("grant", requester='User::"alice"'))


def test_operator_admin_policies_replace_the_shipped_ones(tmp_path: Path) -> None:
    (tmp_path / "mine.cedar").write_text(
        '@id("only-carol")\npermit (principal == Caller::"User::\\"carol\\"", action, resource);\n'
    )
    mine = AdminAuthorizer(tmp_path)
    assert mine.authorize(CAROL, "bundle:write", Target("bundle")).allowed
    assert not mine.authorize(BOOT, "bundle:write", Target("bundle")).allowed


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, "no \\*.cedar files"),
        ('permit (principal, action == Action::"nuke", resource);', "do not validate"),
        ("permit (principal, action, resource) when { principal.rank > 1 };", "do not validate"),
    ],
)
def test_broken_admin_policies_stop_the_server_from_starting(
    tmp_path: Path, text: str | None, match: str
) -> None:
    if text is not None:
        (tmp_path / "bad.cedar").write_text(text)
    with pytest.raises(AdminPolicyError, match=match):
        AdminAuthorizer(tmp_path)
