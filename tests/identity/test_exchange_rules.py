"""Trust rules of the token exchange: conditions on claims and the SPIFFE ID they issue; the
admin API's audience, which no rule grants and no exchanged JWT-SVID carries into the admin API."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustplane.config import ConfigError, ExchangeRuleSettings, load_settings
from trustplane.enforcement.credentials import ProxyTrust
from trustplane.identity.exchange import ExchangeError, render_spiffe_id, rule_mismatch
from trustplane.identity.keys import IdentityKeys
from trustplane.identity.spiffe_id import SpiffeId
from trustplane.identity.svid import issue_jwt_svid
from trustplane.server.admin_auth import AdminAuthenticator, AdminCaller, AdminUnauthenticated

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


# -- the admin audience is reserved -------------------------------------------------------------


def test_no_exchange_rule_can_grant_the_admin_audience() -> None:
    rule = {**RULE.model_dump(), "audiences": ["deploy-api", "trustplane-admin"]}
    with pytest.raises(ConfigError, match=r"identity.exchange_rules\[0\] \(deploy\).*reserved"):
        load_settings(overrides={"identity": {"exchange_rules": [rule]}})
    mine = {**rule, "audiences": ["ops-admin"]}
    with pytest.raises(ConfigError, match=r"'ops-admin' is admin\.audience, reserved"):
        load_settings(
            overrides={"identity": {"exchange_rules": [mine]}, "admin": {"audience": "ops-admin"}}
        )
    with pytest.raises(ConfigError, match=r"identity\.issuer 'trustplane-admin' equals"):
        load_settings(overrides={"identity": {"issuer": "trustplane-admin"}})
    fine = load_settings(overrides={"identity": {"exchange_rules": [{**rule, "audiences": ["a"]}]}})
    assert fine.identity.exchange_rules[0].audiences == ["a"]


def test_a_jwt_svid_from_token_exchange_is_not_an_admin_credential(
    identity_keys: IdentityKeys,
) -> None:
    keys = identity_keys.load()
    settings = load_settings(overrides={"identity": {"trust_domain": "example.test"}})
    authn = AdminAuthenticator(
        settings.admin, ProxyTrust([]), lambda token: False, SimpleNamespace(keys=keys)
    )
    workload = SpiffeId.parse("spiffe://example.test/ci/org/app")

    def caller(**extra: Any) -> AdminCaller:
        svid = issue_jwt_svid(keys, workload, ["trustplane-admin"], 300, extra_claims=extra)
        return authn.authenticate({"authorization": f"Bearer {svid.token}"}, None)

    assert caller() == AdminCaller("workload", str(workload))
    with pytest.raises(AdminUnauthenticated, match="token exchange"):
        caller(trust_rule="deploy", ci={"repository": "org/app"})
