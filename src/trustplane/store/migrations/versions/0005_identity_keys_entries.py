"""Identity plane: trust-domain keys (sealed), workload registration entries, inventory.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("public_pem", sa.Text, nullable=False),
        sa.Column("sealed_private", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("not_after", sa.Float, nullable=False),
        sa.Column("activated_at", sa.Float, nullable=True),
        sa.Column("superseded_at", sa.Float, nullable=True),
        sa.Column("retired_at", sa.Float, nullable=True),
    )
    op.create_index("ix_identity_keys_kind_state", "identity_keys", ["kind", "state"])
    op.create_table(
        "identity_entries",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("spiffe_id", sa.String(2048), nullable=False),
        sa.Column("selectors", sa.Text, nullable=False),
        sa.Column("x509_ttl_seconds", sa.Integer, nullable=True),
        sa.Column("jwt_ttl_seconds", sa.Integer, nullable=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "identity_inventory",
        sa.Column("principal", sa.String(2048), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("max_lifetime_seconds", sa.Integer, nullable=False),
        sa.Column("issued", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("identity_inventory")
    op.drop_table("identity_entries")
    op.drop_index("ix_identity_keys_kind_state", "identity_keys")
    op.drop_table("identity_keys")
