"""Shared fixtures: a store on SQLite and on PostgreSQL, settings, bundles, a checkpoint signer, a
token issuer on loopback (module-scoped: one key and JWKS server per test module) and a real server.

PostgreSQL runs at 127.0.0.1:5432 (trust auth, database `test`). Each test gets its own schema,
dropped afterwards. Outside CI an unreachable PostgreSQL skips its leg; with CI=true it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.issuer import Jwks, Key, issuer_settings, rsa_key
from tests.support import PG_BASE_URL, REPO, Server, pg_available, running_server
from trustplane.store.database import create_store_engine, migrate
from trustplane.telemetry.checkpoint import NoteSigner

SHOP = REPO / "examples" / "shop"
ORIGIN = "test.example/ledger"


# Servers and CLIs the tests start as processes import this checkout's code, whatever the
# virtualenv was installed from and whichever directory they run in.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

DB_PARAMS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=DB_PARAMS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=DB_PARAMS)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One store per test module and backend, for modules that share a server."""
    with store_url(request.param, tmp_path_factory.mktemp("store")) as url:
        yield url


@contextlib.contextmanager
def store_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'trustplane.db'}"
        return
    if not pg_available():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "PostgreSQL at 127.0.0.1:5432 is unreachable and CI=true: the "
                "PostgreSQL leg is mandatory in CI"
            )
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is unreachable")
    import psycopg

    schema = f"tp_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_BASE_URL, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_BASE_URL, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated store on each database."""
    engine = create_store_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def shop_copy(tmp_path: Path) -> Path:
    """A writable copy of the example estate, for tests that change policy files."""
    target = tmp_path / "shop"
    shutil.copytree(SHOP, target)
    return target


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
