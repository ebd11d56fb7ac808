"""Ledger quarantine and undelivered decisions.

`ledger_quarantine` holds a record the store refused as a `decisions` row (a value no column
takes): its leaf keeps its place in the Merkle tree (`seq`), its canonical bytes are kept here
with the reason, and `audit verify` checks it like any other leaf, so one bad record never
blocks the records behind it. `decisions.undelivered` marks a decision committed after its
caller had already been answered 503 (sync durability).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_quarantine",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("decision_id", sa.String(64), nullable=False),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.add_column(
        "decisions",
        sa.Column("undelivered", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("decisions", "undelivered")
    op.drop_table("ledger_quarantine")
