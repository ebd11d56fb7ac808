"""The evaluator against a naive oracle, over random schema-conformant worlds and policy sets.

The oracle spells out the decision rules in the plainest terms: default deny, forbid beats
permit, only enforce-mode policies count for the enforced answer, every policy for the shadow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trustplane.decision.engine import Evaluator
from trustplane.decision.policy_bundle import BundleSource, compile_bundle
from trustplane.model import AccessRequest, Effect, EntityRef

SCHEMA = """
entity Group;
entity User in [Group] { level: Long };
entity Doc { owner: User, tier: Long };
action read, write appliesTo {
  principal: User, resource: Doc, context: { flag: Bool, risk: Long }
};
"""


@dataclass(frozen=True)
class User:
    id: str
    level: int
    groups: frozenset[str]


@dataclass(frozen=True)
class Doc:
    id: str
    owner: str
    tier: int


@dataclass(frozen=True)
class Policy:
    id: str
    effect: str  # permit | forbid
    mode: str  # enforce | observe
    principal: tuple[str, str | None]  # ("any"|"eq"|"in", id)
    action: str  # any | read | read-or-write
    resource: str | None  # None: any; else a Doc id
    condition: tuple[str, int | None]  # ("none"|"flag"|"risk"|"tier"|"owner", K)

    def cedar(self) -> str:
        kind, target = self.principal
        principal = {
            "any": "principal",
            "eq": f'principal == User::"{target}"',
            "in": f'principal in Group::"{target}"',
        }[kind]
        action = {
            "any": "action",
            "read": 'action == Action::"read"',
            "read-or-write": 'action in [Action::"read", Action::"write"]',
        }[self.action]
        resource = "resource" if self.resource is None else f'resource == Doc::"{self.resource}"'
        cond_kind, k = self.condition
        when = {
            "none": "",
            "flag": " when { context.flag }",
            "risk": f" when {{ context.risk > {k} }}",
            "tier": " when { resource.tier <= principal.level }",
            "owner": " when { resource.owner == principal }",
        }[cond_kind]
        return (
            f'@id("{self.id}") @owner("team") @mode("{self.mode}")\n'
            f"{self.effect}({principal}, {action}, {resource}){when};\n"
        )


@dataclass(frozen=True)
class Request:
    user: str
    action: str
    doc: str
    flag: bool
    risk: int
    level_override: int | None
    tier_override: int | None


@dataclass(frozen=True)
class World:
    groups: tuple[str, ...]
    users: tuple[User, ...]
    docs: tuple[Doc, ...]
    policies: tuple[Policy, ...]
    requests: tuple[Request, ...]


@st.composite
def worlds(draw: st.DrawFn) -> World:
    groups = tuple(f"g{i}" for i in range(draw(st.integers(1, 2))))
    users = tuple(
        User(
            f"u{i}",
            draw(st.integers(0, 3)),
            frozenset(draw(st.sets(st.sampled_from(groups), max_size=len(groups)))),
        )
        for i in range(draw(st.integers(1, 3)))
    )
    user_ids = [u.id for u in users]
    docs = tuple(
        Doc(f"d{i}", draw(st.sampled_from(user_ids)), draw(st.integers(0, 3)))
        for i in range(draw(st.integers(1, 3)))
    )
    doc_ids = [d.id for d in docs]
    policies = []
    for index in range(draw(st.integers(1, 8))):
        principal = draw(
            st.sampled_from(["any", "eq", "in"]).flatmap(
                lambda kind: (
                    st.just((kind, None))
                    if kind == "any"
                    else st.tuples(
                        st.just(kind), st.sampled_from(user_ids if kind == "eq" else list(groups))
                    )
                )
            )
        )
        condition_kind = draw(st.sampled_from(["none", "flag", "risk", "tier", "owner"]))
        policies.append(
            Policy(
                id=f"p{index}",
                effect=draw(st.sampled_from(["permit", "forbid"])),
                mode=draw(st.sampled_from(["enforce", "observe"])),
                principal=principal,
                action=draw(st.sampled_from(["any", "read", "read-or-write"])),
                resource=draw(st.none() | st.sampled_from(doc_ids)),
                condition=(
                    condition_kind,
                    draw(st.integers(0, 10)) if condition_kind == "risk" else None,
                ),
            )
        )
    requests = draw(
        st.lists(
            st.builds(
                Request,
                user=st.sampled_from(user_ids),
                action=st.sampled_from(["read", "write"]),
                doc=st.sampled_from(doc_ids),
                flag=st.booleans(),
                risk=st.integers(0, 10),
                level_override=st.none() | st.integers(0, 3),
                tier_override=st.none() | st.integers(0, 3),
            ),
            min_size=1,
            max_size=6,
        )
    )
    return World(groups, users, docs, tuple(policies), tuple(requests))


def bundle_files(world: World) -> dict[str, bytes]:
    entities: list[dict[str, Any]] = [
        {"uid": {"type": "Group", "id": g}, "attrs": {}, "parents": []} for g in world.groups
    ]
    entities += [
        {
            "uid": {"type": "User", "id": u.id},
            "attrs": {"level": u.level},
            "parents": [{"type": "Group", "id": g} for g in sorted(u.groups)],
        }
        for u in world.users
    ]
    entities += [
        {
            "uid": {"type": "Doc", "id": d.id},
            "attrs": {"owner": {"__entity": {"type": "User", "id": d.owner}}, "tier": d.tier},
            "parents": [],
        }
        for d in world.docs
    ]
    return {
        "schema.cedarschema": SCHEMA.encode(),
        "entities.json": json.dumps(entities).encode(),
        "policies.cedar": "\n".join(p.cedar() for p in world.policies).encode(),
    }


# -- the oracle ---------------------------------------------------------------------------------


def satisfied(policy: Policy, world: World, request: Request) -> bool:
    user = next(u for u in world.users if u.id == request.user)
    doc = next(d for d in world.docs if d.id == request.doc)
    level = user.level if request.level_override is None else request.level_override
    tier = doc.tier if request.tier_override is None else request.tier_override
    kind, target = policy.principal
    if kind == "eq" and user.id != target:
        return False
    if kind == "in" and target not in user.groups:
        return False
    if policy.action == "read" and request.action != "read":
        return False
    if policy.resource is not None and policy.resource != doc.id:
        return False
    cond, k = policy.condition
    return {
        "none": True,
        "flag": request.flag,
        "risk": k is not None and request.risk > k,
        "tier": tier <= level,
        "owner": doc.owner == user.id,
    }[cond]


def oracle(policies: list[Policy], world: World, request: Request) -> tuple[Effect, set[str]]:
    holding = [p for p in policies if satisfied(p, world, request)]
    forbids = {p.id for p in holding if p.effect == "forbid"}
    permits = {p.id for p in holding if p.effect == "permit"}
    if forbids:
        return Effect.DENY, forbids
    if permits:
        return Effect.ALLOW, permits
    return Effect.DENY, set()


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_evaluator_agrees_with_the_oracle(world: World) -> None:
    # With a small cache: every request is asked twice, so answers also come from the cache.
    evaluator = Evaluator(compile_bundle(BundleSource(bundle_files(world))), cache_size=8)
    enforced_policies = [p for p in world.policies if p.mode == "enforce"]
    modes = {p.id: p.mode for p in world.policies}
    for request in [r for r in world.requests for _ in range(2)]:
        decision = evaluator.evaluate(
            AccessRequest(
                EntityRef(
                    "User",
                    request.user,
                    None if request.level_override is None else {"level": request.level_override},
                ),
                EntityRef("Action", request.action),
                EntityRef(
                    "Doc",
                    request.doc,
                    None if request.tier_override is None else {"tier": request.tier_override},
                ),
                {"flag": request.flag, "risk": request.risk},
            )
        )
        effect, determining = oracle(enforced_policies, world, request)
        shadow_effect, shadow_determining = oracle(list(world.policies), world, request)
        assert decision.errors == ()
        assert decision.effect is effect, request
        assert {r.policy_id for r in decision.reasons} == determining, request
        assert decision.shadow_effect is shadow_effect, request
        assert {r.policy_id for r in decision.shadow_reasons} == shadow_determining, request
        changes = {r.policy_id for r in decision.shadow_changes}
        assert (changes == set()) == (effect is shadow_effect), request
        assert changes <= shadow_determining
        assert all(modes[p] == "observe" for p in changes)
        assert all(r.mode == "enforce" for r in decision.reasons)
