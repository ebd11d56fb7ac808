"""Just-in-time access: a person asks for a role for a while, approvers decide, and an approved
request becomes a grant that the decision plane applies until it expires or is revoked.

Rules that no policy can switch off live here: the role must be declared in access.yaml, the
duration within its cap, the requester among its requesters, approvers among its approvers and
never the requester, and the threshold met by distinct people (two for Tier 0). Every change is
one transaction with its notification (outbox) and its change-feed bump, so a crash never
leaves a grant without its notification, and every replica applies the grant at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, and_, func, select, update
from sqlalchemy.exc import IntegrityError

from trustplane.governance.catalog import AccessCatalog, Requestable
from trustplane.governance.records import (
    AccessRequestRecord,
    Actor,
    Clock,
    Conflict,
    GovernanceError,
    Grant,
    NotFound,
    Refused,
    changed,
    grant_from,
    human_duration,
    new_id,
    record_outbox,
)
from trustplane.store.tables import access_approvals, access_grants, access_requests

# The active bundle's catalog and revision, or None when nothing is active.
CatalogSource = Callable[[], tuple[AccessCatalog, str] | None]


class AccessService:
    def __init__(self, engine: Engine, catalog: CatalogSource, clock: Clock = time.time) -> None:
        self._engine = engine
        self._catalog = catalog
        self._clock = clock

    def _active(self) -> tuple[AccessCatalog, str]:
        found = self._catalog()
        if found is None:
            raise Conflict("no active policy bundle: nothing is requestable")
        return found

    # -- requests -----------------------------------------------------------------------------

    def request(
        self, actor: Actor, role: str, duration_seconds: int, reason: str, ticket: str
    ) -> AccessRequestRecord:
        catalog, revision = self._active()
        principal = _person(actor, "request access")
        entry = catalog.requestable.get(role)
        if entry is None:
            known = ", ".join(sorted(catalog.requestable)) or "none"
            raise GovernanceError(f"role {role} is not requestable (requestable: {known})", "role")
        if not catalog.member(principal, entry.requesters):
            raise Refused(
                f"{principal} may not request {role} (requesters: {', '.join(entry.requesters)})"
            )
        if duration_seconds <= 0:
            raise GovernanceError("duration must be longer than zero", "duration")
        if duration_seconds > entry.max_seconds:
            raise GovernanceError(
                f"duration {human_duration(duration_seconds)} is over the maximum of "
                f"{human_duration(entry.max_seconds)} for {role}",
                "duration",
            )
        reason, ticket = reason.strip(), ticket.strip()
        if entry.reason_required and not reason:
            raise GovernanceError(f"a reason is required to request {role}", "reason")
        if entry.ticket_required and not ticket:
            raise GovernanceError(f"a ticket is required to request {role}", "ticket")
        now = self._clock()
        record = AccessRequestRecord(
            id=new_id(),
            principal=principal,
            role=role,
            reason=reason,
            ticket=ticket,
            duration_seconds=duration_seconds,
            approvals_required=entry.approvals,
            tier=entry.tier,
            status="pending",
            created_at=now,
            expires_at=now + entry.pending_seconds,
            decided_at=None,
            decided_by=None,
            grant_id=None,
            revision=revision,
        )
        with self._engine.begin() as connection:
            open_one = connection.execute(
                select(access_requests.c.id).where(
                    access_requests.c.principal == principal,
                    access_requests.c.role == role,
                    access_requests.c.status == "pending",
                    access_requests.c.expires_at > now,
                )
            ).first()
            if open_one is not None:
                raise Conflict(
                    f"{principal} already has a pending request {open_one.id} for {role}"
                )
            values = record.as_dict()
            values.pop("approvals")
            connection.execute(access_requests.insert().values(**values))
            record_outbox(
                connection,
                "access.requested",
                record.as_dict(),
                f"{principal} requests {role} for {human_duration(duration_seconds)}: {reason}"
                + (f" ({ticket})" if ticket else ""),
                now,
            )
        return record

    def get(self, request_id: str) -> AccessRequestRecord:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(access_requests).where(access_requests.c.id == request_id)
            ).first()
            if row is None:
                raise NotFound(f"no access request {request_id}")
            return _request_from(row, _approvals(connection, request_id))

    def find(self, status: str | None = None, limit: int = 200) -> list[AccessRequestRecord]:
        statement = select(access_requests).order_by(access_requests.c.created_at.desc())
        if status:
            statement = statement.where(access_requests.c.status == status)
        with self._engine.connect() as connection:
            rows = connection.execute(statement.limit(limit)).all()
            return [_request_from(r, _approvals(connection, r.id)) for r in rows]

    # -- decisions ----------------------------------------------------------------------------

    def approve(
        self, actor: Actor, request_id: str, comment: str = ""
    ) -> tuple[AccessRequestRecord, Grant | None]:
        """One approval; the grant once the threshold of distinct approvers is met."""
        return self._decide(actor, request_id, "approve", comment)

    def deny(self, actor: Actor, request_id: str, reason: str) -> AccessRequestRecord:
        if not reason.strip():
            raise GovernanceError("a reason is required to deny a request", "reason")
        record, _ = self._decide(actor, request_id, "deny", reason)
        return record

    def _decide(
        self, actor: Actor, request_id: str, verdict: str, comment: str
    ) -> tuple[AccessRequestRecord, Grant | None]:
        approver = _person(actor, f"{verdict} a request")
        catalog, _ = self._active()
        now = self._clock()
        expired = False
        grant: Grant | None = None
        with self._engine.begin() as connection:
            row = connection.execute(
                select(access_requests).where(access_requests.c.id == request_id).with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"no access request {request_id}")
            if row.status != "pending":
                raise Conflict(f"request {request_id} is already {row.status}")
            if now >= row.expires_at:
                expired = _expire(connection, row, now)
            else:
                if approver == row.principal:
                    raise Refused(f"{approver} may not {verdict} their own request")
                entry = catalog.requestable.get(row.role)
                if entry is None:
                    raise Conflict(f"{row.role} is no longer requestable in the active bundle")
                if not catalog.member(approver, entry.approvers):
                    raise Refused(
                        f"{approver} may not {verdict} requests for {row.role} "
                        f"(approvers: {', '.join(entry.approvers)})"
                    )
                try:
                    connection.execute(
                        access_approvals.insert().values(
                            request_id=request_id,
                            approver=approver,
                            verdict=verdict,
                            comment=comment.strip(),
                            created_at=now,
                        )
                    )
                except IntegrityError:
                    raise Conflict(f"{approver} has already decided on {request_id}") from None
                if verdict == "deny":
                    _settle(connection, request_id, "denied", approver, now)
                    record_outbox(
                        connection,
                        "access.denied",
                        {"request_id": request_id, "principal": row.principal, "role": row.role},
                        f"{approver} denied {row.principal}'s request for {row.role}: {comment}",
                        now,
                    )
                else:
                    grant = self._maybe_grant(connection, row, entry, approver, now)
        if expired:
            raise Conflict(f"request {request_id} expired unreviewed; ask again")
        return self.get(request_id), grant

    def _maybe_grant(
        self, connection: Any, row: Any, entry: Requestable, approver: str, now: float
    ) -> Grant | None:
        approvals = connection.execute(
            select(func.count(func.distinct(access_approvals.c.approver))).where(
                access_approvals.c.request_id == row.id,
                access_approvals.c.verdict == "approve",
                access_approvals.c.approver != row.principal,  # never counts the requester
            )
        ).scalar_one()
        needed = max(int(row.approvals_required), entry.approvals, 2 if row.tier == "0" else 1)
        if approvals < needed:
            record_outbox(
                connection,
                "access.approval",
                {"request_id": row.id, "approver": approver, "approvals": approvals},
                f"{approver} approved {row.principal}'s request for {row.role} "
                f"({approvals} of {needed})",
                now,
            )
            return None
        grant = Grant(
            id=new_id(),
            kind="jit",
            principal=row.principal,
            role=row.role,
            request_id=row.id,
            profile=None,
            reason=row.reason,
            ticket=row.ticket,
            created_by=approver,
            starts_at=now,
            # The cap of the bundle in force now, should it have shrunk since the request.
            expires_at=now + min(int(row.duration_seconds), entry.max_seconds),
            revoked_at=None,
            revoked_by=None,
            revoke_reason=None,
        )
        if not _settle(connection, row.id, "approved", approver, now, grant.id):
            raise Conflict(f"request {row.id} was decided meanwhile")
        insert_grant(connection, grant)
        record_outbox(
            connection,
            "access.approved",
            grant.as_dict(now),
            f"{row.principal} holds {row.role} until {_utc(grant.expires_at)} "
            f"(grant {grant.id}, approved by {approver})",
            now,
        )
        changed(connection)
        return grant

    # -- grants -------------------------------------------------------------------------------

    def grants(self, active_only: bool = False, limit: int = 200) -> list[Grant]:
        now = self._clock()
        statement = select(access_grants).order_by(access_grants.c.starts_at.desc())
        if active_only:
            statement = statement.where(
                access_grants.c.revoked_at.is_(None),
                access_grants.c.starts_at <= now,
                access_grants.c.expires_at > now,
            )
        with self._engine.connect() as connection:
            return [grant_from(r) for r in connection.execute(statement.limit(limit))]

    def grant(self, grant_id: str) -> Grant:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(access_grants).where(access_grants.c.id == grant_id)
            ).first()
        if row is None:
            raise NotFound(f"no grant {grant_id}")
        return grant_from(row)

    def revoke(self, actor: Actor, grant_id: str, reason: str) -> tuple[Grant, bool]:
        """Revoke a grant (JIT or break-glass); revoking again answers the first revocation."""
        if not reason.strip():
            raise GovernanceError(
                "a reason is required: it is what the audit trail shows", "reason"
            )
        now = self._clock()
        with self._engine.begin() as connection:
            done = connection.execute(
                update(access_grants)
                .where(access_grants.c.id == grant_id, access_grants.c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_by=actor.name, revoke_reason=reason.strip())
            ).rowcount
            if done:
                grant = grant_from(
                    connection.execute(
                        select(access_grants).where(access_grants.c.id == grant_id)
                    ).one()
                )
                kind = "break_glass" if grant.kind == "break-glass" else "access"
                record_outbox(
                    connection,
                    f"{kind}.revoked",
                    grant.as_dict(now),
                    f"{actor.name} revoked {grant.principal}'s {grant.role} "
                    f"(grant {grant_id}): {reason.strip()}",
                    now,
                )
                changed(connection, revokes=True)
                return grant, True
        return self.grant(grant_id), False

    # -- housekeeping -------------------------------------------------------------------------

    def expire_due(self) -> int:
        """Mark pending requests past their review window as expired and announce grants that
        ran out (they stopped applying at expiry already: this only tidies and notifies)."""
        now = self._clock()
        count = 0
        with self._engine.begin() as connection:
            rows = connection.execute(
                select(access_requests).where(
                    access_requests.c.status == "pending", access_requests.c.expires_at <= now
                )
            ).all()
            for row in rows:
                count += int(_expire(connection, row, now))
            ended = connection.execute(
                select(access_grants).where(
                    access_grants.c.expiry_notified.is_(False),
                    access_grants.c.expires_at <= now,
                )
            ).all()
            for row in ended:
                claimed = connection.execute(
                    update(access_grants)
                    .where(access_grants.c.id == row.id, access_grants.c.expiry_notified.is_(False))
                    .values(expiry_notified=True)
                ).rowcount
                if claimed and row.revoked_at is None:
                    kind = "break_glass" if row.kind == "break-glass" else "access"
                    record_outbox(
                        connection,
                        f"{kind}.expired",
                        grant_from(row).as_dict(now),
                        f"{row.principal}'s {row.role} expired (grant {row.id})",
                        now,
                    )
                    count += 1
            if ended:
                changed(connection)
        return count


def insert_grant(connection: Any, grant: Grant) -> None:
    values = grant.as_dict()
    values.pop("active")
    connection.execute(access_grants.insert().values(**values, expiry_notified=False))


def _person(actor: Actor, what: str) -> str:
    if actor.principal is None:
        who = "the bootstrap token" if actor.bootstrap else actor.name
        raise Refused(f"{who} cannot {what}: it needs a named person (an OIDC-authenticated user)")
    return actor.principal


def _settle(
    connection: Any,
    request_id: str,
    status: str,
    by: str | None,
    now: float,
    grant_id: str | None = None,
) -> bool:
    return bool(
        connection.execute(
            update(access_requests)
            .where(and_(access_requests.c.id == request_id, access_requests.c.status == "pending"))
            .values(status=status, decided_at=now, decided_by=by, grant_id=grant_id)
        ).rowcount
    )


def _expire(connection: Any, row: Any, now: float) -> bool:
    if not _settle(connection, row.id, "expired", None, now):
        return False
    record_outbox(
        connection,
        "access.expired",
        {"request_id": row.id, "principal": row.principal, "role": row.role},
        f"{row.principal}'s request for {row.role} expired unreviewed",
        now,
    )
    return True


def _approvals(connection: Any, request_id: str) -> tuple[dict[str, Any], ...]:
    rows = connection.execute(
        select(access_approvals)
        .where(access_approvals.c.request_id == request_id)
        .order_by(access_approvals.c.id)
    ).all()
    return tuple(
        {"approver": r.approver, "verdict": r.verdict, "comment": r.comment, "at": r.created_at}
        for r in rows
    )


def _request_from(row: Any, approvals: tuple[dict[str, Any], ...]) -> AccessRequestRecord:
    return AccessRequestRecord(
        id=row.id,
        principal=row.principal,
        role=row.role,
        reason=row.reason,
        ticket=row.ticket,
        duration_seconds=int(row.duration_seconds),
        approvals_required=int(row.approvals_required),
        tier=row.tier,
        status=row.status,
        created_at=float(row.created_at),
        expires_at=float(row.expires_at),
        decided_at=None if row.decided_at is None else float(row.decided_at),
        decided_by=row.decided_by,
        grant_id=row.grant_id,
        revision=row.revision,
        approvals=approvals,
    )


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
