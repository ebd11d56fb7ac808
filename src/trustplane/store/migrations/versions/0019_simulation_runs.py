"""Outcomes: saved runs of the compromise simulation, for the scorecard.

Revision ID: 0019
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "simulation_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_at", sa.Float, nullable=False),
        sa.Column("revision", sa.String(64), nullable=True),
        sa.Column("paths", sa.Integer, nullable=False),
        sa.Column("blocked", sa.Integer, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
    )
    op.create_index("ix_simulation_runs_run_at", "simulation_runs", ["run_at"])


def downgrade() -> None:
    op.drop_index("ix_simulation_runs_run_at", "simulation_runs")
    op.drop_table("simulation_runs")
