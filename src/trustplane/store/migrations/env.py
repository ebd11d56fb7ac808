"""Alembic environment: migrations run on the connection trustplane hands over."""

from __future__ import annotations

from alembic import context

from trustplane.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - trustplane always passes a connection
    raise RuntimeError("run migrations through trustplane.store.database.migrate()")
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
