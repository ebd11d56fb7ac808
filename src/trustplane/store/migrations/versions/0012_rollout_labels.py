"""Rollout plane: labels on would-deny decisions of observe-mode policies.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollout_labels",
        sa.Column("decision_id", sa.String(36), primary_key=True),
        sa.Column("policy_id", sa.String(400), primary_key=True),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("actor", sa.String(400), nullable=False),
        sa.Column("principal", sa.String(400), nullable=False),
        sa.Column("labelled_at", sa.Float, nullable=False),
    )
    op.create_index("ix_rollout_labels_policy", "rollout_labels", ["policy_id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_labels_policy", "rollout_labels")
    op.drop_table("rollout_labels")
