"""Trust plane: an index on `trust_locations.last_seen`, for the change feed's refresh.

Every replica merges the sightings written since its last read (trust/travel_history.py
`TravelHistory.refresh`, `last_seen >= since`) each time another replica announces some; without
the index each refresh read the whole table.

Revision ID: 0020
Revises: 0019
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_trust_locations_last_seen", "trust_locations", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_trust_locations_last_seen", table_name="trust_locations")
