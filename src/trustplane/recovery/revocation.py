"""Revocation: take a principal or a credential out of service everywhere, within a second.

A revocation is a row in the store, written in the same transaction that bumps the change
feed's `revocations` topic, so every serving process (workers, replicas on the same PostgreSQL)
reloads its in-memory `RevocationList` as soon as it hears of it. The decision path asks that
list, in memory, before any policy: a revoked principal is denied whatever the bundle says, a
revoked credential (a JWT id, or an X.509 certificate by its serial number) is refused whatever
its signature and expiry say.

A revocation may carry an expiry: past it, the list no longer denies (checked on each lookup,
so every process stops at the same instant), and housekeeping records it as expired. One in
force may be lifted. Lifted and expired revocations stay in the table as history; one
revocation is in force per target. Revoking twice is the same revocation (idempotent), never a
second row in force.

Grants, exceptions and break-glass sessions are revoked in governance, whose records hold them;
`service.py` is the one entry point for every kind. Those revocations also move this list's
epoch, so every cache outside the process forgets answers given under them.

The list's `epoch` (the topic's version) travels in every decision, so caches outside the
process (the SDK's) can tell that what they hold predates a revocation and drop it.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from trustplane.model import EntityRef
from trustplane.store.feed import announce
from trustplane.store.tables import change_versions, revocations

TOPIC = "revocations"
_ENTITY = re.compile(
    r'^([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)::"((?:[^"\\]|\\.)+)"$'
)


class RevocationKind(StrEnum):
    PRINCIPAL = "principal"  # an entity: User::"alice", Service::"checkout"
    CREDENTIAL = "credential"  # a JWT id (jti)
    CERTIFICATE = "certificate"  # an X.509 certificate serial number (hex)
    GRANT = "grant"  # a JIT or break-glass grant (governance)
    EXCEPTION = "exception"  # an exception from the register (governance)
    SESSION = "session"  # a break-glass session (a grant, by its id)


GOVERNED = frozenset({RevocationKind.GRANT, RevocationKind.EXCEPTION, RevocationKind.SESSION})
_SERIAL = re.compile(r"^[0-9a-f]{1,64}$")
_ID_PREFIX = re.compile(r"^[0-9a-f-]{1,36}$")


def normalise_serial(serial: str) -> str:
    """A certificate serial as lowercase hex without separators or leading zeros
    (`01:AB:cd` and `0x1abcd` are the same serial)."""
    text = serial.strip().lower().replace(":", "").replace(" ", "")
    text = text.removeprefix("0x").lstrip("0") or "0"
    if not _SERIAL.match(text):
        raise RevocationError(f"certificate serial {serial!r} must be hexadecimal")
    return text


class RevocationError(ValueError):
    """A revocation request that cannot be carried out as given. `status` is the HTTP status
    it answers with (422: the request is wrong; 404: no such revocation; 409: it conflicts with
    what the store holds); `field` names the request field at fault, if one is."""

    def __init__(self, message: str, status: int = 422, field: str | None = "target") -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class RevocationState(StrEnum):
    IN_FORCE = "in-force"
    LIFTED = "lifted"
    EXPIRED = "expired"


EXPIRY_ACTOR = "trustplane (expiry)"  # who ends a revocation whose expiry has passed


@dataclass(frozen=True)
class Revocation:
    id: str
    kind: RevocationKind
    target: str
    reason: str
    actor: str
    created_at: float
    expires_at: float | None = None
    ended: RevocationState | None = None  # lifted or expired (recorded); None: not ended
    ended_at: float | None = None
    ended_by: str | None = None
    end_reason: str | None = None

    def state(self, now: float | None = None) -> RevocationState:
        """In force, lifted or expired. An expiry that has passed ends the revocation at once,
        before housekeeping records it."""
        if self.ended is not None:
            return self.ended
        if self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at:
            return RevocationState.EXPIRED
        return RevocationState.IN_FORCE

    def in_force(self, now: float | None = None) -> bool:
        return self.state(now) is RevocationState.IN_FORCE

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "target": self.target,
            "reason": self.reason,
            "actor": self.actor,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "state": self.state(now).value,
            "ended_at": self.ended_at,
            "ended_by": self.ended_by,
            "end_reason": self.end_reason,
        }


def normalise_target(kind: RevocationKind, target: str) -> str:
    """The canonical text of a target; raises RevocationError naming what is wrong."""
    target = target.strip()
    if not target:
        raise RevocationError("target must not be empty")
    if len(target) > 512:
        raise RevocationError("target must be at most 512 characters")
    if kind is RevocationKind.PRINCIPAL and not _ENTITY.match(target):
        raise RevocationError(
            f'principal {target!r} must be an entity reference such as User::"alice"'
        )
    if kind is RevocationKind.CERTIFICATE:
        return normalise_serial(target)
    return target


class RevocationStore:
    """Revocations in the store; each change is announced on the change feed in the same
    transaction, so every serving process reloads its list."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock

    def revoke(
        self,
        kind: RevocationKind,
        target: str,
        reason: str,
        actor: str,
        expires_at: float | None = None,
    ) -> tuple[Revocation, bool]:
        """Record a revocation; returns it and whether it is new (False: one is already in
        force for the target, and it stands as it was). A revocation whose expiry has passed
        but is not yet recorded as ended counts as in force here: end it first
        (`expire_due`)."""
        if kind in GOVERNED:
            raise RevocationError(f"{kind.value} revocations are kept by governance", 422, "kind")
        target = normalise_target(kind, target)
        if not reason.strip():
            raise RevocationError(
                "a reason is required: it is what the audit trail shows", 422, "reason"
            )
        now = self._clock()
        if expires_at is not None and expires_at <= now:
            raise RevocationError("the expiry must be in the future", 422, "expires")
        revocation = Revocation(
            str(uuid.uuid4()), kind, target, reason.strip(), actor, now, expires_at
        )
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    revocations.insert().values(
                        id=revocation.id,
                        kind=kind.value,
                        target=target,
                        reason=revocation.reason,
                        actor=actor,
                        created_at=revocation.created_at,
                        expires_at=expires_at,
                    )
                )
                announce(connection, TOPIC)
        except IntegrityError:
            existing = self.find(kind, target)
            if existing is None:  # pragma: no cover - ended in between
                raise
            return existing, False
        return revocation, True

    def find(self, kind: RevocationKind, target: str) -> Revocation | None:
        """The revocation of `target` not yet recorded as ended, if any."""
        with self._engine.connect() as connection:
            row = connection.execute(
                select(revocations).where(
                    revocations.c.kind == kind.value,
                    revocations.c.target == target,
                    revocations.c.ended.is_(None),
                )
            ).first()
        return None if row is None else _revocation(row)

    def get(self, revocation_id: str) -> Revocation:
        """The revocation whose id is `revocation_id` or starts with it (a unique prefix)."""
        text = revocation_id.strip().lower()
        if not _ID_PREFIX.match(text):
            raise RevocationError(
                f"revocation id {revocation_id!r} must be an id or its first characters "
                "(hexadecimal and dashes)",
                422,
                "id",
            )
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(revocations).where(revocations.c.id.startswith(text)).limit(2)
            ).all()
        if not rows:
            raise RevocationError(f"no revocation {revocation_id}", 404, "id")
        if len(rows) > 1:
            raise RevocationError(
                f"revocation id prefix {revocation_id!r} is ambiguous: give more characters",
                409,
                "id",
            )
        return _revocation(rows[0])

    def lift(self, revocation_id: str, reason: str, actor: str) -> tuple[Revocation, bool]:
        """End a revocation in force now; returns it and whether this call lifted it (False:
        it was lifted already, and the first lift stands). An expired one cannot be lifted."""
        if not reason.strip():
            raise RevocationError(
                "a reason is required: it is what the audit trail shows", 422, "reason"
            )
        found = self.get(revocation_id)
        now = self._clock()
        if found.ended is RevocationState.LIFTED:
            return found, False
        if found.state(now) is RevocationState.EXPIRED:
            raise RevocationError(f"revocation {found.id} has already expired", 409, "id")
        with self._engine.begin() as connection:
            done = connection.execute(
                update(revocations)
                .where(revocations.c.id == found.id, revocations.c.ended.is_(None))
                .values(
                    ended=RevocationState.LIFTED.value,
                    ended_at=now,
                    ended_by=actor,
                    end_reason=reason.strip(),
                )
            ).rowcount
            if done:
                announce(connection, TOPIC)
        return self.get(found.id), bool(done)

    def expire_due(self) -> list[Revocation]:
        """Record as expired every revocation whose expiry has passed; returns those this call
        ended. Several processes may run it at once: each row is ended by exactly one."""
        now = self._clock()
        with self._engine.connect() as connection:
            due = connection.execute(
                select(revocations).where(
                    revocations.c.ended.is_(None), revocations.c.expires_at <= now
                )
            ).all()
        ended: list[Revocation] = []
        for row in due:
            with self._engine.begin() as connection:
                done = connection.execute(
                    update(revocations)
                    .where(revocations.c.id == row.id, revocations.c.ended.is_(None))
                    .values(
                        ended=RevocationState.EXPIRED.value,
                        ended_at=row.expires_at,
                        ended_by=EXPIRY_ACTOR,
                        end_reason="expired",
                    )
                ).rowcount
                if done:
                    announce(connection, TOPIC)
            if done:
                ended.append(_revocation(row))
        return [self.get(r.id) for r in ended]

    def all(self, *, ended: bool = False) -> tuple[list[Revocation], int]:
        """The revocations not recorded as ended (with `ended`, every one ever made) and the
        feed version they correspond to (read together)."""
        query = select(revocations).order_by(revocations.c.created_at)
        if not ended:
            query = query.where(revocations.c.ended.is_(None))
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
            version = connection.execute(
                select(change_versions.c.version).where(change_versions.c.topic == TOPIC)
            ).scalar()
        return [_revocation(r) for r in rows], int(version or 0)


class RevocationList:
    """What the decision path asks: in memory, replaced whole on each refresh."""

    def __init__(self, store: RevocationStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._principals: dict[str, Revocation] = {}
        self._credentials: dict[str, Revocation] = {}
        self._certificates: dict[str, Revocation] = {}
        self.epoch = 0
        self._lock = threading.Lock()

    def refresh(self, _topic: str = TOPIC) -> None:
        items, version = self._store.all()
        principals = {r.target: r for r in items if r.kind is RevocationKind.PRINCIPAL}
        credentials = {r.target: r for r in items if r.kind is RevocationKind.CREDENTIAL}
        certificates = {r.target: r for r in items if r.kind is RevocationKind.CERTIFICATE}
        with self._lock:
            if version < self.epoch:
                return  # an older read finishing late
            self._principals, self._credentials, self.epoch = principals, credentials, version
            self._certificates = certificates

    def principal(self, ref: EntityRef) -> Revocation | None:
        if not self._principals:
            return None
        return self._in_force(self._principals.get(str(ref)))

    def named(self, principal: str | None) -> Revocation | None:
        """The revocation of a principal given as entity text (User::"alice"), if any."""
        if principal is None or not self._principals:
            return None
        return self._in_force(self._principals.get(principal))

    def certificate(self, serial: str | int | None) -> Revocation | None:
        """The revocation of an X.509 certificate by serial (an int or hex text), if any."""
        if serial is None or not self._certificates:
            return None
        text = format(serial, "x") if isinstance(serial, int) else serial
        try:
            return self._in_force(self._certificates.get(normalise_serial(text)))
        except RevocationError:
            return None

    def credential(self, token_id: str | None) -> Revocation | None:
        if token_id is None or not self._credentials:
            return None
        return self._in_force(self._credentials.get(token_id))

    def _in_force(self, found: Revocation | None) -> Revocation | None:
        """A revocation past its expiry no longer denies, in every process, from that instant:
        the list holds it until housekeeping records the expiry and the feed reloads it."""
        if found is None or found.expires_at is None or self._clock() < found.expires_at:
            return found
        return None


def _revocation(row: Any) -> Revocation:
    return Revocation(
        id=row.id,
        kind=RevocationKind(row.kind),
        target=row.target,
        reason=row.reason,
        actor=row.actor,
        created_at=float(row.created_at),
        expires_at=None if row.expires_at is None else float(row.expires_at),
        ended=None if row.ended is None else RevocationState(row.ended),
        ended_at=None if row.ended_at is None else float(row.ended_at),
        ended_by=row.ended_by,
        end_reason=row.end_reason,
    )
