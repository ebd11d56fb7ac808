"""Image attestations: CI's statements about image digests, countersigned by the trust domain.

Revision ID: 0007
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attestations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("repository", sa.String(2048), nullable=False),
        sa.Column("image", sa.String(2048), nullable=False),
        sa.Column("predicate_type", sa.String(512), nullable=False),
        sa.Column("signer", sa.String(2048), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("decision_id", sa.String(36), nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
    )
    op.create_index("ix_attestations_digest", "attestations", ["digest"])
    op.create_index("ix_attestations_created_at", "attestations", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_attestations_created_at", "attestations")
    op.drop_index("ix_attestations_digest", "attestations")
    op.drop_table("attestations")
