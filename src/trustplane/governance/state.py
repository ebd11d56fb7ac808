"""What the decision path asks governance: in memory, replaced whole when the change feed's
`governance` topic moves (a grant approved or revoked, a break-glass opened, an exception
approved or revoked) on any replica.

The decision path never queries the store: `elevation(request)` is one dict lookup, empty
when no grant or exception exists at all. Windows are checked by the evaluator at its own
clock, so a grant that ran out stops applying even before the next refresh drops it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, select

from trustplane.decision.requests import parse_entity
from trustplane.governance.records import TOPIC, Clock
from trustplane.model import AccessRequest, Elevation, ExceptionRef, GrantRef
from trustplane.store.tables import access_grants, change_versions, policy_exceptions


@dataclass(frozen=True)
class _Scoped:
    ref: ExceptionRef
    action: str | None
    resource: str | None


@dataclass(frozen=True)
class _Held:
    grants: tuple[GrantRef, ...]
    exceptions: tuple[_Scoped, ...]


class GovernanceState:
    def __init__(
        self,
        engine: Engine,
        clock: Clock = time.time,
        on_refresh: Callable[[int, int, int], None] | None = None,
    ) -> None:
        """`on_refresh(grants, exceptions, break_glass)`: counts after each reload (for
        metrics; `break_glass`: the grants that are open break-glass sessions)."""
        self._engine = engine
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self.version = -1
        self._lock = threading.Lock()
        self._on_refresh = on_refresh

    def refresh(self, _topic: str = TOPIC) -> None:
        now = self._clock()
        with self._engine.connect() as connection:
            version = connection.execute(
                select(change_versions.c.version).where(change_versions.c.topic == TOPIC)
            ).scalar()
            grants = connection.execute(
                select(access_grants).where(
                    access_grants.c.revoked_at.is_(None), access_grants.c.expires_at > now
                )
            ).all()
            exceptions = connection.execute(
                select(policy_exceptions).where(
                    policy_exceptions.c.status == "approved",
                    policy_exceptions.c.revoked_at.is_(None),
                    policy_exceptions.c.expires_at > now,
                )
            ).all()
        by_principal: dict[str, tuple[list[GrantRef], list[_Scoped]]] = {}
        for row in grants:
            parent = parse_entity(row.role, "role")
            ref = GrantRef(row.id, parent.type, parent.id, float(row.starts_at), row.expires_at)
            by_principal.setdefault(row.principal, ([], []))[0].append(ref)
        for row in exceptions:
            scoped = _Scoped(
                ExceptionRef(row.id, row.policy_id, float(row.starts_at), float(row.expires_at)),
                row.action,
                row.resource,
            )
            by_principal.setdefault(row.principal, ([], []))[1].append(scoped)
        held = {p: _Held(tuple(g), tuple(e)) for p, (g, e) in by_principal.items()}
        with self._lock:
            current = int(version or 0)
            if current < self.version:
                return  # an older read finishing late
            self._held, self.version = held, current
        if self._on_refresh is not None:
            sessions = sum(1 for row in grants if row.kind == "break-glass")
            self._on_refresh(len(grants), len(exceptions), sessions)

    def elevation(self, request: AccessRequest) -> Elevation | None:
        """The grants and the exceptions matching this request's flow, for its principal."""
        held = self._held
        if not held:
            return None
        found = held.get(str(request.principal))
        if found is None:
            return None
        if not found.exceptions:
            return Elevation(found.grants, ())
        action, resource = str(request.action), str(request.resource)
        matching = tuple(
            s.ref
            for s in found.exceptions
            if (s.action is None or s.action == action)
            and (s.resource is None or s.resource == resource)
        )
        return Elevation(found.grants, matching)
