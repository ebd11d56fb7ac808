"""Bearer JWT verification: real keys, a real JWKS served over loopback HTTP, and one reason
code per way a token can fail."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.issuer import AUDIENCE, ISSUER, Jwks, Key, claims, rsa_key
from trustplane.identity.tokens import Issuer, TokenRejected, TokenVerifier


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {
        "rs": rsa_key("rs-1"),
        "es": Key("es-1", ec.generate_private_key(ec.SECP256R1()), "ES256"),
        "ed": Key("ed-1", ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    }


@pytest.fixture
def jwks(keys: dict[str, Key]) -> Iterator[Jwks]:
    server = Jwks()
    server.keys = [k.jwk() for k in keys.values()]
    yield server
    server.close()


@pytest.fixture
def verifier(jwks: Jwks) -> TokenVerifier:
    issuer = Issuer(
        ISSUER, jwks.uri, (AUDIENCE,), algorithms=("RS256", "ES256", "EdDSA"), leeway_seconds=30
    )
    return TokenVerifier([issuer], min_refresh_seconds=30)


def rejected(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenRejected) as caught:
        verifier.verify(token)
    return caught.value.code


@pytest.mark.parametrize("name", ["rs", "es", "ed"])
def test_valid_tokens_are_verified_with_each_key_type(
    verifier: TokenVerifier, keys: dict[str, Key], name: str
) -> None:
    verified = verifier.verify(keys[name].sign(claims(groups=["sre"])))
    assert verified.subject == "alice" and verified.issuer == ISSUER
    assert verified.key_id == keys[name].kid and verified.algorithm == keys[name].algorithm
    assert verified.claims["groups"] == ["sre"]


def test_each_failure_has_its_own_reason_code(
    verifier: TokenVerifier, keys: dict[str, Key]
) -> None:
    rs = keys["rs"]
    now = int(time.time())
    assert rejected(verifier, rs.sign(claims(exp=now - 120))) == "token_expired"
    assert rejected(verifier, rs.sign(claims(nbf=now + 600))) == "token_not_yet_valid"
    assert rejected(verifier, rs.sign(claims(aud="someone-else"))) == "token_wrong_audience"
    assert rejected(verifier, rs.sign(claims(iss="https://evil.example"))) == (
        "token_unknown_issuer"
    )
    assert rejected(verifier, rs.sign(claims(sub=None))) == "token_missing_claim"
    assert rejected(verifier, "not.a.jwt") == "token_malformed"
    header, _payload, signature = rs.sign(claims()).split(".")
    forged_payload = jwt.utils.base64url_encode(json.dumps(claims(sub="root")).encode()).decode()
    assert rejected(verifier, f"{header}.{forged_payload}.{signature}") == "token_bad_signature"


def test_clock_skew_within_the_leeway_is_accepted(
    verifier: TokenVerifier, keys: dict[str, Key]
) -> None:
    now = int(time.time())
    assert verifier.verify(keys["es"].sign(claims(exp=now - 10))).subject == "alice"
    assert verifier.verify(keys["es"].sign(claims(nbf=now + 10))).subject == "alice"


def test_alg_none_and_hmac_with_the_public_key_are_refused(
    verifier: TokenVerifier, keys: dict[str, Key]
) -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert rejected(verifier, unsigned) == "token_alg_not_allowed"
    public_pem = (
        keys["rs"]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # The classic confusion attack: HS256 keyed with the (public) RSA key. PyJWT refuses to
    # sign that way itself, so the token is put together by hand.
    assert rejected(verifier, _hs256(claims(), public_pem)) == "token_alg_not_allowed"


def _hs256(payload: dict[str, Any], secret: bytes) -> str:
    def b64(data: bytes) -> str:
        return jwt.utils.base64url_encode(data).decode()

    header = {"alg": "HS256", "kid": "rs-1", "typ": "JWT"}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


def test_an_algorithm_the_issuer_does_not_use_is_refused(jwks: Jwks, keys: dict[str, Key]) -> None:
    only_es = TokenVerifier([Issuer(ISSUER, jwks.uri, (AUDIENCE,), algorithms=("ES256",))])
    assert rejected(only_es, keys["rs"].sign(claims())) == "token_alg_not_allowed"
    assert only_es.verify(keys["es"].sign(claims())).subject == "alice"


def test_a_key_of_the_wrong_type_for_the_algorithm_is_refused(
    verifier: TokenVerifier, keys: dict[str, Key]
) -> None:
    # Signed with the EC key but claiming the RSA key's algorithm and the EC key's id.
    token = keys["es"].sign(claims())
    _header, payload, signature = token.split(".")
    lying = jwt.utils.base64url_encode(
        json.dumps({"alg": "RS256", "kid": "es-1", "typ": "JWT"}).encode()
    ).decode()
    assert rejected(verifier, f"{lying}.{payload}.{signature}") == "token_key_mismatch"


def test_rotation_unknown_kid_refreshes_once_and_is_rate_limited(
    verifier: TokenVerifier, jwks: Jwks, keys: dict[str, Key]
) -> None:
    assert verifier.verify(keys["rs"].sign(claims())).subject == "alice"
    assert jwks.fetches == 1, "keys are cached"
    rotated = rsa_key("rs-2")
    jwks.keys = [*jwks.keys, rotated.jwk()]
    # Within the refresh interval, an unknown kid does not fetch again.
    assert rejected(verifier, rotated.sign(claims())) == "token_unknown_key"
    assert rejected(verifier, rotated.sign(claims())) == "token_unknown_key"
    assert jwks.fetches == 1


def test_would_fetch_tells_when_verifying_needs_the_network(
    verifier: TokenVerifier, jwks: Jwks, keys: dict[str, Key]
) -> None:
    """An async enforcement point verifies on its event loop unless a JWKS fetch is due."""
    token = keys["rs"].sign(claims())
    assert verifier.would_fetch(token), "nothing cached yet"
    verifier.verify(token)
    assert not verifier.would_fetch(token), "known key, fresh cache"
    assert not verifier.would_fetch(rsa_key("rs-9").sign(claims())), "refresh rate-limited"
    assert not verifier.would_fetch("not-a-token"), "refused without I/O"
    assert not verifier.would_fetch(keys["rs"].sign(claims(iss="https://other.example")))
    assert jwks.fetches == 1


def test_rotation_is_picked_up_when_a_refresh_is_allowed(jwks: Jwks, keys: dict[str, Key]) -> None:
    verifier = TokenVerifier([Issuer(ISSUER, jwks.uri, (AUDIENCE,))], min_refresh_seconds=0)
    assert verifier.verify(keys["rs"].sign(claims())).subject == "alice"
    rotated = rsa_key("rs-2")
    jwks.keys = [rotated.jwk()]  # the old key is retired
    assert verifier.verify(rotated.sign(claims())).key_id == "rs-2"
    assert jwks.fetches == 2, "one refresh for the unknown kid"
    assert rejected(verifier, keys["rs"].sign(claims())) == "token_unknown_key"


def test_jwks_unreachable_without_cached_keys_fails_closed(
    jwks: Jwks, keys: dict[str, Key]
) -> None:
    jwks.down = True
    verifier = TokenVerifier([Issuer(ISSUER, jwks.uri, (AUDIENCE,))])
    assert rejected(verifier, keys["rs"].sign(claims())) == "token_jwks_unavailable"


def test_jwks_outage_keeps_the_cached_keys(jwks: Jwks, keys: dict[str, Key]) -> None:
    verifier = TokenVerifier([Issuer(ISSUER, jwks.uri, (AUDIENCE,))], min_refresh_seconds=0)
    assert verifier.verify(keys["rs"].sign(claims())).subject == "alice"
    jwks.down = True
    # the key may exist: the issuer cannot be asked, and the reason says so
    assert rejected(verifier, rsa_key("rs-9").sign(claims())) == "token_issuer_unreachable"
    assert verifier.verify(keys["rs"].sign(claims())).subject == "alice"


def test_issuer_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        Issuer(ISSUER, "http://127.0.0.1/jwks", (AUDIENCE,), algorithms=("HS256",))
    with pytest.raises(ValueError, match="audience"):
        Issuer(ISSUER, "http://127.0.0.1/jwks", ())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(min_value=0), replacement=st.sampled_from("AQgw_-"))
def test_any_change_to_a_signed_token_is_refused(
    verifier: TokenVerifier, keys: dict[str, Key], position: int, replacement: str
) -> None:
    token = keys["ed"].sign(claims())
    index = position % len(token)
    if token[index] in (".", replacement):
        return
    altered = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(TokenRejected):
        verified = verifier.verify(altered)
        # Base64url has spare bits in the last character of a segment: a change there may
        # decode to the same bytes, and then the token is the same token.
        if verified.claims == verifier.verify(token).claims:
            raise TokenRejected("same_token", "decodes to the original bytes")
