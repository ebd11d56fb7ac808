"""Revocation: take a principal or a credential out of service everywhere, within a second.

A revocation is a row in the store, written in the same transaction that bumps the change
feed's `revocations` topic, so every serving process (workers, replicas on the same PostgreSQL)
reloads its in-memory `RevocationList` as soon as it hears of it. The decision path asks that
list, in memory, before any policy: a revoked principal is denied whatever the bundle says, a
revoked credential (a JWT id, or an X.509 certificate by its serial number) is refused whatever
its signature and expiry say.

Grants, exceptions and break-glass sessions are revoked in governance (`governance/access.py`,
`governance/exceptions.py`) through the same admin call; those revocations also move this
list's epoch, so every cache outside the process forgets answers given under them.

The list's `epoch` (the topic's version) travels in every decision, so caches outside the
process (the SDK's) can tell that what they hold predates a revocation and drop it. Revoking
twice is the same revocation (idempotent), never a second row.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, select
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


_GOVERNED = frozenset({RevocationKind.GRANT, RevocationKind.EXCEPTION, RevocationKind.SESSION})
_SERIAL = re.compile(r"^[0-9a-f]{1,64}$")


def normalise_serial(serial: str) -> str:
    """A certificate serial as lowercase hex without separators or leading zeros
    (`01:AB:cd` and `0x1abcd` are the same serial)."""
    text = serial.strip().lower().replace(":", "").replace(" ", "")
    text = text.removeprefix("0x").lstrip("0") or "0"
    if not _SERIAL.match(text):
        raise RevocationError(f"certificate serial {serial!r} must be hexadecimal")
    return text


class RevocationError(ValueError):
    """A revocation request that cannot be carried out as given."""


@dataclass(frozen=True)
class Revocation:
    id: str
    kind: RevocationKind
    target: str
    reason: str
    actor: str
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "target": self.target,
            "reason": self.reason,
            "actor": self.actor,
            "created_at": self.created_at,
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
    """Revocations in the store; each change is announced on the change feed."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def revoke(
        self, kind: RevocationKind, target: str, reason: str, actor: str
    ) -> tuple[Revocation, bool]:
        """Record a revocation; returns it and whether it is new (False: it already was)."""
        if kind in _GOVERNED:
            raise RevocationError(f"{kind.value} revocations are kept by governance")
        target = normalise_target(kind, target)
        if not reason.strip():
            raise RevocationError("a reason is required: it is what the audit trail shows")
        revocation = Revocation(str(uuid.uuid4()), kind, target, reason.strip(), actor, time.time())
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
                    )
                )
                announce(connection, TOPIC)
        except IntegrityError:
            existing = self.find(kind, target)
            if existing is None:  # pragma: no cover - deleted in between
                raise
            return existing, False
        return revocation, True

    def find(self, kind: RevocationKind, target: str) -> Revocation | None:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(revocations).where(
                    revocations.c.kind == kind.value, revocations.c.target == target
                )
            ).first()
        return None if row is None else _revocation(row)

    def all(self) -> tuple[list[Revocation], int]:
        """Every revocation and the feed version they correspond to (read together)."""
        with self._engine.connect() as connection:
            rows = connection.execute(select(revocations).order_by(revocations.c.created_at)).all()
            version = connection.execute(
                select(change_versions.c.version).where(change_versions.c.topic == TOPIC)
            ).scalar()
        return [_revocation(r) for r in rows], int(version or 0)


class RevocationList:
    """What the decision path asks: in memory, replaced whole on each refresh."""

    def __init__(self, store: RevocationStore) -> None:
        self._store = store
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
        return self._principals.get(str(ref))

    def named(self, principal: str | None) -> Revocation | None:
        """The revocation of a principal given as entity text (User::"alice"), if any."""
        if principal is None or not self._principals:
            return None
        return self._principals.get(principal)

    def certificate(self, serial: str | int | None) -> Revocation | None:
        """The revocation of an X.509 certificate by serial (an int or hex text), if any."""
        if serial is None or not self._certificates:
            return None
        text = format(serial, "x") if isinstance(serial, int) else serial
        try:
            return self._certificates.get(normalise_serial(text))
        except RevocationError:
            return None

    def credential(self, token_id: str | None) -> Revocation | None:
        if token_id is None or not self._credentials:
            return None
        return self._credentials.get(token_id)


def _revocation(row: Any) -> Revocation:
    return Revocation(
        id=row.id,
        kind=RevocationKind(row.kind),
        target=row.target,
        reason=row.reason,
        actor=row.actor,
        created_at=float(row.created_at),
    )
