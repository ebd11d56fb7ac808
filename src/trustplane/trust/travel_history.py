"""The travel signals' history in the store: each principal's sightings, one row per country in
`trust_locations`, read and written in one transaction. Apart from `travel.py` so that loading a
bundle (which parses `trust.yaml` and names the travel signals) does not import the store.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from trustplane.store.tables import trust_locations
from trustplane.trust.network import Location

# A sighting from the same place is rewritten at most this often: the write is what costs (a
# commit per request), and a minute's staleness only makes travel from here look slower.
REFRESH_SECONDS = 60.0


def remember(
    engine: Engine, principal: str, address: str, here: Location, now: float
) -> list[dict[str, Any]]:
    """The principal's earlier sightings, then this one stored (one transaction)."""
    values = {
        "principal": principal,
        "country": here.country,
        "last_seen": now,
        "latitude": here.latitude,
        "longitude": here.longitude,
        "address": address[:64],
    }
    with engine.begin() as connection:
        rows = connection.execute(_HISTORY, {"p": principal}).mappings()
        history = [dict(row) for row in rows]
        same = next((r for r in history if r["country"] == here.country), None)
        if same is not None:
            unchanged = (same["latitude"], same["longitude"]) == (here.latitude, here.longitude)
            if unchanged and now - same["last_seen"] < REFRESH_SECONDS:
                return history  # seen here moments ago: no write on every request
            connection.execute(_UPDATE, values | {"p": principal, "c": here.country})
        else:
            try:
                with connection.begin_nested():
                    connection.execute(insert(trust_locations), values)
            except IntegrityError:  # another replica stored it first
                connection.execute(_UPDATE, values | {"p": principal, "c": here.country})
    return history


# Built once: SQLAlchemy caches the compiled form, and building the expressions per request
# cost more than the queries.
_T = trust_locations
_HISTORY = select(_T).where(_T.c.principal == bindparam("p"))
_UPDATE = (
    update(_T)
    .where((_T.c.principal == bindparam("p")) & (_T.c.country == bindparam("c")))
    .values(
        last_seen=bindparam("last_seen"),
        latitude=bindparam("latitude"),
        longitude=bindparam("longitude"),
        address=bindparam("address"),
    )
)
