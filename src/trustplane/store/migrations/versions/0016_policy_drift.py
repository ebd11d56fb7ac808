"""Rollout plane: drift incidents between the active revision and its declared source.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_drift",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("detected_at", sa.Float, nullable=False),
        sa.Column("cleared_at", sa.Float, nullable=True),
        sa.Column("revision", sa.String(64), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_revision", sa.String(64), nullable=True),
        sa.Column("files", sa.Text, nullable=False),
        sa.Column("is_open", sa.Boolean, nullable=True),
        sa.UniqueConstraint("is_open", name="uq_policy_drift_open"),
    )
    op.create_index("ix_policy_drift_detected", "policy_drift", ["detected_at"])


def downgrade() -> None:
    op.drop_index("ix_policy_drift_detected", "policy_drift")
    op.drop_table("policy_drift")
