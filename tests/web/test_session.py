"""The pages' session cookie and sign-in exchange without a browser: what is sealed opens
unchanged, anything altered or over opens as nothing, the key is made once and private, and the
code exchange refuses a token that is not this sign-in's."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.issuer import ISSUER, Jwks, Key
from trustplane.config import ConfigError, load_settings
from trustplane.web.oidc import OidcClient, SignInError
from trustplane.web.session import LoginState, Session, Sessions, same_secret, session_key

SESSIONS = Sessions(Fernet.generate_key(), 8)


def test_the_key_is_made_once_private_and_shared(tmp_path: Path) -> None:
    first = session_key(tmp_path / "state")
    assert session_key(tmp_path / "state") == first, "every worker reads the same key"
    mode = (tmp_path / "state" / "ui-session.key").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


@settings(max_examples=50, deadline=None)
@given(
    token=st.text(alphabet="abcdefghijklmnopqrstuvwxyz.-_", min_size=24, max_size=300),
    subject=st.text(min_size=1, max_size=50),
    flip=st.integers(min_value=0, max_value=10_000),
)
def test_a_sealed_session_opens_unchanged_and_any_alteration_opens_as_nothing(
    token: str, subject: str, flip: int
) -> None:
    session = SESSIONS.new(token, subject, time.time() + 300)
    cookie = SESSIONS.seal(session)
    assert SESSIONS.open(cookie) == session
    assert token not in cookie, "the ID token is sealed, not only signed"
    index = flip % (len(cookie) - 4)  # the last characters may hold only padding bits
    altered = cookie[:index] + ("A" if cookie[index] != "A" else "B") + cookie[index + 1 :]
    assert SESSIONS.open(altered) is None


def test_a_session_ends_with_its_token_and_the_csrf_token_is_compared_exactly() -> None:
    over = Session("t", "c", "alice", time.time() - 1)
    assert SESSIONS.open(SESSIONS.seal(over)) is None
    assert SESSIONS.new("t", "alice", time.time() + 60).expires <= time.time() + 60
    assert SESSIONS.open(None) is None and SESSIONS.open("") is None
    assert same_secret("abc", "abc") and not same_secret("abd", "abc")
    assert not same_secret(None, "abc") and not same_secret("", "abc")
    login = LoginState("s", "n", "v", "/ui/access")
    assert SESSIONS.open_login(SESSIONS.seal_login(login)) == login
    assert SESSIONS.open_login(SESSIONS.seal(over)) is None, "a session is not a sign-in"


@pytest.fixture
def client(issuer: Jwks, key: Key) -> OidcClient:
    issuer.signer = key
    issuer.sign_in_as = "alice"
    ui = issuer.ui_settings()
    settings = load_settings(
        overrides={
            "admin": {"issuers": [{"issuer": ISSUER, "jwks_uri": issuer.uri, "audiences": ["x"]}]},
            "ui": ui,
        }
    )
    return OidcClient(settings)


def test_the_code_exchange_refuses_another_sign_ins_nonce_and_a_spent_code(
    client: OidcClient, issuer: Jwks
) -> None:
    url, login = client.start("http://127.0.0.1:1/ui/callback", "/ui")
    assert "code_challenge_method=S256" in url and login.verifier not in url
    answer = httpx.get(url, follow_redirects=False)
    code = httpx.URL(answer.headers["location"]).params["code"]
    other = LoginState(login.state, "another-nonce", login.verifier, "/ui")
    with pytest.raises(SignInError, match="nonce"):
        client.finish(code, "http://127.0.0.1:1/ui/callback", other)
    with pytest.raises(SignInError, match="refused the code"):
        client.finish(code, "http://127.0.0.1:1/ui/callback", login)  # spent


def test_a_ui_issuer_that_is_not_an_admin_issuer_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"ui\.issuer .* is not one of admin\.issuers"):
        load_settings(overrides={"ui": {"issuer": "https://elsewhere.example"}})


def test_a_key_in_the_last_quarter_of_its_life_is_due_for_rotation() -> None:
    from trustplane.web.app import _key_view

    now = 1_800_000_000.0
    week = {"created_at": now - 6 * 86_400, "not_after": now + 86_400, "state": "active"}
    assert _key_view(week, now) == {**week, "remaining": "1d 0h", "late": True}
    fresh = {**week, "created_at": now - 86_400, "not_after": now + 6 * 86_400}
    assert _key_view(fresh, now)["late"] is False
    retired = {**week, "state": "retired", "not_after": now - 10}
    assert _key_view(retired, now) == {**retired, "remaining": "expired", "late": False}
