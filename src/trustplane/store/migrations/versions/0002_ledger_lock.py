"""Ledger write lock: one row every appender updates first, so appends from several processes or
replicas are serialised by the database instead of racing for sequence numbers.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "ledger_lock",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("appends", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "appends": 0}])


def downgrade() -> None:
    op.drop_table("ledger_lock")
