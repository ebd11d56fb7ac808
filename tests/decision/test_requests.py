"""parse_request / parse_entity: the hand-written request forms and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustplane.decision.requests import RequestError, parse_entity, parse_request
from trustplane.model import AccessRequest, EntityRef


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("User:alice", EntityRef("User", "alice")),
        ('User::"alice"', EntityRef("User", "alice")),
        ('Api::"payments.refund"', EntityRef("Api", "payments.refund")),
        ('User::"a:b c"', EntityRef("User", "a:b c")),
        ("Shop::User:bob", EntityRef("Shop::User", "bob")),
        ('Shop::User::"bob"', EntityRef("Shop::User", "bob")),
        ("Service:spiffe://shop/ns/x", EntityRef("Service", "spiffe://shop/ns/x")),
        ({"type": "User", "id": "alice"}, EntityRef("User", "alice")),
        (
            {"type": "User", "id": "alice", "properties": {"level": 3}},
            EntityRef("User", "alice", {"level": 3}),
        ),
        ({"type": "User", "id": "alice", "properties": {}}, EntityRef("User", "alice")),
    ],
)
def test_entity_forms(value: Any, expected: EntityRef) -> None:
    assert parse_entity(value, "principal") == expected


@pytest.mark.parametrize(
    ("value", "expected_id"),
    [
        ("payments:refund", "payments:refund"),
        ("read", "read"),
        ("ops:read-logs", "ops:read-logs"),
        ('Action::"payments:refund"', "payments:refund"),
        ({"id": "db:query"}, "db:query"),
    ],
)
def test_action_strings_with_colons_stay_whole_ids(value: Any, expected_id: str) -> None:
    assert parse_entity(value, "action", default_type="Action") == EntityRef("Action", expected_id)


@pytest.mark.parametrize("value", ["alice", "User:", ":alice", "User::alice", "", 42, None, []])
def test_malformed_entities_name_the_field(value: Any) -> None:
    with pytest.raises(RequestError) as info:
        parse_entity(value, "request.principal")
    assert info.value.field == "request.principal"
    assert str(info.value).startswith("request.principal: ")


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"type": "User"}, "request.principal.id"),
        ({"type": "User", "id": ""}, "request.principal.id"),
        ({"type": "User", "id": 7}, "request.principal.id"),
        ({"id": "alice"}, "request.principal.type"),
        ({"type": "User", "id": "a", "properties": [1]}, "request.principal.properties"),
        ({"type": "User", "id": "a", "attrs": {}}, "request.principal.attrs"),
    ],
)
def test_entity_object_errors_name_the_nested_field(value: Any, field: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_entity(value, "request.principal")
    assert info.value.field == field


def test_full_request() -> None:
    request = parse_request(
        {
            "principal": {"type": "User", "id": "erin", "properties": {"email": "e@x"}},
            "action": "payments:refund",
            "resource": 'Api::"payments.refund"',
            "context": {"mfa": True, "risk_score": 10},
        }
    )
    assert request == AccessRequest(
        EntityRef("User", "erin", {"email": "e@x"}),
        EntityRef("Action", "payments:refund"),
        EntityRef("Api", "payments.refund"),
        {"mfa": True, "risk_score": 10},
    )


def test_context_defaults_to_empty() -> None:
    request = parse_request({"principal": "User:a", "action": "read", "resource": "Doc:d"})
    assert request.context == {}
    request = parse_request(
        {"principal": "User:a", "action": "read", "resource": "Doc:d", "context": None}
    )
    assert request.context == {}


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"action": "read", "resource": "Doc:d"}, "request.principal"),
        ({"principal": "User:a", "resource": "Doc:d"}, "request.action"),
        ({"principal": "User:a", "action": "read"}, "request.resource"),
        ({"principal": "User:a", "action": "read", "resource": "Doc:d", "ctx": {}}, "request.ctx"),
        ({"principal": "a", "action": "read", "resource": "Doc:d"}, "request.principal"),
        (
            {"principal": {"type": "User"}, "action": "read", "resource": "Doc:d"},
            "request.principal.id",
        ),
        ({"principal": "User:a", "action": {"id": ""}, "resource": "Doc:d"}, "request.action.id"),
        ({"principal": "User:a", "action": "read", "resource": "Doc"}, "request.resource"),
        (
            {"principal": "User:a", "action": "read", "resource": "Doc:d", "context": "x"},
            "request.context",
        ),
    ],
)
def test_request_errors_name_the_field(document: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(document)
    assert info.value.field == field
    assert field in str(info.value)


def test_request_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(RequestError) as info:
        parse_request(["User:a", "read", "Doc:d"], "tests[3].request")
    assert info.value.field == "tests[3].request"


@pytest.mark.parametrize("context", [[], "", 0, False])
def test_falsy_non_object_context_is_refused(context: Any) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(
            {"principal": "User:a", "action": "read", "resource": "Doc:d", "context": context}
        )
    assert info.value.field == "request.context"


_IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_ID = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters='"\n'),
    min_size=1,
    max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(etype=_IDENT, eid=_ID)
def test_quoted_form_round_trips_through_str(etype: str, eid: str) -> None:
    ref = EntityRef(etype, eid)
    assert parse_entity(str(ref), "f") == ref


@settings(max_examples=100, deadline=None)
@given(eid=_ID)
def test_any_action_string_is_an_action_id(eid: str) -> None:
    assert parse_entity(eid, "action", default_type="Action") == EntityRef("Action", eid)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"context": {"n": 2**64}}, "request.context.n"),
        ({"context": {"n": -(2**63) - 1}}, "request.context.n"),
        ({"context": {"a": [0, {"b": 2**63}]}}, "request.context.a[1].b"),
        ({"context": {"s": "\ud800"}}, "request.context.s"),
        ({"principal": {"type": "User", "id": "a", "properties": {"n": 2**70}}}, None),
    ],
)
def test_values_a_decision_could_not_be_recorded_with_are_refused(
    document: dict[str, Any], field: str | None
) -> None:
    base = {"principal": "User:alice", "action": "view", "resource": "Doc:x", **document}
    with pytest.raises(RequestError) as caught:
        parse_request(base)
    assert caught.value.field == (field or "request.principal.properties.n")
    assert "outside the signed 64-bit range" in str(caught.value) or "surrogate" in str(
        caught.value
    )


def test_the_edges_of_the_64_bit_range_are_accepted() -> None:
    context = {"max": 2**63 - 1, "min": -(2**63), "flag": True, "f": 1e300}
    request = parse_request(
        {"principal": "User:alice", "action": "view", "resource": "Doc:x", "context": context}
    )
    assert request.context == context
