"""Trust plane: device posture reports and each principal's history of use (novelty, velocity).

Revision ID: 0013
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trust_devices",
        sa.Column("device_id", sa.String(200), primary_key=True),
        sa.Column("disk_encrypted", sa.Boolean, nullable=False),
        sa.Column("os_patch_age_days", sa.Integer, nullable=False),
        sa.Column("edr_running", sa.Boolean, nullable=False),
        sa.Column("screen_lock", sa.Boolean, nullable=False),
        sa.Column("managed", sa.Boolean, nullable=False),
        sa.Column("reported_at", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("reported_by", sa.String(400), nullable=False),
        sa.Column("certificate_serial", sa.String(80), nullable=True),
        sa.Column("owner", sa.String(400), nullable=False),
    )
    op.create_index("ix_trust_devices_serial", "trust_devices", ["certificate_serial"])
    op.create_table(
        "trust_behaviour",
        sa.Column("principal", sa.String(1024), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(400), primary_key=True),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("denials", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_trust_behaviour_updated", "trust_behaviour", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_trust_behaviour_updated", "trust_behaviour")
    op.drop_table("trust_behaviour")
    op.drop_index("ix_trust_devices_serial", "trust_devices")
    op.drop_table("trust_devices")
