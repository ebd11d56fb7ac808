"""The identity inventory: every identity issued or seen, who owns it, when it was last used and
how long its credentials live.

Issuance is a hot path (thousands per second), so sightings are summed in memory and written
in one transaction per `flush` (the service flushes every few seconds and when it stops).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select, update

from trustplane.store.tables import identity_inventory

log = logging.getLogger("trustplane.identity.inventory")
FLUSH_SECONDS = 5.0


@dataclass
class _Sighting:
    kind: str
    owner: str
    first: float
    last: float
    lifetime: int
    count: int


@dataclass(frozen=True)
class InventoryItem:
    principal: str
    kind: str
    owner: str
    first_seen: float
    last_seen: float
    max_lifetime_seconds: int
    issued: int
    flags: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "kind": self.kind,
            "owner": self.owner or None,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "max_lifetime_seconds": self.max_lifetime_seconds,
            "issued": self.issued,
            "flags": list(self.flags),
        }


class Inventory:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pending: dict[str, _Sighting] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval: float = FLUSH_SECONDS) -> None:
        """Flush every `interval` seconds in a thread, until `stop` (which flushes once more)."""
        if self._thread is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval):
                self.flush_or_log()

        self._thread = threading.Thread(target=run, name="identity-inventory", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush_or_log()

    def flush_or_log(self) -> None:
        try:
            self.flush()
        except Exception:
            log.exception("identity inventory not written; kept for the next flush")

    def seen(self, principal: str, kind: str, owner: str, lifetime_seconds: int) -> None:
        now = time.time()
        with self._lock:
            known = self._pending.get(principal)
            if known is None:
                self._pending[principal] = _Sighting(kind, owner, now, now, lifetime_seconds, 1)
                return
            known.last = now
            known.count += 1
            known.lifetime = max(known.lifetime, lifetime_seconds)
            known.owner = owner or known.owner

    def flush(self) -> int:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            with self._engine.begin() as connection:
                for principal, s in pending.items():
                    row = connection.execute(
                        select(identity_inventory).where(
                            identity_inventory.c.principal == principal
                        )
                    ).first()
                    if row is None:
                        connection.execute(
                            insert(identity_inventory).values(
                                principal=principal,
                                kind=s.kind,
                                owner=s.owner,
                                first_seen=s.first,
                                last_seen=s.last,
                                max_lifetime_seconds=s.lifetime,
                                issued=s.count,
                            )
                        )
                    else:
                        connection.execute(
                            update(identity_inventory)
                            .where(identity_inventory.c.principal == principal)
                            .values(
                                owner=s.owner or row.owner,
                                last_seen=max(s.last, row.last_seen),
                                max_lifetime_seconds=max(s.lifetime, row.max_lifetime_seconds),
                                issued=row.issued + s.count,
                            )
                        )
        except Exception:
            with self._lock:  # nothing is lost: merged back for the next flush
                for principal, s in pending.items():
                    known = self._pending.get(principal)
                    if known is None:
                        self._pending[principal] = s
                    else:
                        known.count += s.count
                        known.first = min(known.first, s.first)
            raise
        return len(pending)


def inventory_report(
    engine: Engine,
    *,
    unused_days: float = 30,
    long_lived_seconds: int = 86_400,
    now: float | None = None,
) -> list[InventoryItem]:
    """Every recorded identity with its flags: `no_owner`, `unused` (not seen for
    `unused_days`), `long_lived` (a credential lifetime above `long_lived_seconds`)."""
    now = time.time() if now is None else now
    with engine.connect() as connection:
        rows = connection.execute(
            select(identity_inventory).order_by(identity_inventory.c.principal)
        ).all()
    items = []
    for row in rows:
        flags = []
        if not row.owner:
            flags.append("no_owner")
        if now - row.last_seen > unused_days * 86_400:
            flags.append("unused")
        if row.max_lifetime_seconds > long_lived_seconds:
            flags.append("long_lived")
        items.append(
            InventoryItem(
                principal=row.principal,
                kind=row.kind,
                owner=row.owner,
                first_seen=row.first_seen,
                last_seen=row.last_seen,
                max_lifetime_seconds=row.max_lifetime_seconds,
                issued=row.issued,
                flags=tuple(flags),
            )
        )
    return items
