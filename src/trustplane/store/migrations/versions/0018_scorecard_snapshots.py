"""Outcomes: monthly scorecard snapshots.

Revision ID: 0018
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scorecard_snapshots",
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("computed_at", sa.Float, nullable=False),
        sa.Column("revision", sa.String(64), nullable=True),
        sa.Column("document", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("scorecard_snapshots")
