"""Break-glass: self-service emergency access that is short, loud and always reviewed.

Opening a profile from access.yaml needs no approver, only membership in the profile's `who`
and a reason. It becomes a grant capped at the profile's duration (never more than an hour),
announced everywhere (webhook, a warning in the log, a metric), and it opens a post-incident
review that only someone other than the opener can close. Reviews still open after their
`review_within` are overdue: listed, and counted in `trustplane_break_glass_reviews_overdue`.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine, func, select, update

from trustplane.governance.access import CatalogSource, insert_grant
from trustplane.governance.records import (
    Actor,
    Clock,
    Conflict,
    GovernanceError,
    Grant,
    NotFound,
    Refused,
    Review,
    changed,
    grant_from,
    human_duration,
    new_id,
    record_outbox,
    review_from,
)
from trustplane.store.tables import access_grants, break_glass_reviews

log = logging.getLogger("trustplane.break_glass")


class BreakGlassService:
    def __init__(self, engine: Engine, catalog: CatalogSource, clock: Clock = time.time) -> None:
        self._engine = engine
        self._catalog = catalog
        self._clock = clock

    def open(
        self, actor: Actor, profile_name: str, reason: str, duration_seconds: int | None = None
    ) -> tuple[Grant, Review]:
        found = self._catalog()
        if found is None:
            raise Conflict("no active policy bundle: no break-glass profile exists")
        catalog, _ = found
        profile = catalog.profiles.get(profile_name)
        if profile is None:
            known = ", ".join(sorted(catalog.profiles)) or "none"
            raise GovernanceError(
                f"no break-glass profile {profile_name!r} (profiles: {known})", "profile"
            )
        if actor.principal is None:
            raise Refused("break-glass is opened by a named person, not a token or a workload")
        if not catalog.member(actor.principal, profile.who):
            raise Refused(
                f"{actor.principal} may not open {profile_name} (who: {', '.join(profile.who)})"
            )
        reason = reason.strip()
        if not reason:
            raise GovernanceError("a reason is required to break the glass", "reason")
        seconds = profile.max_seconds if duration_seconds is None else duration_seconds
        if seconds <= 0:
            raise GovernanceError("duration must be longer than zero", "duration")
        if seconds > profile.max_seconds:
            raise GovernanceError(
                f"duration {human_duration(seconds)} is over the hard cap of "
                f"{human_duration(profile.max_seconds)} for {profile_name}",
                "duration",
            )
        now = self._clock()
        grant = Grant(
            id=new_id(),
            kind="break-glass",
            principal=actor.principal,
            role=profile.role,
            request_id=None,
            profile=profile_name,
            reason=reason,
            ticket="",
            created_by=actor.name,
            starts_at=now,
            expires_at=now + seconds,
            revoked_at=None,
            revoked_by=None,
            revoke_reason=None,
        )
        review = Review(grant.id, actor.principal, now + profile.review_seconds, None, None, None)
        with self._engine.begin() as connection:
            already = connection.execute(
                select(access_grants.c.id).where(
                    access_grants.c.kind == "break-glass",
                    access_grants.c.principal == actor.principal,
                    access_grants.c.profile == profile_name,
                    access_grants.c.revoked_at.is_(None),
                    access_grants.c.expires_at > now,
                )
            ).first()
            if already is not None:
                raise Conflict(
                    f"{actor.principal} already has {profile_name} open (session {already.id})"
                )
            insert_grant(connection, grant)
            connection.execute(
                break_glass_reviews.insert().values(
                    grant_id=grant.id, opened_by=actor.principal, due_at=review.due_at
                )
            )
            record_outbox(
                connection,
                "break_glass.opened",
                grant.as_dict(now),
                f":rotating_light: BREAK-GLASS {profile_name} opened by {actor.principal} for "
                f"{human_duration(seconds)}: {reason} (session {grant.id})",
                now,
            )
            changed(connection)
        log.warning(
            "BREAK-GLASS %s opened by %s for %s: %s (session %s)",
            profile_name,
            actor.principal,
            human_duration(seconds),
            reason,
            grant.id,
        )
        return grant, review

    def review(self, actor: Actor, session_id: str, notes: str) -> Review:
        """Close the post-incident review of a session; never by the person who opened it."""
        notes = notes.strip()
        if not notes:
            raise GovernanceError(
                "review notes are required: what happened, what was done", "notes"
            )
        reviewer = actor.principal or actor.name
        now = self._clock()
        with self._engine.begin() as connection:
            row = connection.execute(
                select(break_glass_reviews).where(break_glass_reviews.c.grant_id == session_id)
            ).first()
            if row is None:
                raise NotFound(f"no break-glass session {session_id}")
            if row.closed_at is not None:
                raise Conflict(f"the review of {session_id} was already closed by {row.closed_by}")
            if reviewer == row.opened_by:
                raise Refused(f"{reviewer} opened {session_id}: someone else must review it")
            grant = grant_from(
                connection.execute(
                    select(access_grants).where(access_grants.c.id == session_id)
                ).one()
            )
            found = self._catalog()
            profile = found[0].profiles.get(grant.profile or "") if found else None
            if (
                found is not None
                and profile is not None
                and profile.reviewers
                and (
                    actor.principal is None
                    or not found[0].member(actor.principal, profile.reviewers)
                )
            ):
                raise Refused(
                    f"{reviewer} may not review {grant.profile} sessions "
                    f"(reviewers: {', '.join(profile.reviewers)})"
                )
            closed = connection.execute(
                update(break_glass_reviews)
                .where(
                    break_glass_reviews.c.grant_id == session_id,
                    break_glass_reviews.c.closed_at.is_(None),
                )
                .values(closed_at=now, closed_by=reviewer, notes=notes)
            ).rowcount
            if not closed:
                raise Conflict(f"the review of {session_id} was closed meanwhile")
            record_outbox(
                connection,
                "break_glass.reviewed",
                {"session": session_id, "reviewer": reviewer, "notes": notes},
                f"{reviewer} closed the review of break-glass session {session_id}",
                now,
            )
            updated = connection.execute(
                select(break_glass_reviews).where(break_glass_reviews.c.grant_id == session_id)
            ).one()
        return review_from(updated)

    def sessions(self, overdue_only: bool = False, limit: int = 200) -> list[tuple[Grant, Review]]:
        now = self._clock()
        statement = (
            select(access_grants, break_glass_reviews)
            .join(break_glass_reviews, break_glass_reviews.c.grant_id == access_grants.c.id)
            .order_by(access_grants.c.starts_at.desc())
        )
        if overdue_only:
            statement = statement.where(
                break_glass_reviews.c.closed_at.is_(None), break_glass_reviews.c.due_at <= now
            )
        with self._engine.connect() as connection:
            rows = connection.execute(statement.limit(limit)).all()
        return [(grant_from(r), review_from(r)) for r in rows]

    def session(self, session_id: str) -> tuple[Grant, Review]:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(access_grants, break_glass_reviews)
                .join(break_glass_reviews, break_glass_reviews.c.grant_id == access_grants.c.id)
                .where(access_grants.c.id == session_id)
            ).first()
        if row is None:
            raise NotFound(f"no break-glass session {session_id}")
        return grant_from(row), review_from(row)

    def overdue_count(self) -> int:
        now = self._clock()
        with self._engine.connect() as connection:
            return int(
                connection.execute(
                    select(func.count()).where(
                        break_glass_reviews.c.closed_at.is_(None),
                        break_glass_reviews.c.due_at <= now,
                    )
                ).scalar_one()
            )
