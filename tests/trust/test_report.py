"""Explaining a decision record: enforced signals count, observed ones are shown but add
nothing, and records without an assessment say why instead of failing."""

from __future__ import annotations

from trustplane.trust.report import explain

RECORD = {
    "kind": "decision",
    "decision_id": "3f2a91c0-0000-4000-8000-000000000000",
    "time": "2026-12-03T10:14:02Z",
    "request": {
        "principal": {"type": "User", "id": "alice"},
        "action": {"type": "Action", "id": "read"},
        "resource": {"type": "Doc", "id": "d"},
    },
    "decision": "deny",
    "reasons": ["forbid-high-risk"],
    "trust": {
        "score": 80,
        "level": "critical",
        "summary": "risk 80: device +80",
        "signals": [
            {"name": "novelty", "value": 1.0, "points": 10, "weight": 10, "mode": "observe",
             "source": "history", "observed": None, "explanation": "first use"},
            {"name": "device", "value": 1.0, "points": 80, "weight": 80, "mode": "enforce",
             "source": "proxy", "observed": {"failing": ["edr"]}, "explanation": "fails edr"},
        ],
        "quiet": ["mfa_strength"],
    },
}  # fmt: skip


def test_enforced_signals_count_and_observed_ones_do_not() -> None:
    shown = explain(RECORD)
    assert shown["principal"] == 'User::"alice"' and shown["trust"]["score"] == 80
    device, novelty = shown["trust"]["signals"]
    assert device["name"] == "device" and device["contribution"] == 80
    assert device["mode"] == "enforced" and device["source"] == "proxy"
    assert novelty["contribution"] == 0 and novelty["points"] == 10
    assert novelty["mode"] == "observed"


def test_records_without_an_assessment_say_why() -> None:
    refused = {k: v for k, v in RECORD.items() if k != "trust"}
    assert "refused before any policy" in explain(refused)["note"]
    admin = {"kind": "admin", "decision_id": "x", "action": "bundle:read"}
    assert explain(admin)["trust"] is None and "admin record" in explain(admin)["note"]
