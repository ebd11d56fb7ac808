"""Initial schema: bundle revisions and activations, decisions ledger, checkpoints, admin tokens.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bundle_revisions",
        sa.Column("revision", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("files", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "bundle_activations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("revision", sa.String(64), nullable=False),
        sa.Column("activated_at", sa.Float, nullable=False),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
    )
    op.create_table(
        "decisions",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("decision_id", sa.String(36), nullable=False, unique=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("principal", sa.String(400), nullable=False),
        sa.Column("action", sa.String(400), nullable=False),
        sa.Column("resource", sa.String(400), nullable=False),
        sa.Column("decision", sa.String(5), nullable=False),
        sa.Column("shadow", sa.String(5), nullable=False),
        sa.Column("policies", sa.Text, nullable=False),
        sa.Column("revision", sa.String(64), nullable=True),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_index("ix_decisions_principal_ts", "decisions", ["principal", "ts"])
    op.create_index("ix_decisions_ts", "decisions", ["ts"])
    op.create_table(
        "checkpoints",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "admin_tokens",
        "checkpoints",
        "decisions",
        "bundle_activations",
        "bundle_revisions",
    ):
        op.drop_table(table)
