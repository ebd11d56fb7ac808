"""Fixtures for the integration tests: a migrated store on each database, a checkpoint signer,
and a token issuer on loopback (module-scoped: one key and JWKS server per test module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.issuer import Jwks, Key, rsa_key
from trustplane.store.database import create_store_engine, migrate
from trustplane.telemetry.checkpoint import NoteSigner

ORIGIN = "test.example/ledger"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


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
