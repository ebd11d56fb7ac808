"""Decision query filters (times, entities) and the reason code a record reads as."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trustplane.telemetry.query import (
    DecisionQuery,
    QueryError,
    determining_policies,
    entity_filter,
    parse_time,
    reason_code,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", NOW - 900),
        ("2h", NOW - 7200),
        ("7d", NOW - 7 * 86400),
        ("1w", NOW - 7 * 86400),
        ("30s", NOW - 30),
        ("2026-12-03T10:00:00Z", NOW - 7200),
        ("2026-12-03T12:00:00+02:00", NOW - 7200),
        ("2026-12-03T10:00:00.5Z", NOW - 7199.5),
        ("2026-12-03", NOW - 12 * 3600),
        ("1796299200", 1796299200.0),
    ],
)
def test_times_are_rfc3339_durations_before_now_or_unix_timestamps(
    text: str, expected: float
) -> None:
    assert parse_time(text, "--since", NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("yesterday", "expected RFC 3339"),
        ("15 minutes", "expected RFC 3339"),
        ("2026-12-03T10:00:00", "has no time zone"),
        ("2026-13-03T10:00:00Z", "expected RFC 3339"),
        ("-5m", "expected RFC 3339"),
    ],
)
def test_a_bad_time_names_the_field_and_what_is_accepted(text: str, says: str) -> None:
    with pytest.raises(QueryError) as raised:
        parse_time(text, "--until", NOW)
    assert raised.value.field == "--until"
    assert says in str(raised.value)
    assert str(raised.value).startswith("--until: ")


def test_an_empty_window_is_refused_naming_until() -> None:
    with pytest.raises(QueryError) as empty:
        DecisionQuery(since=NOW, until=NOW - 1).check()
    assert str(empty.value) == "until: must be later than since"
    with pytest.raises(QueryError) as kind:
        DecisionQuery(kind="audit").check(lambda field: f"--{field}")
    assert str(kind.value) == "--kind: must be one of decision, admin, search"


def test_entity_filters_match_one_entity_or_an_id_of_any_type() -> None:
    exact = entity_filter('Api::"payments.refund"', "resource")
    assert exact.exact == ('Api::"payments.refund"',)
    assert exact.any_type is None
    bare = entity_filter("payments:refund", "action")
    assert bare.exact[0] == "payments:refund"
    assert bare.any_type == "payments:refund"
    short = entity_filter("User:alice", "principal")
    assert 'User::"alice"' in short.exact
    with pytest.raises(QueryError) as empty:
        entity_filter("", "principal")
    assert str(empty.value) == "principal: must be 1 to 400 characters"


def _decision(effect: str, errors: list[str], reasons: list[str]) -> dict[str, object]:
    return {"kind": "decision", "decision": effect, "errors": errors, "reasons": reasons}


@pytest.mark.parametrize(
    ("record", "code"),
    [
        (_decision("deny", ["credential_missing: no credential"], []), "credential_missing"),
        (_decision("deny", ["token_expired: exp in the past"], []), "token_expired"),
        (
            _decision("deny", ["no_route_matched: no route matched (GET h/x)"], []),
            "no_route_matched",
        ),
        (_decision("deny", ["credential_revoked: jti-1 (lost)"], []), "credential_revoked"),
        (_decision("deny", ['principal_revoked: User::"a" (left)'], []), "principal_revoked"),
        # What refusals said before they led with a code.
        (_decision("deny", ['revoked: User::"a" (left)'], []), "principal_revoked"),
        (
            _decision("deny", ["no active policy bundle: denying by default"], []),
            "no_active_bundle",
        ),
        (
            _decision("deny", ["while evaluating policy `p1`: attribute missing"], []),
            "evaluation_error",
        ),
        (_decision("deny", [], ["require-fresh-mfa"]), "policy_forbids"),
        (_decision("deny", [], []), "no_policy_permits"),
        (_decision("allow", [], ["admins-may"]), "policy_permits"),
        # An observe-mode policy's error does not change the enforced allow.
        (
            _decision("allow", ["while evaluating policy `observe-1`: x"], ["admins-may"]),
            "policy_permits",
        ),
        ({"kind": "admin", "decision": "allow", "details": {"status": 200}}, "admin_allowed"),
        ({"kind": "admin", "decision": "deny", "details": {"status": 403}}, "admin_forbidden"),
        (
            {"kind": "admin", "decision": "deny", "details": {"status": 401}},
            "admin_unauthenticated",
        ),
    ],
)
def test_each_record_reads_as_one_reason_code(record: dict[str, object], code: str) -> None:
    assert reason_code(record) == code


def test_determining_policies_are_the_enforced_reasons_or_the_refusing_admin_policies() -> None:
    assert determining_policies(_decision("deny", [], ["a", "b"])) == ["a", "b"]
    admin = {"kind": "admin", "decision": "deny", "details": {"status": 403, "policies": ["x"]}}
    assert determining_policies(admin) == ["x"]
    assert determining_policies(_decision("deny", ["credential_missing: no"], [])) == []


def test_a_query_travels_to_the_admin_api_as_the_parameters_it_was_built_from() -> None:
    query = DecisionQuery(
        principal=entity_filter("erin", "principal"),
        action=entity_filter("payments:refund", "action"),
        decision="deny",
        shadow_mismatch=True,
        since=parse_time("2026-12-03T10:00:00Z", "since"),
        until=parse_time("1h", "until", NOW),
        limit=7,
    )
    assert query.as_params() == {
        "principal": "erin",
        "action": "payments:refund",
        "decision": "deny",
        "shadow_mismatch": "true",
        "since": "2026-12-03T10:00:00.000000Z",
        "until": "2026-12-03T11:00:00.000000Z",
        "limit": "7",
    }
