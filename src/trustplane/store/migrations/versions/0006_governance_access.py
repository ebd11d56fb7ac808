"""Governance: JIT access requests, approvals, grants (JIT and break-glass), post-incident
reviews, the exception register and the notification outbox.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("principal", sa.String(512), nullable=False),
        sa.Column("role", sa.String(512), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("ticket", sa.String(200), nullable=False),
        sa.Column("duration_seconds", sa.Integer, nullable=False),
        sa.Column("approvals_required", sa.Integer, nullable=False),
        sa.Column("tier", sa.String(4), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.Column("decided_by", sa.String(512), nullable=True),
        sa.Column("grant_id", sa.String(36), nullable=True),
        sa.Column("revision", sa.String(64), nullable=False),
    )
    op.create_index("ix_access_requests_status", "access_requests", ["status", "expires_at"])
    op.create_table(
        "access_approvals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("approver", sa.String(512), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("request_id", "approver", name="uq_access_approvals_approver"),
    )
    op.create_table(
        "access_grants",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("principal", sa.String(512), nullable=False),
        sa.Column("role", sa.String(512), nullable=False),
        sa.Column("request_id", sa.String(36), nullable=True),
        sa.Column("profile", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("ticket", sa.String(200), nullable=False),
        sa.Column("created_by", sa.String(512), nullable=False),
        sa.Column("starts_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("revoked_by", sa.String(512), nullable=True),
        sa.Column("revoke_reason", sa.Text, nullable=True),
        sa.Column("expiry_notified", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_access_grants_expires", "access_grants", ["expires_at"])
    op.create_table(
        "break_glass_reviews",
        sa.Column("grant_id", sa.String(36), primary_key=True),
        sa.Column("opened_by", sa.String(512), nullable=False),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("closed_at", sa.Float, nullable=True),
        sa.Column("closed_by", sa.String(512), nullable=True),
        sa.Column("notes", sa.Text, nullable=True),
    )
    op.create_table(
        "policy_exceptions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("policy_id", sa.String(128), nullable=False),
        sa.Column("policy_tier", sa.String(4), nullable=False),
        sa.Column("principal", sa.String(512), nullable=False),
        sa.Column("action", sa.String(512), nullable=True),
        sa.Column("resource", sa.String(512), nullable=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("ticket", sa.String(200), nullable=False),
        sa.Column("requested_by", sa.String(512), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("approvals_required", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("duration_seconds", sa.Integer, nullable=False),
        sa.Column("starts_at", sa.Float, nullable=True),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("decided_by", sa.String(512), nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("revoked_by", sa.String(512), nullable=True),
        sa.Column("revoke_reason", sa.Text, nullable=True),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("delivered_at", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_outbox_due", "outbox", ["delivered_at", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_due", "outbox")
    op.drop_table("outbox")
    op.drop_table("policy_exceptions")
    op.drop_table("break_glass_reviews")
    op.drop_index("ix_access_grants_expires", "access_grants")
    op.drop_table("access_grants")
    op.drop_table("access_approvals")
    op.drop_index("ix_access_requests_status", "access_requests")
    op.drop_table("access_requests")
