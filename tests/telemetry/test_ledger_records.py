"""Ledger records: canonical bytes, masking before hashing, timestamps."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from trustplane.model import AccessRequest, Decision, Effect, EntityRef, PolicyReason
from trustplane.telemetry.ledger import canonical_json, decision_entry, rfc3339
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.merkle import leaf_hash


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_rfc3339_matches_the_standard_library(ts: float) -> None:
    expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")
    assert rfc3339(ts) == expected.replace("+00:00", "Z")


def _decision() -> Decision:
    permit = PolicyReason("p-1", "permit", "enforce", "team")
    forbid = PolicyReason("f-1", "forbid", "observe", "sec")
    return Decision(
        "01a20000-0000-7000-8000-000000000000",
        Effect.ALLOW,
        (permit,),
        Effect.DENY,
        (forbid,),
        (forbid,),
        (),
        "rev",
        12,
        1_800_000_000.25,
    )


def test_entry_is_masked_canonical_and_hashed() -> None:
    request = AccessRequest(
        EntityRef("User", "alice", {"ssn": "123"}),
        EntityRef("Action", "read"),
        EntityRef("Doc", "d"),
        {"token": "s3cret", "ip": "10.0.0.1"},
    )
    entry = decision_entry(
        request, _decision(), Masker(["/context/token", "/subject/properties/ssn"])
    )
    record = json.loads(entry.record)
    assert b"s3cret" not in entry.record and b"123" not in entry.record
    assert record["masked"] == ["/context/token", "/subject/properties/ssn"]
    assert record["request"]["context"] == {"ip": "10.0.0.1"}
    assert record["time"] == "2027-01-15T08:00:00.250000Z"
    assert (record["decision"], record["shadow"]) == ("allow", "deny")
    assert record["would_change"] == ["f-1"]
    assert entry.record == canonical_json(record), "records are stored in canonical form"
    assert entry.leaf_hash == leaf_hash(entry.record)
    assert entry.principal == 'User::"alice"'
    assert " p-1 " in entry.policies and " f-1 " in entry.policies
