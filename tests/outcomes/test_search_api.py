"""The AuthZEN search endpoints of a real `trustplane serve` of the shop, on both backends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import SHOP
from tests.support import Server, run_cli, running_server, wait_for

CTX = {"mfa": True, "auth_age_seconds": 60}


@pytest.fixture(scope="module")
def server(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("state"), module_database_url, SHOP, policy__watch="false"
    ) as srv:
        yield srv


def post(server: Server, kind: str, body: dict[str, Any]) -> Any:
    return server.client.post(f"/access/v1/search/{kind}", json=body)


def test_metadata_lists_the_searches(server: Server) -> None:
    doc = server.client.get("/.well-known/authzen-configuration").json()
    for kind in ("subject", "resource", "action"):
        assert doc[f"search_{kind}_endpoint"] == f"{server.url}/access/v1/search/{kind}"


def test_subject_search_pages_through_every_allowed_subject(server: Server) -> None:
    body = {
        "subject": {"type": "User"},
        "action": {"name": "admin:console-login"},
        "resource": {"type": "Service", "id": "admin-console"},
        "context": CTX,
    }
    seen: list[dict[str, str]] = []
    token = None
    while True:
        page = {"limit": 1, **({"token": token} if token else {})}
        answer = post(server, "subject", {**body, "page": page})
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert doc["page"]["count"] == len(doc["results"]) <= 1
        seen.extend(doc["results"])
        token = doc["page"]["next_token"]
        if not token:
            break
    # sre (alice), security (carol), support (erin): staff-admin-console-login
    assert seen == [
        {"type": "User", "id": "alice"},
        {"type": "User", "id": "carol"},
        {"type": "User", "id": "erin"},
    ]
    with_id = post(server, "subject", {**body, "subject": {"type": "User", "id": "ignored"}})
    assert with_id.json()["results"] == seen  # the searched member's id is ignored
    for item in seen:  # each result, evaluated, is allowed
        single = server.client.post("/access/v1/evaluation", json={**body, "subject": item}).json()
        assert single["decision"] is True


def test_resource_and_action_search(server: Server) -> None:
    resources = post(
        server,
        "resource",
        {
            "subject": {"type": "Service", "id": "checkout"},
            "action": {"name": "inventory:reserve"},
            "resource": {"type": "Api"},
            "context": {"mfa": False, "auth_age_seconds": 60},
        },
    ).json()
    assert resources == {
        "results": [
            {"type": "Api", "id": "inventory.reserve"},
            {"type": "Api", "id": "inventory.stock"},
        ],
        "page": {"next_token": "", "count": 2},
    }
    actions = post(
        server,
        "action",
        {
            "subject": {"type": "Service", "id": "checkout"},
            "resource": {"type": "Api", "id": "payments.charge"},
            "context": {"mfa": False, "auth_age_seconds": 60},
        },
    ).json()
    assert actions["results"] == [{"name": "payments:charge"}]


def test_bad_requests_are_refused_clearly(server: Server) -> None:
    body = {
        "subject": {"type": "User"},
        "action": {"name": "db:admin"},
        "resource": {"type": "Database", "id": "payments-db-prod"},
        "context": CTX,
    }
    wrong = post(server, "subject", {**body, "page": {"token": "bm90IGEgdG9rZW4"}})
    assert wrong.status_code == 400
    assert "page.token" in wrong.json()["detail"]
    missing = post(server, "subject", {"action": body["action"], "resource": body["resource"]})
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["pointer"] == "/subject"
    too_many = post(server, "subject", {**body, "page": {"limit": 5000}})
    assert too_many.status_code == 422


def test_every_search_is_one_ledger_record(server: Server) -> None:
    body = {
        "subject": {"type": "User", "id": "bob"},
        "action": {"name": "db:query"},
        "resource": {"type": "Database"},
        "context": CTX,
    }
    assert post(server, "resource", body).status_code == 200

    def recorded() -> Any:
        answer = server.client.get(
            "/v1/decisions",
            params={"kind": "search", "principal": 'User::"bob"'},
            headers=server.admin,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["decisions"]

    rows = wait_for(recorded)
    assert rows[0]["kind"] == "search"
    assert len(rows) == 1 and rows[0]["search"] == "resource"
    assert rows[0]["request"]["resource"] == {"type": "Database", "id": "*"}
    assert rows[0]["results"] == [{"type": "Database", "id": "orders-db-staging"}]
    assert rows[0]["evaluated"] == 2 and rows[0]["next_token"] == ""


def test_searches_answer_registered_peps_only(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Like the evaluation endpoints: with pep.auth required, no token is a 401 and nothing
    is searched; a registered PEP's token is answered, and the record names the PEP."""
    body = {
        "subject": {"type": "User"},
        "action": {"name": "admin:console-login"},
        "resource": {"type": "Service", "id": "admin-console"},
        "context": CTX,
    }
    with running_server(
        tmp_path_factory.mktemp("state"),
        database_url,
        SHOP,
        policy__watch="false",
        pep__auth="required",
    ) as srv:
        refused = post(srv, "subject", body)
        assert refused.status_code == 401
        added = run_cli("pep", "add", "portal", "--json", env=srv.env)
        assert added.returncode == 0, added.stderr
        token = json.loads(added.stdout)["token"]
        headers = {"authorization": f"Bearer {token}"}

        def answered() -> Any:
            answer = srv.client.post("/access/v1/search/subject", json=body, headers=headers)
            return answer if answer.status_code == 200 else None

        assert len(wait_for(answered).json()["results"]) == 3
        rows = wait_for(
            lambda: srv.client.get(
                "/v1/decisions", params={"kind": "search"}, headers=srv.admin
            ).json()["decisions"]
        )
        assert {row["pep"] for row in rows} == {"portal"}
