"""PEP registry and authentication (enforcement/pep.py): what each pep.auth mode lets in, the
registry's refusals, and the listening rule."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from trustplane.config import ConfigError, PepAuth, Settings
from trustplane.enforcement.pep import (
    ANONYMOUS,
    PepAuthenticator,
    PepError,
    PepRegistry,
    PepStore,
    PepUnauthenticated,
    check_listen_policy,
    is_loopback,
)

MESH = "spiffe://example.test/ns/mesh/sa/envoy"


@pytest.fixture
def registry(engine: Engine) -> tuple[PepRegistry, str]:
    store = PepStore(engine)
    token = store.add("edge")
    assert token is not None and token.startswith("tpp_")
    assert store.add("mesh", MESH) is None
    registry = PepRegistry(store)
    registry.refresh()
    return registry, token


def _auth(registry: PepRegistry, mode: PepAuth) -> PepAuthenticator:
    return PepAuthenticator(mode, registry, "trustplane-pep")


def test_required_lets_in_registered_peps_only(registry: tuple[PepRegistry, str]) -> None:
    peps, token = registry
    auth = _auth(peps, PepAuth.REQUIRED)
    assert auth.authenticate(f"Bearer {token}") == "edge"
    assert auth.authenticate(None, MESH) == "mesh"
    for credential, spiffe_id, code in [
        (None, None, "pep_credential_missing"),
        ("Bearer tpp_unknown", None, "pep_token_unknown"),
        (f"Basic {token}", None, "pep_credential_unsupported"),
        ("Bearer ", None, "pep_credential_unsupported"),
        ("Bearer a.b.c", None, "pep_token_unknown"),  # a JWT without the identity plane
        (None, "spiffe://example.test/other", "pep_not_registered"),
    ]:
        with pytest.raises(PepUnauthenticated) as refused:
            auth.authenticate(credential, spiffe_id)
        assert refused.value.code == code


def test_optional_admits_the_anonymous_but_not_the_wrong(
    registry: tuple[PepRegistry, str],
) -> None:
    peps, token = registry
    auth = _auth(peps, PepAuth.OPTIONAL)
    assert auth.authenticate(None) == ANONYMOUS
    assert auth.authenticate(f"Bearer {token}") == "edge"
    with pytest.raises(PepUnauthenticated):
        auth.authenticate("Bearer tpp_wrong")


def test_off_asks_nobody(registry: tuple[PepRegistry, str]) -> None:
    peps, _ = registry
    assert _auth(peps, PepAuth.OFF).authenticate("Bearer tpp_wrong") == ANONYMOUS


def test_a_revoked_certificate_is_refused(registry: tuple[PepRegistry, str]) -> None:
    peps, _ = registry
    auth = PepAuthenticator(
        PepAuth.REQUIRED,
        peps,
        "trustplane-pep",
        revoked=lambda jti, serial: "revoked: 7 (stolen)" if serial == 7 else None,
    )
    assert auth.authenticate(None, MESH, 8) == "mesh"
    with pytest.raises(PepUnauthenticated) as refused:
        auth.authenticate(None, MESH, 7)
    assert refused.value.code == "pep_credential_revoked"


def test_removal_takes_effect_on_refresh(engine: Engine) -> None:
    store = PepStore(engine)
    token = store.add("edge")
    assert token is not None
    peps = PepRegistry(store)
    peps.refresh()
    assert peps.by_token(token) == "edge"
    store.remove("edge")
    peps.refresh()
    assert peps.by_token(token) is None
    assert [r.name for r in store.list()] == []


@pytest.mark.parametrize(
    ("name", "spiffe_id", "message"),
    [
        ("Edge Proxy", None, "1-63 characters"),
        ("anonymous", None, "reserved"),
        ("edge", "not-a-spiffe-id", "--spiffe-id"),
    ],
)
def test_bad_registrations_are_refused_with_the_reason(
    engine: Engine, name: str, spiffe_id: str | None, message: str
) -> None:
    with pytest.raises(PepError, match=message):
        PepStore(engine).add(name, spiffe_id)


def test_duplicates_and_unknown_names_are_refused(engine: Engine) -> None:
    store = PepStore(engine)
    store.add("edge", MESH)
    with pytest.raises(PepError, match="already registered"):
        store.add("edge")
    with pytest.raises(PepError, match="already registered"):
        store.add("other", MESH)
    with pytest.raises(PepError, match="no PEP named"):
        store.remove("ghost")
    assert [r.as_dict()["spiffe_id"] for r in store.list()] == [MESH]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("trustplane.svc", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_listening_beyond_loopback_needs_pep_auth_or_the_override() -> None:
    with pytest.raises(ConfigError, match=r"pep\.auth is optional"):
        check_listen_policy(Settings(server={"host": "0.0.0.0"}, pep={"auth": PepAuth.OPTIONAL}))
    check_listen_policy(Settings(server={"host": "0.0.0.0"}, pep={"auth": PepAuth.REQUIRED}))
    check_listen_policy(Settings(server={"host": "0.0.0.0"}, pep={"allow_unauthenticated": True}))
    check_listen_policy(Settings())
