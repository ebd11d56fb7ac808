"""Fixtures for the integration tests: a migrated store on each database, a checkpoint signer,
and a token issuer on loopback (module-scoped: one key and JWKS server per test module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import SHOP
from tests.issuer import Jwks, Key, issuer_settings, rsa_key
from tests.support import Server, running_server
from trustplane.telemetry.checkpoint import NoteSigner

ORIGIN = "test.example/ledger"


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture(scope="module")
def key() -> Key:
    """The issuer's signing key."""
    return rsa_key("idp-1")


@pytest.fixture(scope="module")
def issuer(key: Key) -> Iterator[Jwks]:
    """The issuer's JWKS, served over loopback."""
    jwks = Jwks()
    jwks.keys = [key.jwk()]
    yield jwks
    jwks.close()


@pytest.fixture(scope="module")
def server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, issuer: Jwks
) -> Iterator[Server]:
    """A real `trustplane serve` of the shop, module-wide, for the enforcement tests: it trusts
    the issuer's tokens and forwarded headers from 127.0.0.1 (where the proxies under test and
    the test clients connect from). Modules that need another server define their own."""
    with running_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        SHOP,
        policy__watch="false",
        pep__issuers=issuer_settings(issuer),
        server__trusted_proxies=["127.0.0.1/32"],
    ) as srv:
        yield srv
