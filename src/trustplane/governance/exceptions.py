"""The exception register: "allow this flow despite forbid X", owned, reasoned, ticketed, and
always temporary.

An exception names one forbid policy of the active bundle and the flow it sets aside (a
principal, optionally an action and a resource). It needs approval by someone other than the
requester, and its window starts at approval and ends after its duration, capped at
`exceptions.max_duration` of access.yaml (90 days unless the bundle says otherwise, never more
than a year). There is no way to write one without an end: expiry is part of the row, and the
evaluator checks the window on every decision, so an expired exception stops applying by
itself. Permits cannot be excepted: an exception only ever removes a forbid.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError

from trustplane.decision.requests import RequestError, parse_entity
from trustplane.governance.catalog import AccessCatalog, access_catalog
from trustplane.governance.records import (
    Actor,
    Clock,
    Conflict,
    GovernanceError,
    NotFound,
    PolicyException,
    Refused,
    changed,
    exception_from,
    human_duration,
    new_id,
    record_outbox,
    require_text,
)
from trustplane.store.tables import access_approvals, policy_exceptions

# The active bundle (trustplane.decision.policy_bundle.Bundle), or None.
BundleSource = Callable[[], Any]


class ExceptionService:
    def __init__(self, engine: Engine, bundle: BundleSource, clock: Clock = time.time) -> None:
        self._engine = engine
        self._bundle = bundle
        self._clock = clock

    def _catalog(self) -> tuple[Any, AccessCatalog]:
        bundle = self._bundle()
        if bundle is None:
            raise Conflict("no active policy bundle: there is no policy to make an exception to")
        return bundle, access_catalog(bundle)

    def create(
        self,
        actor: Actor,
        *,
        policy_id: str,
        principal: str,
        action: str | None,
        resource: str | None,
        owner: str,
        reason: str,
        ticket: str,
        duration_seconds: int,
    ) -> PolicyException:
        bundle, catalog = self._catalog()
        info = bundle.policy(policy_id)
        if info is None:
            raise GovernanceError(f"no policy {policy_id!r} in the active bundle", "policy")
        if info.effect != "forbid":
            raise GovernanceError(
                f"{policy_id} is a permit: exceptions set aside forbid policies only", "policy"
            )
        who = _entity(principal, "principal")
        what = None if not action else str(parse_entity_or(action, "action", "Action"))
        where = None if not resource else _entity(resource, "resource")
        owner = require_text(owner, "owner", "someone answers for every exception")
        reason = require_text(reason, "reason", "it is what the audit trail shows")
        ticket = require_text(ticket, "ticket", "exceptions are tracked work")
        cap = catalog.exceptions.max_seconds
        if duration_seconds <= 0:
            raise GovernanceError("an exception needs an expiry: duration must be > 0", "duration")
        if duration_seconds > cap:
            raise GovernanceError(
                f"duration {human_duration(duration_seconds)} is over the cap of "
                f"{human_duration(cap)}: exceptions are temporary",
                "duration",
            )
        now = self._clock()
        item = PolicyException(
            id=new_id(),
            policy_id=policy_id,
            policy_tier=info.tier or "",
            principal=who,
            action=what,
            resource=where,
            owner=owner,
            reason=reason,
            ticket=ticket,
            requested_by=actor.principal or actor.name,
            status="pending",
            approvals_required=max(catalog.exceptions.approvals, 2 if info.tier == "0" else 1),
            created_at=now,
            duration_seconds=duration_seconds,
            starts_at=None,
            expires_at=None,
            decided_by=None,
            revoked_at=None,
            revoked_by=None,
            revoke_reason=None,
        )
        with self._engine.begin() as connection:
            values = item.as_dict(now)
            values.pop("active")
            connection.execute(policy_exceptions.insert().values(**values))
            record_outbox(
                connection,
                "exception.requested",
                values,
                f"{item.requested_by} asks to set aside {policy_id} for {who} "
                f"for {human_duration(duration_seconds)}: {reason} ({ticket})",
                now,
            )
        return item

    def get(self, exception_id: str) -> PolicyException:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(policy_exceptions).where(policy_exceptions.c.id == exception_id)
            ).first()
        if row is None:
            raise NotFound(f"no exception {exception_id}")
        return exception_from(row)

    def find(
        self, expiring_within: int | None = None, status: str | None = None, limit: int = 500
    ) -> list[PolicyException]:
        """Exceptions, newest first; `expiring_within` seconds: the active ones ending soon."""
        now = self._clock()
        statement = select(policy_exceptions).order_by(policy_exceptions.c.created_at.desc())
        if status:
            statement = statement.where(policy_exceptions.c.status == status)
        if expiring_within is not None:
            statement = statement.where(
                policy_exceptions.c.status == "approved",
                policy_exceptions.c.revoked_at.is_(None),
                policy_exceptions.c.expires_at > now,
                policy_exceptions.c.expires_at <= now + expiring_within,
            )
        with self._engine.connect() as connection:
            return [exception_from(r) for r in connection.execute(statement.limit(limit))]

    def approve(self, actor: Actor, exception_id: str, comment: str = "") -> PolicyException:
        approver = actor.principal
        if approver is None:
            raise Refused(
                "approving an exception needs a named person (an OIDC-authenticated user)"
            )
        _, catalog = self._catalog()
        now = self._clock()
        with self._engine.begin() as connection:
            row = connection.execute(
                select(policy_exceptions)
                .where(policy_exceptions.c.id == exception_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"no exception {exception_id}")
            if row.status != "pending":
                raise Conflict(f"exception {exception_id} is already {row.status}")
            if approver == row.requested_by:
                raise Refused(f"{approver} may not approve their own exception")
            rules = catalog.exceptions
            if rules.approvers and not catalog.member(approver, rules.approvers):
                names = ", ".join(rules.approvers)
                raise Refused(f"{approver} may not approve exceptions (approvers: {names})")
            try:
                connection.execute(
                    access_approvals.insert().values(
                        request_id=exception_id,
                        approver=approver,
                        verdict="approve",
                        comment=comment.strip(),
                        created_at=now,
                    )
                )
            except IntegrityError:
                raise Conflict(f"{approver} has already approved {exception_id}") from None
            count = connection.execute(
                select(func.count(func.distinct(access_approvals.c.approver))).where(
                    access_approvals.c.request_id == exception_id,
                    access_approvals.c.approver != row.requested_by,
                )
            ).scalar_one()
            if count >= int(row.approvals_required):
                done = connection.execute(
                    update(policy_exceptions)
                    .where(
                        policy_exceptions.c.id == exception_id,
                        policy_exceptions.c.status == "pending",
                    )
                    .values(
                        status="approved",
                        starts_at=now,
                        expires_at=now + int(row.duration_seconds),
                        decided_by=approver,
                    )
                ).rowcount
                if not done:
                    raise Conflict(f"exception {exception_id} was decided meanwhile")
                record_outbox(
                    connection,
                    "exception.approved",
                    {"exception": exception_id, "policy": row.policy_id, "approver": approver},
                    f"{approver} approved the exception to {row.policy_id} for {row.principal} "
                    f"until {time.strftime('%Y-%m-%d', time.gmtime(now + row.duration_seconds))}",
                    now,
                )
                changed(connection)
        return self.get(exception_id)

    def revoke(self, actor: Actor, exception_id: str, reason: str) -> tuple[PolicyException, bool]:
        """End an exception now (pending ones are withdrawn); idempotent."""
        reason = require_text(reason, "reason", "it is what the audit trail shows")
        now = self._clock()
        with self._engine.begin() as connection:
            done = connection.execute(
                update(policy_exceptions)
                .where(
                    policy_exceptions.c.id == exception_id,
                    policy_exceptions.c.revoked_at.is_(None),
                )
                .values(revoked_at=now, revoked_by=actor.name, revoke_reason=reason)
            ).rowcount
            if done:
                record_outbox(
                    connection,
                    "exception.revoked",
                    {"exception": exception_id, "by": actor.name, "reason": reason},
                    f"{actor.name} revoked exception {exception_id}: {reason}",
                    now,
                )
                changed(connection, revokes=True)
        return self.get(exception_id), bool(done)


def _entity(text: str, name: str) -> str:
    try:
        return str(parse_entity(text, name))
    except RequestError as exc:
        raise GovernanceError(str(exc), name) from None


def parse_entity_or(text: str, name: str, default_type: str) -> Any:
    try:
        return parse_entity(text, name, default_type=default_type)
    except RequestError as exc:
        raise GovernanceError(str(exc), name) from None
