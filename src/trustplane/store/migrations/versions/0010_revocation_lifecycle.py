"""Revocation lifecycle: an optional expiry, and lifted or expired revocations kept as history
(one revocation in force per target instead of one ever).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

IN_FORCE = sa.text("ended IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("revocations") as batch:
        batch.drop_constraint("uq_revocations_kind_target", type_="unique")
        batch.add_column(sa.Column("expires_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("ended", sa.String(8), nullable=True))
        batch.add_column(sa.Column("ended_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("ended_by", sa.String(256), nullable=True))
        batch.add_column(sa.Column("end_reason", sa.Text, nullable=True))
    op.create_index(
        "uq_revocations_in_force",
        "revocations",
        ["kind", "target"],
        unique=True,
        sqlite_where=IN_FORCE,
        postgresql_where=IN_FORCE,
    )


def downgrade() -> None:
    op.drop_index("uq_revocations_in_force", "revocations")
    op.execute("DELETE FROM revocations WHERE ended IS NOT NULL")
    with op.batch_alter_table("revocations") as batch:
        for column in ("end_reason", "ended_by", "ended_at", "ended", "expires_at"):
            batch.drop_column(column)
        batch.create_unique_constraint("uq_revocations_kind_target", ["kind", "target"])
