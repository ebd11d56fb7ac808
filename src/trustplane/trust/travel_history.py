"""The travel signals' history: each principal's sightings, in memory first, shared through the
store. Apart from `travel.py` so that loading a bundle (which parses `trust.yaml` and names the
travel signals) does not import the store.

Why in memory: the history used to be read and written in one store transaction per request,
on the event loop, which cost more than the whole decision. Now

- a principal's sightings are read from the store once per process (`load`, which the decision
  point runs in a worker thread before evaluating: `TravelSignals.prepare`), then kept in memory
  (bounded: the least recently used principals are forgotten and read again when they return);
- a new sighting updates memory at once and is written behind by one writer thread that wakes
  when there is something to write (no polling) and lets the batch fill for 50 ms, one
  transaction per batch, announcing the `trust_locations` topic on the change feed;
- every replica's feed subscriber (`refresh`) reads the rows changed since its last read
  (indexed on `last_seen`) and merges those of the principals it holds, so a sighting on one
  replica is seen by the others within the feed's latency (milliseconds with PostgreSQL's
  NOTIFY, `store.change_poll_ms` on SQLite) plus the writer's.

A sighting from the same place is written at most once a minute (`REFRESH_SECONDS`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from trustplane.store.feed import announce
from trustplane.store.tables import trust_locations
from trustplane.trust.network import Location

log = logging.getLogger("trustplane.trust")

TOPIC = "trust_locations"
# A sighting from the same place is rewritten at most this often: the write is what costs, and
# a minute's staleness only makes travel from here look slower.
REFRESH_SECONDS = 60.0
# How far behind the newest sighting read a refresh starts: replicas' clocks differ a little.
SKEW_SECONDS = 30.0
MAX_PRINCIPALS = 100_000
_RETRY_SECONDS = 1.0  # after a failed write; the sightings stay queued
# How long the writer lets a batch fill once woken: part of the propagation delay to the other
# replicas (bounded by the figures at 1 s), traded for fewer transactions and refreshes.
COALESCE_SECONDS = 0.05

Row = dict[str, Any]  # never changed once built: memory replaces rows, callers may keep them


class TravelHistory:
    """One per process (the runtime's): sightings by principal, then by country."""

    def __init__(self, engine: Engine, *, max_principals: int = MAX_PRINCIPALS) -> None:
        self._engine = engine
        self._max = max_principals
        self._known: OrderedDict[str, dict[str, Row]] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], Row] = {}
        self._wake = threading.Event()
        self._halt = threading.Event()  # set by stop(): no more waiting for a batch to fill
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._watermark: float | None = None  # the newest last_seen a refresh read

    def known(self, principal: str) -> bool:
        """Whether the principal's sightings are in memory (no store read needed)."""
        return principal in self._known

    def load(self, principal: str) -> None:
        """Read the principal's sightings from the store into memory (blocking: the decision
        point calls it in a worker thread)."""
        if principal in self._known:
            return
        with self._engine.connect() as connection:
            rows = connection.execute(_HISTORY, {"p": principal}).mappings().all()
        with self._lock:
            if principal in self._known:
                return
            found = {row["country"]: dict(row) for row in rows}
            for key, row in self._pending.items():  # ours, not yet written
                if key[0] == principal:
                    found[row["country"]] = row
            self._keep(principal, found)

    def remember(
        self, principal: str, address: str, here: Location, now: float
    ) -> Mapping[str, Row]:
        """The principal's earlier sightings by country, then this one remembered (written
        behind). The mapping is never changed afterwards (memory gets a new one on a change):
        the same object twice means the same history."""
        if principal not in self._known:
            self.load(principal)  # callers that did not prepare: a blocking read, once
        values: Row = {
            "principal": principal,
            "country": here.country,
            "last_seen": now,
            "latitude": here.latitude,
            "longitude": here.longitude,
            "address": address[:64],
        }
        with self._lock:
            sightings = self._known.get(principal)
            if sightings is None:  # forgotten meanwhile: memory is a cache of the store
                sightings = {}
            history = sightings
            same = sightings.get(str(here.country))
            if same is not None:
                unchanged = (same["latitude"], same["longitude"]) == (here.latitude, here.longitude)
                if unchanged and now - same["last_seen"] < REFRESH_SECONDS:
                    self._known.move_to_end(principal)
                    return history  # seen here moments ago: nothing to write
            sightings = dict(sightings)
            sightings[str(here.country)] = values
            self._keep(principal, sightings)
            self._pending[(principal, str(here.country))] = values
        self._start_writer()
        self._wake.set()
        return history

    def _keep(self, principal: str, sightings: dict[str, Row]) -> None:
        """Under the lock."""
        self._known[principal] = sightings
        self._known.move_to_end(principal)
        while len(self._known) > self._max:
            self._known.popitem(last=False)

    # -- sharing with the other replicas ------------------------------------------------------

    def refresh(self, _topic: str = TOPIC) -> None:
        """The change feed's subscriber: merge the sightings written since the last refresh
        (by any replica) for the principals held in memory."""
        since = None if self._watermark is None else self._watermark - SKEW_SECONDS
        query = _CHANGED if since is not None else _ALL
        with self._engine.connect() as connection:
            result = connection.execute(query, {} if since is None else {"since": since})
            rows = result.mappings().all()
        with self._lock:
            for found in rows:
                row = dict(found)
                seen = row["last_seen"]
                if self._watermark is None or seen > self._watermark:
                    self._watermark = seen
                sightings = self._known.get(row["principal"])
                if sightings is None:
                    continue
                mine = sightings.get(row["country"])
                if mine is None or seen > mine["last_seen"]:
                    sightings = dict(sightings)
                    sightings[row["country"]] = row
                    self._known[row["principal"]] = sightings

    def start(self, now: float) -> None:
        """Only sightings from `now - SKEW_SECONDS` on are read by the first refresh."""
        self._watermark = now
        self._start_writer()

    # -- writing behind -----------------------------------------------------------------------

    def _start_writer(self) -> None:
        if self._thread is None and not self._stopping:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._write_loop, name="trust-travel-writer", daemon=True
                    )
                    self._thread.start()

    def _write_loop(self) -> None:
        while True:
            self._wake.wait()
            # A moment for the sightings of other requests to join the batch: one transaction
            # and one announcement (one refresh on every replica) for all of them.
            self._halt.wait(COALESCE_SECONDS)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the store is down: the sightings stay queued, retried
                log.exception("travel history: cannot write sightings; retrying")
                if self._stopping:
                    return
                self._halt.wait(_RETRY_SECONDS)
                self._wake.set()
            if self._stopping:
                return

    def flush(self) -> None:
        """Write the queued sightings (one transaction) and announce them."""
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            with self._engine.begin() as connection:
                for row in batch.values():
                    _write(connection, row)
                announce(connection, TOPIC)
        except Exception:
            with self._lock:  # put back what a later sighting did not replace
                for key, row in batch.items():
                    self._pending.setdefault(key, row)
            raise

    def stop(self) -> None:
        """Write what is queued and stop the writer."""
        self._stopping = True
        self._halt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        try:
            self.flush()
        except Exception:
            log.exception("travel history: sightings not written at shutdown")


def _write(connection: Any, row: Row) -> None:
    values = row | {"p": row["principal"], "c": row["country"]}
    if connection.execute(_UPDATE, values).rowcount:
        return
    try:
        with connection.begin_nested():
            connection.execute(insert(trust_locations), row)
    except IntegrityError:  # another replica stored it first
        connection.execute(_UPDATE, values)


# Built once: SQLAlchemy caches the compiled form.
_T = trust_locations
_HISTORY = select(_T).where(_T.c.principal == bindparam("p"))
_CHANGED = select(_T).where(_T.c.last_seen >= bindparam("since"))
_ALL = select(_T)
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
