"""Labels on the would-denies of observe-mode policies, and the review queue they come from.

A would-deny is a decision record the enforced policies allowed while the shadow answer (enforced
plus observe-mode policies) denied, with the policy in the record's `would_change`: what enforcing
that policy would have refused. A person labels it a true positive (the denial would have been
right) or a false positive; the gates (`gates.py`) estimate the policy's false-positive rate from
those labels. The records are read from the ledger's `decisions` table; the labels live in
`rollout_labels`. Who labelled what and why is the admin API's ledger record (the gate writes it);
the row here keeps the verdict the gates count.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, case, delete, func, select
from sqlalchemy.engine import Engine

from trustplane.store.tables import decisions, rollout_evidence, rollout_labels
from trustplane.telemetry.ledger import rfc3339
from trustplane.telemetry.rowcheck import evidence

VERDICTS = ("true-positive", "false-positive")
MAX_QUEUE = 500
MAX_BATCH = 1000  # decisions one labelling call may name or reach in bulk


class RolloutError(Exception):
    """A labelling request that cannot be carried out; `status` is the HTTP answer it gets."""

    def __init__(self, message: str, status: int = 422, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True, slots=True)
class WouldDeny:
    """One decision an observe-mode policy would have denied."""

    decision_id: str
    ts: float
    principal: str
    action: str
    resource: str
    record: dict[str, Any]

    def explanation(self, policy_id: str) -> str:
        allowed_by = ", ".join(self.record.get("reasons") or []) or "no policy"
        return f"allowed by {allowed_by}; {policy_id} (observe) would deny it"

    def as_dict(self, policy_id: str) -> dict[str, Any]:
        request = self.record.get("request") or {}
        return {
            "decision_id": self.decision_id,
            "time": self.record.get("time"),
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "context": request.get("context", {}) if isinstance(request, dict) else {},
            "allowed_by": self.record.get("reasons") or [],
            "would_deny": self.record.get("would_change") or [],
            "explanation": self.explanation(policy_id),
        }


@dataclass(frozen=True, slots=True)
class Label:
    decision_id: str
    policy_id: str
    verdict: str
    note: str
    actor: str
    principal: str
    labelled_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "policy_id": self.policy_id,
            "verdict": self.verdict,
            "note": self.note,
            "actor": self.actor,
            "principal": self.principal,
            "labelled_at": rfc3339(self.labelled_at),
        }


def _is_would_deny(record: dict[str, Any], policy_id: str | None) -> bool:
    """Whether the record is evidence about `policy_id` (any policy when None): a would-deny,
    or a denial by a canary policy in its enforced cohort (rowcheck.evidence)."""
    found = [policy for policy, _ in evidence(record)]
    return bool(found) if policy_id is None else policy_id in found


_COLUMNS = (
    decisions.c.decision_id,
    decisions.c.ts,
    decisions.c.principal,
    decisions.c.action,
    decisions.c.resource,
    decisions.c.record,
)


def _would_deny(row: Any) -> WouldDeny:
    return WouldDeny(
        row.decision_id,
        row.ts,
        row.principal,
        row.action,
        row.resource,
        orjson.loads(row.record),  # 5x json.loads: status reads every would-deny
    )


class LabelStore:
    """Would-denies from the ledger's rows, labels in `rollout_labels`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def would_denies(
        self,
        policy_id: str,
        since: float | None = None,
        *,
        principal: str | None = None,
        action: str | None = None,
        resource: str | None = None,
        cohort: str | None = None,
    ) -> list[WouldDeny]:
        """Every would-deny of `policy_id` (oldest first; with a canary policy, its denials in
        the enforced cohort too), optionally since a time, of one cohort, and of one principal,
        action or resource (`Type::"id"`, as records name them). Found through
        `rollout_evidence` (by index); the record decides."""
        evidence_rows = rollout_evidence.c
        query = (
            select(*_COLUMNS)
            .select_from(rollout_evidence.join(decisions, decisions.c.seq == evidence_rows.seq))
            .where(evidence_rows.policy_id == policy_id)
        )
        if since is not None:
            query = query.where(evidence_rows.ts >= since)
        if cohort is not None:
            query = query.where(evidence_rows.cohort == cohort)
        for column, value in (
            (decisions.c.principal, principal),
            (decisions.c.action, action),
            (decisions.c.resource, resource),
        ):
            if value is not None:
                query = query.where(column == value)
        with self._engine.connect() as connection:
            rows = connection.execute(query.order_by(decisions.c.seq)).all()
        found = [_would_deny(row) for row in rows]
        return [item for item in found if _is_would_deny(item.record, policy_id)]

    def labels(self, policy_id: str) -> dict[str, Label]:
        """The labels of `policy_id`, by decision id."""
        query = select(rollout_labels).where(rollout_labels.c.policy_id == policy_id)
        with self._engine.connect() as connection:
            return {row.decision_id: Label(**row._mapping) for row in connection.execute(query)}

    def strata(
        self, policy_id: str, since: float | None = None
    ) -> list[tuple[str, str, int, int, int]]:
        """Per cohort and principal: (cohort, principal, would-denies, labelled, false
        positives) of `policy_id` since a time. One indexed aggregate over `rollout_evidence`
        and the labels: `rollout status` reads no record."""
        ev, lb = rollout_evidence.c, rollout_labels.c
        fps = func.sum(case((lb.verdict == "false-positive", 1), else_=0))
        query = (
            select(ev.cohort, ev.principal, func.count(), func.count(lb.decision_id), fps)
            .select_from(
                rollout_evidence.outerjoin(
                    rollout_labels,
                    and_(lb.decision_id == ev.decision_id, lb.policy_id == ev.policy_id),
                )
            )
            .where(ev.policy_id == policy_id)
            .group_by(ev.cohort, ev.principal)
        )
        if since is not None:
            query = query.where(ev.ts >= since)
        with self._engine.connect() as connection:
            return [
                (str(c), str(p), int(n), int(labelled), int(fp or 0))
                for c, p, n, labelled, fp in connection.execute(query)
            ]

    def decisions_since(self, since: float) -> int:
        """Decisions recorded since `since` (admin records not counted)."""
        query = select(func.count()).where(decisions.c.kind == "decision", decisions.c.ts >= since)
        with self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def queue(self, policy_id: str, limit: int = 20) -> tuple[list[WouldDeny], int]:
        """Unlabelled would-denies of `policy_id` to review, at most `limit`, and how many are
        unlabelled in all. Stratified: principals take turns (the most recently seen first),
        and each principal's turns go round its resources, newest first within each; so one
        noisy principal, or one principal on one resource, cannot fill the queue."""
        labelled = self.labels(policy_id)
        pending = [w for w in self.would_denies(policy_id) if w.decision_id not in labelled]
        strata: OrderedDict[str, OrderedDict[str, list[WouldDeny]]] = OrderedDict()
        for item in reversed(pending):  # newest first
            strata.setdefault(item.principal, OrderedDict()).setdefault(item.resource, []).append(
                item
            )
        per_principal = [
            _round_robin(list(by_resource.values())) for by_resource in strata.values()
        ]
        return _round_robin(per_principal)[:limit], len(pending)

    def resolve(self, reference: str) -> WouldDeny:
        """The decision a full id or a unique prefix names; 404 or 409 when none or several."""
        reference = reference.strip()
        if not reference:
            raise RolloutError("a decision id is empty", field="decisions")
        query = (
            select(*_COLUMNS)
            .where(
                decisions.c.kind == "decision",
                decisions.c.decision_id.startswith(reference, autoescape=True),
            )
            .limit(4)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
        if not rows:
            raise RolloutError(f"no decision {reference} in the ledger", 404, "decisions")
        if len(rows) > 1:
            some = ", ".join(row.decision_id for row in rows[:3]) + (", …" if len(rows) > 3 else "")
            raise RolloutError(
                f"decision id prefix {reference!r} is ambiguous: it starts {some}; give more "
                "characters",
                409,
                "decisions",
            )
        return _would_deny(rows[0])

    def label(
        self,
        *,
        references: Sequence[str],
        policy_id: str | None,
        verdict: str,
        note: str,
        actor: str,
        principal: str | None = None,
        action: str | None = None,
        resource: str | None = None,
        now: float | None = None,
    ) -> list[Label]:
        """Label the decisions `references` name (ids or unique prefixes) and, in bulk, every
        unlabelled would-deny of `policy_id` by `principal`, of `action` and on `resource`
        (those given). Each must be a would-deny of the policy; without `policy_id`, each
        decision must name exactly one policy that would deny it. Labelling a decision again
        replaces its verdict; bulk labels never overwrite. All or nothing."""
        if verdict not in VERDICTS:
            raise RolloutError(f"verdict must be one of {', '.join(VERDICTS)}", field="verdict")
        if not note.strip():
            raise RolloutError("a note is required: it is what the audit trail shows", field="note")
        given = {"principal": principal, "action": action, "resource": resource}
        bulk = {name: value for name, value in given.items() if value is not None}
        if not references and not bulk:
            raise RolloutError(
                "name decisions, or a principal, action or resource to label in bulk",
                field="decisions",
            )
        if bulk and policy_id is None:
            raise RolloutError(f"labelling by {', '.join(bulk)} needs the policy", field="policy")
        chosen: dict[tuple[str, str], WouldDeny] = {}
        for reference in references:
            item = self.resolve(reference)
            for policy in self._policies_of(item, policy_id):
                chosen[(item.decision_id, policy)] = item
        if bulk and policy_id is not None:
            labelled = self.labels(policy_id)
            matched = [
                item
                for item in self.would_denies(
                    policy_id, principal=principal, action=action, resource=resource
                )
                if item.decision_id not in labelled
            ]
            if not matched:
                which = " ".join(f"{name} {value}" for name, value in bulk.items())
                raise RolloutError(
                    f"no unlabelled would-deny of {policy_id} with {which}", 404, next(iter(bulk))
                )
            for item in matched:
                chosen[(item.decision_id, policy_id)] = item
        if len(chosen) > MAX_BATCH:
            raise RolloutError(
                f"{len(chosen)} decisions in one call: at most {MAX_BATCH}", field="decisions"
            )
        at = time.time() if now is None else now
        made = [
            Label(decision_id, policy, verdict, note.strip(), actor, item.principal, at)
            for (decision_id, policy), item in chosen.items()
        ]
        with self._engine.begin() as connection:
            for made_label in made:
                connection.execute(
                    delete(rollout_labels).where(
                        rollout_labels.c.decision_id == made_label.decision_id,
                        rollout_labels.c.policy_id == made_label.policy_id,
                    )
                )
            if made:
                rows = [{**m.as_dict(), "labelled_at": m.labelled_at} for m in made]
                connection.execute(rollout_labels.insert(), rows)
        return made

    @staticmethod
    def _policies_of(item: WouldDeny, policy_id: str | None) -> Iterable[str]:
        if not _is_would_deny(item.record, policy_id):
            which = f"of {policy_id}" if policy_id else "of any observe-mode policy"
            raise RolloutError(
                f"decision {item.decision_id} is not a would-deny {which}", 422, "decisions"
            )
        if policy_id is not None:
            return (policy_id,)
        changed = [policy for policy, _ in evidence(item.record)]
        if len(changed) > 1:
            raise RolloutError(
                f"decision {item.decision_id} would be denied by {', '.join(changed)}: "
                "name the policy",
                field="policy",
            )
        return changed


def _round_robin(groups: list[list[WouldDeny]]) -> list[WouldDeny]:
    """The first of each group, then the second of each, and so on."""
    merged: list[WouldDeny] = []
    depth = max((len(group) for group in groups), default=0)
    for index in range(depth):
        merged.extend(group[index] for group in groups if index < len(group))
    return merged
