"""Trust plane: where each principal was seen from, per country (impossible travel, new country).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trust_locations",
        sa.Column("principal", sa.String(1024), primary_key=True),
        sa.Column("country", sa.String(8), primary_key=True),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("latitude", sa.Float, nullable=True),
        sa.Column("longitude", sa.Float, nullable=True),
        sa.Column("address", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("trust_locations")
