"""outcomes/search.py against the evaluator: results equal the naive oracle (every candidate
evaluated), pages add up to the whole, tokens belong to their search."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import run_cli, write_bundle
from trustplane.decision.engine import Evaluator
from trustplane.decision.policy_bundle import BundleSource, compile_bundle
from trustplane.model import AccessRequest, Decision, EntityRef
from trustplane.outcomes.search import Query, SearchError, naive, search
from trustplane.outcomes.universe import build, parse_column_entity, schema_actions

SCHEMA = """
entity Group;
entity User in [Group] { level: Long, tag: String };
entity Doc { owner: String, secret: Bool };
action "read" appliesTo { principal: [User], resource: [Doc], context: {} };
action "write" appliesTo { principal: [User], resource: [Doc], context: {} };
action "delete" appliesTo { principal: [User], resource: [Doc], context: {} };
"""

POLICIES = """
@id("readers")
@owner("test")
permit (principal in Group::"readers", action == Action::"read", resource)
when { !resource.secret };

@id("owners")
@owner("test")
permit (principal, action in [Action::"read", Action::"write"], resource)
when { resource.owner == principal.tag || principal.level > 8 };

@id("no-delete-secret")
@owner("test")
forbid (principal, action == Action::"delete", resource) when { resource.secret };

@id("admins-delete")
@owner("test")
permit (principal in Group::"admins", action == Action::"delete", resource);
"""

USERS = 40
DOCS = 60


def _entities() -> str:
    import json

    items: list[dict[str, object]] = [
        {"uid": {"type": "Group", "id": g}, "attrs": {}, "parents": []}
        for g in ("readers", "admins")
    ]
    for i in range(USERS):
        parents = []
        if i % 3 == 0:
            parents.append({"type": "Group", "id": "readers"})
        if i % 7 == 0:
            parents.append({"type": "Group", "id": "admins"})
        items.append(
            {
                "uid": {"type": "User", "id": f"u{i:02d}"},
                "attrs": {"level": i % 10, "tag": str(i % 10)},
                "parents": parents,
            }
        )
    for j in range(DOCS):
        items.append(
            {
                "uid": {"type": "Doc", "id": f"d{j:02d}"},
                "attrs": {"owner": str(j % 10), "secret": j % 4 == 0},
                "parents": [],
            }
        )
    return json.dumps(items)


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> Evaluator:
    directory = write_bundle(
        tmp_path_factory.mktemp("bundle"),
        {
            "schema.cedarschema": SCHEMA,
            "policies.cedar": POLICIES,
            "entities.json": _entities(),
            "trustplane.yaml": "name: search-test\n",
        },
    )
    return Evaluator(compile_bundle(BundleSource.from_dir(Path(directory))))


def _evaluate(evaluator: Evaluator) -> Callable[[AccessRequest], Decision]:
    return lambda request: evaluator.evaluate(request)


def _all_pages(
    query: Query, universe: object, evaluate: object, limit: int
) -> list[dict[str, str]]:
    results: list[dict[str, str]] = []
    token = None
    while True:
        page = search(query, universe, evaluate, limit, token)  # type: ignore[arg-type]
        assert len(page.results) <= limit
        results.extend(page.results)
        if not page.next_token:
            return results
        assert len(page.results) == limit  # a page that says "more" is full
        token = page.next_token


def test_schema_actions_are_found() -> None:
    assert schema_actions(SCHEMA) == ["read", "write", "delete"]


def test_ledger_columns_parse() -> None:
    assert parse_column_entity('User::"a\\"b"') == ("User", 'a"b')
    assert parse_column_entity("not an entity") is None


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["subject", "resource", "action"]),
    who=st.integers(0, USERS + 5),
    what=st.integers(0, DOCS + 5),
    action=st.sampled_from(["read", "write", "delete", "unknown"]),
    limit=st.integers(1, 25),
    extra_users=st.lists(st.integers(USERS, USERS + 10), max_size=4),
)
def test_search_equals_naive_oracle(
    evaluator: Evaluator,
    kind: str,
    who: int,
    what: int,
    action: str,
    limit: int,
    extra_users: list[int],
) -> None:
    """Over any universe (bundle entities plus ids only the ledger knows), paged results are
    exactly the candidates an evaluation allows, each once, in order."""
    universe = build(evaluator.bundle, [("User", f"u{i:02d}") for i in extra_users], ["unknown"])
    query = Query(
        kind,
        EntityRef("User", f"u{who:02d}"),
        None if kind == "action" else action,
        EntityRef("Doc", f"d{what:02d}"),
        {},
    )
    evaluate = _evaluate(evaluator)
    expected = naive(query, universe, evaluate)
    got = _all_pages(query, universe, evaluate, limit)
    assert got == expected
    for item in got:  # fed back into an evaluation, each result is allowed
        candidate = item.get("id") or item["name"]
        assert evaluator.evaluate(query.request_for(candidate)).allowed


def test_known_answers(evaluator: Evaluator) -> None:
    universe = build(evaluator.bundle)
    query = Query("subject", EntityRef("User", "*"), "delete", EntityRef("Doc", "d01"), {})
    ids = [r["id"] for r in naive(query, universe, _evaluate(evaluator))]
    assert ids == [f"u{i:02d}" for i in range(USERS) if i % 7 == 0]
    secret = Query("subject", EntityRef("User", "*"), "delete", EntityRef("Doc", "d00"), {})
    assert naive(secret, universe, _evaluate(evaluator)) == []  # the forbid wins
    actions = Query("action", EntityRef("User", "u09"), None, EntityRef("Doc", "d00"), {})
    assert [r["name"] for r in naive(actions, universe, _evaluate(evaluator))] == ["read", "write"]


def test_tokens_belong_to_their_search(evaluator: Evaluator) -> None:
    universe = build(evaluator.bundle)
    evaluate = _evaluate(evaluator)
    query = Query("resource", EntityRef("User", "u09"), "read", EntityRef("Doc", "*"), {})
    first = search(query, universe, evaluate, 5)
    assert first.next_token and first.results[0] == {"type": "Doc", "id": "d00"}
    other = Query("resource", EntityRef("User", "u08"), "read", EntityRef("Doc", "*"), {})
    with pytest.raises(SearchError, match="different search"):
        search(other, universe, evaluate, 5, first.next_token)
    with pytest.raises(SearchError, match="not a page token"):
        search(query, universe, evaluate, 5, "%%%")
    with pytest.raises(SearchError, match=r"page\.limit"):
        search(query, universe, evaluate, 0)
    assert first.body()["page"] == {"next_token": first.next_token, "count": 5}


def test_who_can_and_can_do_locally(tmp_path: Path) -> None:
    env = {"TRUSTPLANE_STATE_DIR": str(tmp_path / "none")}
    shop = str(Path(__file__).parents[2] / "examples" / "shop")
    ctx = '{"mfa": true, "auth_age_seconds": 60}'
    who = run_cli(
        "who-can", "db:admin", "Database:payments-db-prod", "-b", shop, "--context", ctx,
        "--json", env=env,
    )  # fmt: skip
    assert who.returncode == 0, who.stderr
    doc = json.loads(who.stdout)
    assert doc["subjects"] == [{"type": "User", "id": "alice"}] and doc["universe"] == "bundle"
    can = run_cli("can-do", "User:dave", "-b", shop, "--context", ctx, "--json", env=env)
    assert can.returncode == 0, can.stderr
    assert json.loads(can.stdout)["allowed"] == [
        {"action": "billing:read", "resource": 'Dataset::"billing-reports"'}
    ]
    remote = run_cli("who-can", "db:admin", "Database:x", "--url", "http://127.0.0.1:9", env=env)
    assert remote.returncode == 2 and "--type" in remote.stderr
