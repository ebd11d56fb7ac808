"""Migration 0010 on a store that already holds revocations (SQLite and PostgreSQL): the rows
stay, in force and without an expiry, and one revocation in force per target still holds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, insert, text
from sqlalchemy.exc import IntegrityError

from trustplane.recovery.revocation import RevocationKind, RevocationList, RevocationStore
from trustplane.store.database import MIGRATIONS, create_store_engine, migrate
from trustplane.store.tables import revocations


def upgrade(engine: Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


@pytest.fixture
def old_engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    upgrade(engine, "0009")
    yield engine
    engine.dispose()


def test_revocations_made_before_the_lifecycle_survive_it(old_engine: Engine) -> None:
    with old_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO revocations (id, kind, target, reason, actor, created_at) "
                "VALUES ('00000000-0000-0000-0000-000000000001', 'principal', "
                "'User::\"alice\"', 'left', 'ops', 1700000000.0)"
            )
        )
    migrate(old_engine)
    store = RevocationStore(old_engine)
    (kept,) = store.all()[0]
    assert (kept.target, kept.reason, kept.expires_at, kept.ended) == (
        'User::"alice"',
        "left",
        None,
        None,
    )
    listed = RevocationList(store)
    listed.refresh()
    assert listed.named('User::"alice"') is not None, "still denies"
    again, created = store.revoke(RevocationKind.PRINCIPAL, 'User::"alice"', "again", "ops")
    assert not created and again.id == kept.id, "one in force per target"
    with pytest.raises(IntegrityError), old_engine.begin() as connection:
        connection.execute(
            insert(revocations).values(
                id="00000000-0000-0000-0000-000000000002",
                kind="principal",
                target='User::"alice"',
                reason="twice",
                actor="ops",
                created_at=1700000001.0,
            )
        )
