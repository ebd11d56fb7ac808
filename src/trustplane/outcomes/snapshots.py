"""Monthly scorecard snapshots in the store: what the HTML report draws trends from."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from trustplane.outcomes.scorecard import Scorecard
from trustplane.store.tables import scorecard_snapshots

__all__ = ["load_snapshots", "save_snapshot"]


def save_snapshot(engine: Engine, card: Scorecard) -> None:
    """Store `card` as its month's snapshot, replacing an earlier computation of that month."""
    with engine.begin() as conn:
        conn.execute(delete(scorecard_snapshots).where(scorecard_snapshots.c.period == card.period))
        conn.execute(
            insert(scorecard_snapshots).values(
                period=card.period,
                computed_at=card.computed_at,
                revision=card.revision,
                document=json.dumps(card.as_dict(), sort_keys=True),
            )
        )


def load_snapshots(engine: Engine, limit: int = 12) -> list[dict[str, Any]]:
    """The newest `limit` stored months, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(scorecard_snapshots.c.document)
            .order_by(scorecard_snapshots.c.period.desc())
            .limit(limit)
        ).all()
    return [json.loads(row.document) for row in reversed(rows)]
