"""The risk-aware decision cache: its rules alone (read groups, tiers, live requests), then
through a real server of the shop on each backend — the TTL each answer carries by tier and
risk, Tier 0 never answered from the evaluator's cache, and the metrics by tier and risk."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SHOP
from tests.support import Server, authzen, running_server
from trustplane.decision.epoch import CacheEpoch
from trustplane.decision.loader import LoadOptions, load_bundle
from trustplane.decision.point import reused
from trustplane.decision.policy_bundle import BundleSource
from trustplane.decision.risk_cache import (
    CacheRules,
    RiskCache,
    action_groups,
    members,
    most_critical,
)
from trustplane.model import AccessRequest, EntityRef, Evidence, refusal
from trustplane.trust.epoch import TrustEpoch
from trustplane.trust.policy import BUNDLE_FILES as TRUST_FILES

# -- the rules alone ---------------------------------------------------------------------------


def test_reads_are_the_members_of_the_read_group_through_nested_groups() -> None:
    schema = """
    // action "commented" in ["read"];
    action "read";
    action "list" in ["read"];
    action "browse", "peek" in [Action::"list"] appliesTo { principal: [U], resource: [R] };
    action "write" in ["admin"];
    """
    groups = action_groups(schema)
    assert members(groups, "read") == {"list", "browse", "peek"}
    assert members(groups, "admin") == {"write"}
    shop = action_groups((SHOP / "schema.cedarschema").read_text())
    assert members(shop, "read") == {
        "payments:read",
        "inventory:read",
        "billing:read",
        "ops:read-logs",
        "db:query",
    }


def test_the_most_critical_tier_wins_and_unknown_tiers_are_ignored() -> None:
    assert most_critical(["2", None, "1"]) == "1"
    assert most_critical(["2", "0"]) == "0"
    assert most_critical([None, "7"]) is None


def request(
    action: str, resource: tuple[str, str], principal: str = "User", **properties: Any
) -> AccessRequest:
    return AccessRequest(
        EntityRef(principal, "alice" if principal == "User" else "checkout"),
        EntityRef("Action", action),
        EntityRef(resource[0], resource[1], properties or None),
        {"mfa": True, "auth_age_seconds": 60},
    )


def shop_cache() -> tuple[RiskCache, Any]:
    loaded = load_bundle(
        BundleSource.from_dir(SHOP),
        LoadOptions(decision_cache_size=100, decision_ttl_seconds=60, extra_files=TRUST_FILES),
    )
    return RiskCache(CacheRules()), loaded


LOW: dict[str, Any] = {"score": 0, "level": "low", "signals": []}


def test_tier_0_high_risk_volatile_and_failed_assessments_are_live() -> None:
    cache, loaded = shop_cache()
    bundle = loaded.bundle
    assert cache.plan(request("payments:refund", ("Api", "payments.refund")), bundle, LOW).live
    logs = request("ops:read-logs", ("Service", "checkout"))
    assert cache.plan(logs, bundle, LOW).live is None
    assert cache.plan(logs, bundle, LOW).tier == "1"
    assert cache.plan(logs, bundle, {**LOW, "level": "high"}).live == "risk high"
    aged = {**LOW, "signals": [{"name": "auth_age", "value": 0.2}]}
    assert cache.plan(logs, bundle, aged).live == "volatile signal auth_age"
    observed = {**LOW, "signals": [{"name": "country", "value": 1.0}]}
    assert cache.plan(logs, bundle, observed).live is None, "a stable signal is in the key"
    assert cache.plan(logs, bundle, {**LOW, "error": "boom"}).live == "assessment failed"
    relabelled = request("ops:read-logs", ("Service", "checkout"), tier=0)
    assert cache.plan(relabelled, bundle, LOW).live == "tier 0", "the caller's tier counts too"


def test_ttl_by_tier_risk_and_read_and_never_past_the_token() -> None:
    cache, loaded = shop_cache()
    bundle, evaluator = loaded.bundle, loaded.evaluator

    def ttl(req: AccessRequest, assessment: dict[str, Any] | None = LOW) -> tuple[int, str]:
        plan = cache.plan(req, bundle, assessment)
        d = evaluator.evaluate(req)
        return cache.finish(
            plan, req, d.ttl_seconds, d.reasons, d.shadow_reasons, d.errors, bundle, time.time()
        )

    stock = request("inventory:read", ("Api", "inventory.stock"))
    assert ttl(stock) == (60, "2")
    assert ttl(stock, {**LOW, "level": "medium"}) == (5, "2"), "medium risk: the default bound"
    assert ttl(stock, None) == (5, "2"), "no assessment: not known to be low risk"
    reserve = request("inventory:reserve", ("Api", "inventory.reserve"), "Service")
    assert ttl(reserve) == (5, "1"), "a write: the default bound"
    refund = request("payments:refund", ("Api", "payments.refund"))
    assert ttl(refund) == (0, "0")
    expiring = AccessRequest(
        stock.principal,
        stock.action,
        stock.resource,
        stock.context,
        Evidence({"exp": time.time() + 7}, "127.0.0.1", False, "token"),
    )
    assert ttl(expiring)[0] in (6, 7), "an answer never outlives the token it rested on"


# -- through a real server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("state"), module_database_url, SHOP, policy__watch="false"
    ) as srv:
        yield srv


CTX = {"mfa": True, "auth_age_seconds": 60}


def ask(server: Server, principal: str, action: str, resource: tuple[str, str]) -> Any:
    answer = server.client.post(
        "/access/v1/evaluation", json=authzen(("User", principal), action, resource, CTX)
    )
    assert answer.status_code == 200, answer.text
    return {**answer.json()["context"], "allowed": answer.json()["decision"]}


def lookups(server: Server) -> dict[tuple[str, str, str], float]:
    text = server.client.get("/metrics").text
    found: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "trustplane_decision_cache_lookups":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    found[(labels["tier"], labels["risk"], labels["result"])] = sample.value
    return found


def test_answers_carry_the_ttl_of_their_tier_and_risk(server: Server) -> None:
    read = ask(server, "alice", "ops:read-logs", ("Service", "checkout"))
    assert read["allowed"] and read["ttl_seconds"] == 15
    assert read["cache"] == {"tier": "1", "risk": "low", "live": None}
    assert read["cache_epoch"] >= read["revocation_epoch"]
    stock = ask(server, "bob", "inventory:read", ("Api", "inventory.stock"))
    assert stock["ttl_seconds"] == 60 and stock["cache"]["tier"] == "2"
    refund = ask(server, "dave", "payments:refund", ("Api", "payments.refund"))
    assert refund["ttl_seconds"] == 0 and refund["cache"]["live"] == "tier 0"


def test_tier_0_is_never_answered_from_the_cache(server: Server) -> None:
    before = lookups(server)
    answers = [ask(server, "carol", "db:query", ("Database", "payments-db-prod")) for _ in range(3)]
    assert not any(a["cached"] for a in answers)
    assert all(a["ttl_seconds"] == 0 for a in answers)
    reads = [ask(server, "bob", "inventory:read", ("Api", "inventory.stock")) for _ in range(3)]
    assert reads[-1]["cached"], "a low-risk Tier 2 read is"
    after = lookups(server)
    tier0_live = after.get(("0", "low", "live"), 0) - before.get(("0", "low", "live"), 0)
    assert tier0_live == 3
    assert after.get(("0", "low", "hit"), 0) == 0
    assert after.get(("2", "low", "hit"), 0) - before.get(("2", "low", "hit"), 0) >= 2


def test_the_epoch_endpoint_answers_at_once_or_after_its_wait(server: Server) -> None:
    now = server.client.get("/access/v1/epoch")
    assert now.status_code == 200 and now.headers["cache-control"] == "no-store"
    epoch = now.json()["epoch"]
    assert set(now.json()["parts"]) == {"revocations", "governance", "bundles", "trust"}
    assert epoch == sum(now.json()["parts"].values())
    held = server.client.get("/access/v1/epoch", params={"after": epoch, "wait": 0.2})
    assert held.status_code == 200 and held.json()["epoch"] == epoch
    passed = server.client.get("/access/v1/epoch", params={"after": max(0, epoch - 1)})
    assert passed.json()["epoch"] == epoch
    for bad in ({"after": "x"}, {"after": "-5"}, {"wait": "soon"}, {"wait": "nan"}):
        refused = server.client.get("/access/v1/epoch", params=bad)
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")


def test_an_activation_moves_the_epoch(database_url: str, shop_copy: Path, tmp_path: Path) -> None:
    with running_server(tmp_path / "state", database_url, shop_copy, policy__watch="false") as srv:
        before = srv.client.get("/access/v1/epoch").json()
        with (shop_copy / "humans.cedar").open("a") as policies:
            policies.write("\n// a new revision\n")
        reloaded = srv.client.post("/v1/bundle/reload", headers=srv.admin)
        assert reloaded.status_code == 200, reloaded.text
        after = srv.client.get(
            "/access/v1/epoch", params={"after": before["epoch"], "wait": 5}
        ).json()
    assert after["parts"]["bundles"] > before["parts"]["bundles"]
    assert after["epoch"] > before["epoch"]


# -- invariants --------------------------------------------------------------------------------

NAMES = st.sampled_from([f"a{i}" for i in range(8)])


@given(st.dictionaries(NAMES, st.frozensets(NAMES, max_size=3), max_size=8), NAMES)
def test_members_is_the_transitive_closure_of_the_groups(
    groups: dict[str, frozenset[str]], group: str
) -> None:
    found = members(groups, group)
    # Every member reaches the group through its parents ...
    for action in found:
        seen, frontier = set(), {action}
        while frontier and group not in frontier:
            seen |= frontier
            frontier = {p for a in frontier for p in groups.get(a, frozenset())} - seen
        assert group in frontier
    # ... and nothing outside is declared in a member or in the group itself.
    for action, parents in groups.items():
        if parents & (found | {group}):
            assert action in found


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 50)), max_size=30))
def test_the_epoch_never_goes_back(moves: list[tuple[str, int]]) -> None:
    trust = TrustEpoch()
    versions = {"a": 0, "b": 0, "c": 0}
    epoch = CacheEpoch({name: (lambda n=name: versions[n]) for name in versions})
    epoch.add("trust", lambda: trust.value)
    last = epoch.value
    for name, version in moves:
        versions[name] = max(versions[name], version)  # store versions only grow
        trust.advance(name, version)
        assert epoch.value >= last
        last = epoch.value


def test_a_long_poll_wakes_when_another_thread_moves_the_epoch() -> None:
    version = [3]
    epoch = CacheEpoch({"revocations": lambda: version[0]})

    async def scenario() -> tuple[int, int]:
        held = await epoch.wait_past(3, 0.05)  # nothing moves: the current epoch, unchanged
        loop = asyncio.get_running_loop()

        def revoke() -> None:
            version[0] = 4
            epoch.changed()

        loop.call_later(0.05, lambda: threading.Thread(target=revoke).start())
        return held, await epoch.wait_past(3, 30)

    held, moved = asyncio.run(scenario())
    assert held == 3 and moved == 4


def test_a_refusal_rebuilt_with_its_epoch_carries_every_field() -> None:
    """`point.reused` builds its Decision field by field: a new field must be carried too."""
    decision = refusal("principal_revoked: test", "rev", 3)
    again = reused(decision, 7, 9, {"tier": None, "risk": "low", "live": None})
    assert again == dataclasses.replace(
        decision, ttl_seconds=7, cache_epoch=9, cache={"tier": None, "risk": "low", "live": None}
    )


def test_closing_answers_every_long_poll_at_once() -> None:
    epoch = CacheEpoch({"revocations": lambda: 5})

    async def scenario() -> list[int]:
        polls = [asyncio.ensure_future(epoch.wait_past(5, 30)) for _ in range(3)]
        await asyncio.sleep(0.05)
        epoch.close()  # the server is shutting down
        return [*await asyncio.gather(*polls), await epoch.wait_past(5, 30)]

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == [5, 5, 5, 5]
