"""What governance keeps: requests, grants, reviews and exceptions, the errors it raises, who
acts, and the two things every change writes in its own transaction (an outbox row for the
notification, a change-feed bump so every replica reloads)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from sqlalchemy import Connection

from trustplane.store.feed import announce
from trustplane.store.tables import outbox

TOPIC = "governance"  # grants and exceptions changed: reload GovernanceState
Clock = Callable[[], float]


class GovernanceError(Exception):
    """A governance call that cannot be carried out as given; `field` names the input."""

    status = 422
    code = "invalid-request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(GovernanceError):
    status = 404
    code = "not-found"


class Conflict(GovernanceError):
    """The thing is in a state that does not allow this (decided, expired, closed)."""

    status = 409
    code = "conflict"


class Refused(GovernanceError):
    """The caller may not do this (self-approval, not an eligible approver, ...)."""

    status = 403
    code = "forbidden"


@dataclass(frozen=True)
class Actor:
    """Who acts: `name` is what the audit trail shows; `principal` the estate entity the caller
    is (User::"alice"), None for workloads and the bootstrap token."""

    name: str
    principal: str | None = None
    bootstrap: bool = False


def new_id() -> str:
    return str(uuid.uuid4())


def require_text(value: str | None, name: str, why: str) -> str:
    text = (value or "").strip()
    if not text:
        raise GovernanceError(f"{name} is required: {why}", name)
    return text


def record_outbox(
    connection: Connection, event: str, subject: dict[str, Any], text: str, now: float
) -> None:
    """Queue a notification inside the caller's transaction."""
    payload = {"event": event, "time": now, "text": text, "subject": subject}
    connection.execute(
        outbox.insert().values(
            event=event,
            payload=orjson.dumps(payload).decode(),
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
    )


def changed(connection: Connection, *, revokes: bool = False) -> None:
    """Announce a grant/exception change; a revoke also moves the revocation epoch, so caches
    outside the process (the SDK's) drop answers given under what was revoked."""
    announce(connection, TOPIC)
    if revokes:
        announce(connection, "revocations")


@dataclass(frozen=True)
class AccessRequestRecord:
    id: str
    principal: str
    role: str
    reason: str
    ticket: str
    duration_seconds: int
    approvals_required: int
    tier: str
    status: str
    created_at: float
    expires_at: float
    decided_at: float | None
    decided_by: str | None
    grant_id: str | None
    revision: str
    approvals: tuple[dict[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["approvals"] = list(self.approvals)
        return out


@dataclass(frozen=True)
class Grant:
    id: str
    kind: str  # jit | break-glass
    principal: str
    role: str
    request_id: str | None
    profile: str | None
    reason: str
    ticket: str
    created_by: str
    starts_at: float
    expires_at: float
    revoked_at: float | None
    revoked_by: str | None
    revoke_reason: str | None

    def active(self, now: float) -> bool:
        return self.revoked_at is None and self.starts_at <= now < self.expires_at

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        out = asdict(self)
        out["active"] = self.active(time.time() if now is None else now)
        return out


@dataclass(frozen=True)
class Review:
    grant_id: str
    opened_by: str
    due_at: float
    closed_at: float | None
    closed_by: str | None
    notes: str | None

    def overdue(self, now: float) -> bool:
        return self.closed_at is None and now >= self.due_at

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        out = asdict(self)
        out["overdue"] = self.overdue(time.time() if now is None else now)
        return out


@dataclass(frozen=True)
class PolicyException:
    id: str
    policy_id: str
    policy_tier: str
    principal: str
    action: str | None
    resource: str | None
    owner: str
    reason: str
    ticket: str
    requested_by: str
    status: str  # pending | approved | denied
    approvals_required: int
    created_at: float
    duration_seconds: int
    starts_at: float | None
    expires_at: float | None
    decided_by: str | None
    revoked_at: float | None
    revoked_by: str | None
    revoke_reason: str | None

    def active(self, now: float) -> bool:
        return (
            self.status == "approved"
            and self.revoked_at is None
            and self.starts_at is not None
            and self.expires_at is not None
            and self.starts_at <= now < self.expires_at
        )

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        out = asdict(self)
        out["active"] = self.active(time.time() if now is None else now)
        return out


def grant_from(row: Any) -> Grant:
    return Grant(
        id=row.id,
        kind=row.kind,
        principal=row.principal,
        role=row.role,
        request_id=row.request_id,
        profile=row.profile,
        reason=row.reason,
        ticket=row.ticket,
        created_by=row.created_by,
        starts_at=float(row.starts_at),
        expires_at=float(row.expires_at),
        revoked_at=None if row.revoked_at is None else float(row.revoked_at),
        revoked_by=row.revoked_by,
        revoke_reason=row.revoke_reason,
    )


def exception_from(row: Any) -> PolicyException:
    return PolicyException(
        id=row.id,
        policy_id=row.policy_id,
        policy_tier=row.policy_tier,
        principal=row.principal,
        action=row.action,
        resource=row.resource,
        owner=row.owner,
        reason=row.reason,
        ticket=row.ticket,
        requested_by=row.requested_by,
        status=row.status,
        approvals_required=int(row.approvals_required),
        created_at=float(row.created_at),
        duration_seconds=int(row.duration_seconds),
        starts_at=None if row.starts_at is None else float(row.starts_at),
        expires_at=None if row.expires_at is None else float(row.expires_at),
        decided_by=row.decided_by,
        revoked_at=None if row.revoked_at is None else float(row.revoked_at),
        revoked_by=row.revoked_by,
        revoke_reason=row.revoke_reason,
    )


def review_from(row: Any) -> Review:
    return Review(
        grant_id=row.grant_id,
        opened_by=row.opened_by,
        due_at=float(row.due_at),
        closed_at=None if row.closed_at is None else float(row.closed_at),
        closed_by=row.closed_by,
        notes=row.notes,
    )


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
