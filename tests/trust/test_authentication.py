"""People: amr/acr/auth_time become mfa, mfa_strength and auth_age_seconds; a policy's @step_up
turns its deny into an RFC 9470 challenge at the HTTP enforcement points."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SHOP
from tests.issuer import Jwks, Key, claims, issuer_settings, rsa_key
from tests.support import Server, running_server
from trustplane.decision.step_up import StepUp, StepUpError, parse_step_up, step_up_challenge
from trustplane.trust.authentication import authentication_strength

NOW = 1_900_000_000


@pytest.mark.parametrize(
    ("token_claims", "mfa", "strength"),
    [
        ({"amr": ["pwd"]}, False, "none"),
        ({}, False, "none"),
        ({"amr": ["pwd", "otp"]}, True, "otp"),
        ({"amr": ["mfa"]}, True, "otp"),
        ({"amr": ["pwd", "sms"]}, True, "otp"),
        ({"amr": ["hwk"]}, True, "phishing_resistant"),
        ({"amr": ["pwd", "hwk"]}, True, "phishing_resistant"),
        ({"amr": ["swk", "pop"]}, True, "phishing_resistant"),
        ({"amr": ["swk"]}, False, "none"),
        ({"amr": ["pwd"], "acr": "phr"}, True, "phishing_resistant"),
        ({"amr": ["pwd"], "acr": "phrh"}, True, "phishing_resistant"),
        ({"amr": "hwk"}, False, "none"),  # not a list: ignored
    ],
)
def test_authentication_strength(token_claims: dict[str, Any], mfa: bool, strength: str) -> None:
    found = authentication_strength(token_claims, now=NOW)
    assert (found.mfa, found.mfa_strength) == (mfa, strength)


def test_auth_age_from_auth_time_then_iat() -> None:
    assert (
        authentication_strength({"auth_time": NOW - 90, "iat": NOW - 5}, NOW).auth_age_seconds == 90
    )
    assert authentication_strength({"iat": NOW - 5}, NOW).auth_age_seconds == 5
    assert authentication_strength({"auth_time": NOW + 50}, NOW).auth_age_seconds == 0
    assert authentication_strength({"auth_time": True}, NOW).auth_age_seconds == 0


def test_step_up_annotation_and_challenge() -> None:
    step = parse_step_up("acr_values=phr,phrh max_age=300")
    assert step == StepUp(("phr", "phrh"), 300)
    challenge = step_up_challenge([step, StepUp((), 60)])
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert 'acr_values="phr phrh"' in challenge and "max_age=60" in challenge
    for bad, names in [
        ("", "needs"),
        ("acr_values", "name=value"),
        ("max_age=soon", "not a number"),
        ("level=high", "unknown parameter"),
        ('acr_values=a"b', "not allowed"),
    ]:
        with pytest.raises(StepUpError, match=names):
            parse_step_up(bad)


STEP_UP_POLICY = """
@id("refunds-need-fresh-phishing-resistant-login")
@owner("payments")
@description("Refunds need a phishing-resistant login within the last 5 minutes.")
@step_up("acr_values=phr max_age=300")
forbid (principal, action == Action::"payments:refund", resource)
unless {
  context has mfa_strength && context.mfa_strength == "phishing_resistant" &&
  context.auth_age_seconds <= 300
};
"""
PROXY = "127.0.0.3"


@pytest.fixture(scope="module")
def key() -> Key:
    return rsa_key("idp-human")


@pytest.fixture(scope="module")
def server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, key: Key
) -> Iterator[Server]:
    """The shop with a step-up guardrail on refunds (its own tests left out: they predate it)."""
    bundle = tmp_path_factory.mktemp("bundle") / "shop"
    shutil.copytree(SHOP, bundle, ignore=shutil.ignore_patterns("tests"))
    schema = bundle / "schema.cedarschema"
    schema.write_text(
        schema.read_text().replace(
            "  risk_score?: Long,\n", "  risk_score?: Long,\n  mfa_strength?: String,\n", 1
        )
    )
    routes = bundle / "routes.yaml"
    routes.write_text(
        routes.read_text().replace(
            "  mfa: ${credential.mfa}\n",
            "  mfa: ${credential.mfa}\n  mfa_strength: ${credential.mfa_strength}\n",
            1,
        )
    )
    (bundle / "stepup.cedar").write_text(STEP_UP_POLICY)
    jwks = Jwks()
    jwks.keys = [key.jwk()]
    try:
        with running_server(
            tmp_path_factory.mktemp("state"),
            module_database_url,
            bundle,
            policy__watch="false",
            pep__issuers=issuer_settings(jwks),
            server__trusted_proxies=[f"{PROXY}/32"],
        ) as running:
            yield running
    finally:
        jwks.close()


def refund(server: Server, token: str) -> httpx.Response:
    with httpx.Client(
        base_url=server.url, transport=httpx.HTTPTransport(local_address=PROXY), timeout=10
    ) as proxy:
        return proxy.get(
            "/v1/forward-auth",
            headers={
                "X-Original-URI": "/payments/v1/refunds",
                "X-Original-Method": "POST",
                "authorization": f"Bearer {token}",
            },
        )


def login(key: Key, amr: list[str], age: int) -> str:
    return key.sign(claims(sub="erin", amr=amr, auth_time=int(time.time()) - age))


def test_otp_login_is_asked_to_step_up(server: Server, key: Key) -> None:
    response = refund(server, login(key, ["pwd", "otp"], 60))
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_user_authentication"' in challenge
    assert 'acr_values="phr"' in challenge and "max_age=300" in challenge
    assert response.json()["reasons"] == [
        "insufficient_user_authentication",
        "refunds-need-fresh-phishing-resistant-login",
    ]


def test_stale_phishing_resistant_login_is_asked_to_step_up(server: Server, key: Key) -> None:
    response = refund(server, login(key, ["pwd", "hwk"], 900))
    assert response.status_code == 401
    assert "max_age=300" in response.headers["www-authenticate"]


def test_fresh_phishing_resistant_login_is_let_through(server: Server, key: Key) -> None:
    response = refund(server, login(key, ["pwd", "hwk"], 30))
    assert response.status_code == 200, response.text


def test_people_seen_at_the_enforcement_points_are_in_the_inventory(
    server: Server, key: Key
) -> None:
    assert refund(server, login(key, ["pwd", "hwk"], 30)).status_code == 200
    response = server.client.get("/v1/identity/inventory", headers=server.admin)
    assert response.status_code == 200, response.text  # no KEK here: the inventory still runs
    (erin,) = [i for i in response.json()["identities"] if i["principal"].endswith("#erin")]
    assert erin["kind"] == "human" and erin["max_lifetime_seconds"] == 300
    assert erin["flags"] == ["no_owner"]


def test_step_up_reason_is_in_the_authzen_answer(server: Server) -> None:
    body = {
        "subject": {"type": "User", "id": "erin"},
        "action": {"name": "payments:refund"},
        "resource": {"type": "Api", "id": "payments.refund"},
        "context": {"mfa": True, "auth_age_seconds": 30, "risk_score": 0, "mfa_strength": "otp"},
    }
    answer = server.client.post("/access/v1/evaluation", json=body).json()
    assert answer["decision"] is False
    (reason,) = answer["context"]["reasons"]
    assert reason["step_up"] == "acr_values=phr max_age=300"


def test_a_bad_step_up_annotation_refuses_the_bundle(tmp_path: Path) -> None:
    from trustplane.decision.policy_bundle import BundleError, BundleSource, compile_bundle

    bundle = tmp_path / "shop"
    shutil.copytree(SHOP, bundle, ignore=shutil.ignore_patterns("tests"))
    (bundle / "bad.cedar").write_text(STEP_UP_POLICY.replace("max_age=300", "max_age=soon"))
    with pytest.raises(BundleError) as refused:
        compile_bundle(BundleSource.from_dir(bundle))
    assert any("max_age 'soon'" in str(p) and "bad.cedar" in str(p) for p in refused.value.problems)


_CLAIM_TIMES = st.one_of(
    st.none(), st.integers(NOW - 100_000, NOW + 100), st.floats(NOW - 9e4, NOW)
)


@given(
    requests=st.lists(
        st.tuples(
            st.lists(st.sampled_from(["pwd", "otp", "hwk", "swk", "pop", "sms"]), max_size=3),
            _CLAIM_TIMES,
            _CLAIM_TIMES,
            _CLAIM_TIMES,
            st.floats(0, 3),  # seconds after NOW: several requests share a second
        ),
        min_size=1,
        max_size=12,
    )
)
def test_memoised_authentication_signals_are_the_signals_computed_afresh(
    requests: list[tuple[list[str], Any, Any, Any, float]],
) -> None:
    """The provider computes a token's signals once per second; whatever the claims (whole or
    fractional seconds) and however requests interleave, what it answers is what a fresh
    computation gives."""
    from trustplane.model import EntityRef
    from trustplane.trust.authentication import AuthenticationSignals
    from trustplane.trust.signals import TrustInputs

    memoised = AuthenticationSignals()
    wanted = frozenset(AuthenticationSignals.names)
    params = {"auth_age": {"fresh_seconds": 60, "stale_seconds": 600}}
    who = EntityRef("User", "alice")
    for amr, auth_time, iat, exp, later in requests:
        token = {"amr": amr, "auth_time": auth_time, "iat": iat, "exp": exp}
        inputs = TrustInputs(who, who, who, token, None, False, "token", NOW + later, params)
        fresh = list(AuthenticationSignals().signals(inputs, wanted))
        assert list(memoised.signals(inputs, wanted)) == fresh
