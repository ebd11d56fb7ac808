"""Trust rules of the token exchange: conditions on claims and the SPIFFE ID they issue."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustplane.config import ExchangeRuleSettings
from trustplane.identity.exchange import ExchangeError, render_spiffe_id, rule_mismatch

RULE = ExchangeRuleSettings(
    name="deploy",
    issuer="https://ci.example",
    claims={"repository": "org/app", "ref": ["refs/heads/main", "refs/tags/v*"]},
    spiffe_id="spiffe://example.test/ci/{repository}",
)


def test_every_condition_must_hold() -> None:
    assert rule_mismatch(RULE, {"repository": "org/app", "ref": "refs/heads/main"}) is None
    assert rule_mismatch(RULE, {"repository": "org/app", "ref": "refs/tags/v1.2"}) is None
    assert "ref=" in str(rule_mismatch(RULE, {"repository": "org/app", "ref": "refs/heads/dev"}))
    assert "repository=" in str(rule_mismatch(RULE, {"ref": "refs/heads/main"}))
    assert rule_mismatch(RULE, {"repository": ["org/app"], "ref": "refs/heads/main"}) is not None


@given(st.text(max_size=30))
def test_a_prefix_condition_never_matches_what_does_not_start_with_it(value: str) -> None:
    matched = rule_mismatch(RULE, {"repository": "org/app", "ref": value}) is None
    assert matched == (value == "refs/heads/main" or value.startswith("refs/tags/v"))


def test_claim_values_cannot_escape_the_spiffe_id_template() -> None:
    assert str(render_spiffe_id(RULE.spiffe_id, {"repository": "org/app"})) == (
        "spiffe://example.test/ci/org/app"
    )
    for hostile in ["../../admin", "org//app", "org/app?x=1", "a b", "org/app/"]:
        with pytest.raises(ExchangeError) as refused:
            render_spiffe_id(RULE.spiffe_id, {"repository": hostile})
        assert refused.value.error == "invalid_grant"
    with pytest.raises(ExchangeError, match="claim 'repository' is missing"):
        render_spiffe_id(RULE.spiffe_id, {})
