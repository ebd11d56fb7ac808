"""Fixtures for the ledger tests: a migrated store on each database, a checkpoint signer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

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
