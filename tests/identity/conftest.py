"""Fixtures for the identity plane: a migrated store, a KEK, the trust domain's keys."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from trustplane.identity.kek import Kek, new_kek
from trustplane.identity.keys import IdentityKeys

TRUST_DOMAIN = "example.test"


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kek() -> Kek:
    import base64

    raw = new_kek()
    return Kek(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))


@pytest.fixture
def identity_keys(engine: Engine, kek: Kek) -> IdentityKeys:
    keys = IdentityKeys(engine, kek, TRUST_DOMAIN, ca_ttl_seconds=7 * 86400)
    keys.initialise()
    return keys
