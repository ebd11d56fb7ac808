"""The behaviour history in the store (`trust_behaviour`), written behind by every replica.

`BehaviourWriter` runs one thread per serving process: every `interval` seconds it writes what
this process saw (uses: newest time wins; per-minute counts: added to the replicas' totals, in
one upsert each) and reads back every row any replica changed since its last read (a margin
behind, since another replica's transaction may commit a little after the time it wrote), then
prunes. At start `load` reads the retained history, so a restarted process knows its principals.
The decision path never waits for any of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine, case, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from trustplane.store.tables import trust_behaviour
from trustplane.trust.behaviour import BASELINE_MINUTES, MINUTE, BehaviourState

log = logging.getLogger("trustplane.trust.behaviour")
_T = trust_behaviour
_ROWS = select(_T.c.principal, _T.c.kind, _T.c.name, _T.c.last_seen, _T.c.count, _T.c.denials)
READ_MARGIN = 30.0  # seconds: rows read again, for writes that committed late


class BehaviourWriter:
    def __init__(
        self,
        engine: Engine,
        state: BehaviourState,
        *,
        interval: float = 2.0,
        retention_days: float = 90,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._state = state
        self._interval = interval
        self._retention = retention_days * 86400
        self._clock = clock
        self._read_since = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flushes = 0

    def load(self) -> None:
        """Read the retained history (at start, before serving)."""
        now = self._clock()
        oldest_minute = int(now // 60) - BASELINE_MINUTES - 1
        with self._engine.connect() as connection:
            rows = connection.execute(_ROWS.where(_T.c.last_seen >= now - self._retention)).all()
        fresh = [tuple(r) for r in rows if r.kind != MINUTE or int(r.name) >= oldest_minute]
        self._state.merge(fresh)
        self._read_since = now

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(self._interval):
                self.flush_or_log()

        self._thread = threading.Thread(target=run, name="trust-behaviour", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout=10)
        self._thread = None
        self.flush_or_log()

    def flush_or_log(self) -> None:
        try:
            self.flush()
        except Exception:
            log.exception("behaviour history not written; kept for the next write")

    def flush(self) -> None:
        """Write this process's history, read the others', prune."""
        now = self._clock()
        uses, counts = self._state.take()
        try:
            with self._engine.begin() as connection:
                _write(connection, uses, counts, now)
        except Exception:
            self._state.written(False)
            raise
        read_from = self._read_since - READ_MARGIN
        with self._engine.connect() as connection:
            rows = connection.execute(_ROWS.where(_T.c.updated_at >= read_from)).all()
        self._state.merge([tuple(r) for r in rows])
        self._state.written(True)
        self._read_since = now
        self._flushes += 1
        if self._flushes % 50 == 1:
            self._state.prune(now, self._retention)
            oldest_minute = int(now // 60) - BASELINE_MINUTES - 1
            with self._engine.begin() as connection:
                connection.execute(delete(_T).where(_T.c.last_seen < now - self._retention))
                connection.execute(
                    delete(_T).where(
                        _T.c.kind == MINUTE, _T.c.last_seen < (oldest_minute - 1) * 60.0
                    )
                )


def _write(
    connection: Connection,
    uses: dict[tuple[str, str, str], float],
    counts: dict[str, dict[int, list[int]]],
    now: float,
) -> None:
    rows = [
        {
            "principal": p,
            "kind": k,
            "name": n,
            "last_seen": t,
            "count": 1,
            "denials": 0,
            "updated_at": now,
        }
        for (p, k, n), t in uses.items()
    ]
    rows += [
        {
            "principal": p,
            "kind": MINUTE,
            "name": str(m),
            "last_seen": m * 60.0 + 59.0,
            "count": c,
            "denials": d,
            "updated_at": now,
        }
        for p, minutes in counts.items()
        for m, (c, d) in minutes.items()
    ]
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(_T)
    excluded = statement.excluded
    is_minute = _T.c.kind == MINUTE
    statement = statement.on_conflict_do_update(
        index_elements=["principal", "kind", "name"],
        set_={
            "last_seen": case(
                (excluded.last_seen > _T.c.last_seen, excluded.last_seen), else_=_T.c.last_seen
            ),
            "count": _T.c.count + excluded.count,
            "denials": case((is_minute, _T.c.denials + excluded.denials), else_=_T.c.denials),
            "updated_at": excluded.updated_at,
        },
    )
    connection.execute(statement, rows)
