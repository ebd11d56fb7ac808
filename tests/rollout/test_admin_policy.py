"""Who the shipped admin policies let read the rollout gates and label would-denies."""

from __future__ import annotations

from trustplane.server.admin_auth import AdminAuthorizer, AdminCaller, Target

AUTHZ = AdminAuthorizer()
ALICE = AdminCaller("person", 'User::"alice"', 'User::"alice"', ("sre",))
BOOT = AdminCaller("bootstrap", "bootstrap", None, ("bootstrap",))
ROBOT = AdminCaller("workload", "spiffe://trustplane.local/ops/deployer")
POLICY = Target("policy", "forbid-large-refunds", tier="0", owner="payments")


def allowed(caller: AdminCaller, action: str, target: Target) -> bool:
    return AUTHZ.authorize(caller, action, target).allowed


def test_people_read_and_label_workloads_do_neither() -> None:
    assert allowed(ALICE, "rollout:read", Target("rollout"))
    assert allowed(ALICE, "rollout:read", POLICY)
    assert allowed(ALICE, "rollout:label", POLICY)
    assert allowed(BOOT, "rollout:label", POLICY), "first setup"
    assert not allowed(ROBOT, "rollout:read", Target("rollout"))
    assert not allowed(ROBOT, "rollout:label", POLICY)


def test_the_platform_team_and_security_promote_other_people_do_not() -> None:
    platform = AdminCaller("person", 'User::"pat"', 'User::"pat"', ("platform",))
    security = AdminCaller("person", 'User::"carol"', 'User::"carol"', ("security",))
    assert allowed(platform, "rollout:promote", POLICY)
    assert allowed(security, "rollout:promote", POLICY)
    assert allowed(BOOT, "rollout:promote", POLICY), "first setup"
    assert not allowed(ALICE, "rollout:promote", POLICY), "an SRE reads and labels only"
    assert not allowed(ROBOT, "rollout:promote", POLICY)
