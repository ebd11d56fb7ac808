"""Every answered or counted decision is recorded: hostile values are refused whole while the
request is parsed (a 422 naming the member), so the decisions /metrics counts always equal the
ledger's decision records, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.conftest import SHOP
from tests.support import Server, authzen, running_server
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions

pytestmark = pytest.mark.slow

GOOD = authzen(("User", "erin"), "payments:refund", ("Api", "payments.refund"), {"mfa": True})
BIG = 18446744073709551616
SMALL = -9223372036854775809


def with_(body: dict[str, Any], where: str, value: dict[str, Any]) -> dict[str, Any]:
    """`body` with `value` as its context or as an entity's properties."""
    copy = {k: dict(v) if isinstance(v, dict) else v for k, v in body.items()}
    if where == "context":
        copy["context"] = value
    else:
        copy[where] = {**copy[where], "properties": value}
    return copy


def counted(server: Server) -> int:
    text = server.client.get("/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "trustplane_decisions":
            total += sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and s.labels.get("mode") == "enforced"
            )
    return int(total)


def recorded(database_url: str) -> int:
    engine = create_store_engine(database_url)
    try:
        with engine.connect() as connection:
            query = (
                select(func.count()).select_from(decisions).where(decisions.c.kind == "decision")
            )
            return int(connection.execute(query).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("where", "value", "field", "pointer"),
    [
        ("context", {"n": BIG}, "context.n", "/context/n"),
        ("context", {"n": SMALL}, "context.n", "/context/n"),
        ("context", {"a": {"b": [1, 2, BIG]}}, "context.a.b[2]", "/context/a/b/2"),
        ("subject", {"n": BIG}, "subject.properties.n", "/subject/properties/n"),
        ("resource", {"n": SMALL}, "resource.properties.n", "/resource/properties/n"),
        ("action", {"n": BIG}, "action.properties.n", "/action/properties/n"),
    ],
)
def test_an_integer_beyond_64_bits_is_a_422_naming_the_member(
    server64: Server, where: str, value: dict[str, Any], field: str, pointer: str
) -> None:
    response = server64.client.post("/access/v1/evaluation", json=with_(GOOD, where, value))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["detail"].startswith(f"{field}: integer "), problem
    assert problem["errors"][0]["pointer"] == pointer
    # The largest and smallest signed 64-bit integers are fine.
    for edge in (2**63 - 1, -(2**63)):
        ok = server64.client.post("/access/v1/evaluation", json=with_(GOOD, where, {"n": edge}))
        assert ok.status_code == 200, ok.text


def test_a_batch_with_one_hostile_item_is_refused_whole(server64: Server) -> None:
    before = counted(server64)
    body = {
        "subject": GOOD["subject"],
        "action": GOOD["action"],
        "resource": GOOD["resource"],
        "evaluations": [{"context": {"mfa": True}}, {"context": {"n": BIG}}, {}],
    }
    response = server64.client.post("/access/v1/evaluations", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("evaluations[1].context.n: integer")
    assert response.json()["errors"][0]["pointer"] == "/evaluations/1/context/n"
    assert counted(server64) == before, "nothing of a refused batch is evaluated"
    top = {**body, "context": {"n": SMALL}, "evaluations": [{}]}
    response = server64.client.post("/access/v1/evaluations", json=top)
    assert response.status_code == 422 and response.json()["detail"].startswith("context.n:")


def test_every_counted_decision_is_recorded(tmp_path: Path, database_url: str) -> None:
    """A mix of good and hostile requests on every decision endpoint; then /metrics's count of
    decisions equals the ledger's decision records."""
    with running_server(tmp_path / "state", database_url, SHOP, policy__watch="false") as server:
        statuses: dict[int, int] = {}

        def note(status: int) -> None:
            statuses[status] = statuses.get(status, 0) + 1

        client = server.client
        hostile = [
            with_(GOOD, "context", {"n": BIG}),
            with_(GOOD, "subject", {"n": SMALL}),
            with_(GOOD, "context", {"deep": [[[BIG]]]}),
        ]
        for round_ in range(5):
            note(client.post("/access/v1/evaluation", json=GOOD).status_code)
            for body in hostile:
                note(client.post("/access/v1/evaluation", json=body).status_code)
            batch = {"evaluations": [GOOD, hostile[round_ % len(hostile)], GOOD]}
            note(client.post("/access/v1/evaluations", json=batch).status_code)
            note(
                client.post(
                    "/access/v1/evaluations", json={"evaluations": [GOOD, GOOD]}
                ).status_code
            )
            note(client.get("/v1/forward-auth", headers={"x-forwarded-uri": "/x%00y"}).status_code)
            note(client.get("/v1/envoy/http/x%00y").status_code)
            note(
                client.post(
                    "/access/v1/evaluation", content=b'{"context": {"n": 1e999}}'
                ).status_code
            )
        assert 500 not in statuses and statuses.get(422), statuses
        answered = counted(server)
        assert answered >= 5 * 3
        server.stop()  # drains the recorder
    assert recorded(database_url) == answered


@pytest.fixture(scope="module")
def server64(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_server(
        tmp_path_factory.mktemp("state"), module_database_url, SHOP, policy__watch="false"
    ) as server:
        yield server
