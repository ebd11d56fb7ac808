"""Engine creation and schema migration for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from trustplane.errors import TrustplaneError

MIGRATIONS = Path(__file__).with_name("migrations")


class StoreError(TrustplaneError):
    """The store cannot be reached or migrated; the message says which URL and why."""


def normalise_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other URLs and in-memory databases)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


def create_store_engine(url: str, *, sync_commit: bool = False) -> Engine:
    """An engine with the pragmas the ledger relies on: WAL and a busy timeout on SQLite."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={'FULL' if sync_commit else 'NORMAL'}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as exc:
        raise StoreError(f"cannot reach the store at {_safe(engine)}: {exc.orig}") from None
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate the store at {_safe(engine)}: {exc}") from None


def is_migrated(engine: Engine) -> bool:
    try:
        return "decisions" in inspect(engine).get_table_names()
    except SQLAlchemyError:
        return False


def _safe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
