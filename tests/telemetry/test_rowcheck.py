"""The ledger's query columns are a function of the signed record: the writer stores exactly
what `query_columns` derives, so `audit verify` can recompute and compare them."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustplane.model import AccessRequest, Decision, Effect, EntityRef, PolicyReason
from trustplane.store.text import column_text
from trustplane.telemetry.ledger import _COLUMNS, admin_entry, decision_entry, search_entry
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.rowcheck import QUERY_COLUMNS, RecordError, query_columns

ids = st.text(min_size=1, max_size=500)
policy = st.builds(
    PolicyReason,
    st.text(min_size=1, max_size=20).filter(lambda s: " " not in s),
    st.just("permit"),
    st.just("enforce"),
    st.just("team"),
)


def stored(entry: object, seq: int = 0) -> dict[str, object]:
    return dict(zip(_COLUMNS, entry.values(seq), strict=True))  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(
    principal=ids,
    resource=ids,
    reasons=st.lists(policy, max_size=3),
    shadow=st.lists(policy, max_size=3),
    grants=st.lists(st.text(min_size=1, max_size=8).filter(lambda s: " " not in s), max_size=2),
    effect=st.sampled_from(list(Effect)),
)
def test_the_writer_stores_what_query_columns_derives_from_the_record(
    principal: str,
    resource: str,
    reasons: list[PolicyReason],
    shadow: list[PolicyReason],
    grants: list[str],
    effect: Effect,
) -> None:
    request = AccessRequest(
        EntityRef("User", principal), EntityRef("Action", "read"), EntityRef("Doc", resource)
    )
    decision = Decision(
        "01a20000-0000-7000-8000-000000000000",
        effect,
        tuple(reasons),
        Effect.DENY,
        tuple(shadow),
        tuple(shadow),
        (),
        "rev",
        3,
        1_800_000_000.5,
        grant_ids=tuple(grants),
    )
    entry = decision_entry(request, decision, Masker([]))
    row = stored(entry)
    derived = dict(zip(QUERY_COLUMNS, query_columns(orjson.loads(entry.record)), strict=True))
    assert {c: row[c] for c in QUERY_COLUMNS} == derived
    assert row["principal"] == column_text(f'User::"{principal}"', 400)  # what backends take
    for reason in reasons:
        assert f" {column_text(reason.policy_id)} " in row["policies"]  # type: ignore[operator]
    for grant in grants:
        assert f" grant:{column_text(grant)} " in row["policies"]  # type: ignore[operator]


def test_admin_records_derive_their_columns_too() -> None:
    entry = admin_entry("ops", "bundle:write", "bundle shop", "reload", True, now=1.0)
    row = stored(entry)
    assert query_columns(orjson.loads(entry.record)) == tuple(row[c] for c in QUERY_COLUMNS)
    assert (row["principal"], row["policies"], row["shadow"]) == (
        "ops",
        " admin:bundle:write ",
        "allow",
    )


def test_search_records_derive_their_columns_too() -> None:
    asked = AccessRequest(
        EntityRef("User", "*"), EntityRef("Action", "read"), EntityRef("Doc", "d")
    )
    results = [{"type": "User", "id": "alice"}]
    entry = search_entry("subject", asked, Masker([]), results, "", 3, "rev", 10, now=1.0)
    row = stored(entry)
    record = orjson.loads(entry.record)
    assert query_columns(record) == tuple(row[c] for c in QUERY_COLUMNS)
    assert (row["kind"], row["principal"], row["policies"], row["decision"]) == (
        "search",
        'User::"*"',
        " search:subject ",
        "allow",
    )
    assert record["results"] == results and record["evaluated"] == 3


def test_a_masked_principal_is_not_kept_in_a_query_column() -> None:
    request = AccessRequest(
        EntityRef("User", "alice"), EntityRef("Action", "read"), EntityRef("Doc", "d")
    )
    decision = Decision(
        "01a20000-0000-7000-8000-000000000001",
        Effect.ALLOW,
        (),
        Effect.ALLOW,
        (),
        (),
        (),
        None,
        1,
        1.0,
    )
    entry = decision_entry(request, decision, Masker(["/subject/id"]))
    assert b"alice" not in entry.record
    assert entry.principal == "", "what the signed record does not hold, a query cannot find"


@pytest.mark.parametrize(
    "record",
    [{}, {"kind": "other"}, {"kind": "decision"}, {"kind": "admin", "action": 7}, []],
)
def test_what_is_not_a_ledger_record_is_refused_by_name(record: object) -> None:
    with pytest.raises(RecordError):
        query_columns(record)  # type: ignore[arg-type]
