"""The identity inventory: every identity issued or seen, who owns it, when it was last used and
how long its credentials live.

Issuance is a hot path (thousands per second), so sightings are summed in memory and written
in one transaction per `flush` (the service flushes every few seconds and when it stops).

Drift: what is registered against what is observed. A SPIFFE ID seen in use at an enforcement
point (mTLS, a forwarded client certificate, a JWT-SVID) that no registration entry names and
no token-exchange rule issues is `unregistered` (an entry deleted while its SVIDs live on, a
certificate minted elsewhere); one of another trust domain is `foreign_trust_domain`; an entry
that nothing ever used is `not_observed`. `DriftCheck` answers per sighting from memory (the
service logs each drifting identity once and counts every sighting); `inventory_report` flags
them from the store.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, or_, select, update

from trustplane.identity.spiffe_id import SpiffeId, SpiffeIdError
from trustplane.store.tables import identity_inventory

log = logging.getLogger("trustplane.identity.inventory")
FLUSH_SECONDS = 5.0
UNREGISTERED = "unregistered"
FOREIGN_TRUST_DOMAIN = "foreign_trust_domain"
NOT_OBSERVED = "not_observed"
_VERDICTS = 10_000  # SPIFFE IDs whose verdict is remembered until the entries change


def template_pattern(template: str) -> re.Pattern[str]:
    """A token-exchange rule's `spiffe_id` template as a pattern: `{claim}` matches any text."""
    parts = re.split(r"\{[^{}]*\}", template)
    return re.compile(".+".join(re.escape(part) for part in parts))


class DriftCheck:
    """Whether an observed SPIFFE ID drifts from what is registered: None, `unregistered` or
    `foreign_trust_domain`. Cheap on the hot path: verdicts are kept until `registered` says
    the entries changed (a new generation)."""

    def __init__(
        self,
        trust_domain: str,
        registered: Callable[[], tuple[int, Iterable[str]]],
        exchange_templates: Sequence[str] = (),
    ) -> None:
        """`registered()`: (generation, the registered SPIFFE IDs)."""
        self._trust_domain = trust_domain
        self._registered = registered
        self._patterns = [template_pattern(t) for t in exchange_templates]
        self._generation: int | None = None
        self._ids: frozenset[str] = frozenset()
        self._verdicts: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def kind(self, spiffe_id: str) -> str | None:
        generation, ids = self._registered()
        with self._lock:
            if generation != self._generation:
                self._generation, self._ids = generation, frozenset(ids)
                self._verdicts = {}
            if spiffe_id in self._verdicts:
                return self._verdicts[spiffe_id]
            verdict = self._judge(spiffe_id)
            if len(self._verdicts) >= _VERDICTS:
                self._verdicts.clear()
            self._verdicts[spiffe_id] = verdict
            return verdict

    def _judge(self, spiffe_id: str) -> str | None:
        try:
            parsed = SpiffeId.parse(spiffe_id)
        except SpiffeIdError:
            return UNREGISTERED
        if not parsed.member_of(self._trust_domain):
            return FOREIGN_TRUST_DOMAIN
        if str(parsed) in self._ids or any(p.fullmatch(str(parsed)) for p in self._patterns):
            return None
        return UNREGISTERED


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
    first_seen: float | None  # None: registered, never issued nor seen
    last_seen: float | None
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

    def knows(self, name: str) -> bool:
        """Whether an identity named `name` has been issued, seen or registered: a SPIFFE ID,
        or the subject of a bearer token (`issuer#subject`)."""
        with self._lock:
            if any(p == name or p.endswith(f"#{name}") for p in self._pending):
                return True
        column = identity_inventory.c.principal
        with self._engine.connect() as connection:
            found = connection.execute(
                select(column)
                .where(or_(column == name, column.endswith(f"#{name}", autoescape=True)))
                .limit(1)
            ).first()
        return found is not None

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
    drift: DriftCheck | None = None,
    registered: Sequence[tuple[str, str]] = (),
) -> list[InventoryItem]:
    """Every recorded identity with its flags: `no_owner`, `unused` (not seen for
    `unused_days`), `long_lived` (a credential lifetime above `long_lived_seconds`), and with
    `drift` the drift flags: `unregistered`, `foreign_trust_domain` on SPIFFE IDs in use, and
    each `registered` (SPIFFE ID, owner) never issued nor seen listed as `not_observed`."""
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
        _, _, spiffe_id = row.principal.rpartition("#")  # `issuer#sub` for a bearer token
        if drift is not None and row.kind != "ci" and spiffe_id.startswith("spiffe://"):
            found = drift.kind(spiffe_id)
            if found is not None:
                flags.append(found)
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
    if drift is not None:
        used = {item.principal.rpartition("#")[2] for item in items}
        for spiffe_id, owner in dict(registered).items():
            if spiffe_id not in used:
                flags = [*([] if owner else ["no_owner"]), NOT_OBSERVED]
                items.append(
                    InventoryItem(spiffe_id, "workload", owner, None, None, 0, 0, tuple(flags))
                )
        items.sort(key=lambda item: item.principal)
    return items
