"""Impact replay: recorded decisions asked again of a candidate bundle, and every answer that
would flip.

A decision record keeps the request as it was asked (principal, action, resource and their
properties, context), the grants and exceptions in force, and the trust plane's assessment;
the candidate's `Evaluator` is asked the same question at the record's own time (so `@expires`
applies as it did then), with the same elevation and the same `context.trust` Cedar saw
(rebuilt from the recorded assessment: score, level and the points of each enforced signal).
Replaying the bundle that made a record therefore gives the recorded answer; a candidate that
differs gives a *flip* (allow→deny or deny→allow), grouped here by policy, principal and
resource with examples.

Not every record can be asked again, and none is skipped silently: each one that is not
replayed is counted under its reason — a value erased by masking (the candidate might read
it), a refusal settled before any policy (no credential, no route, a revoked principal: no
bundle changes those), an admission review (the posture engine's, not Cedar's), a grant or
exception this store no longer knows, a record holding values it could not encode.

The records come from the store (`store_records`) or from a server's admin API page by page
(`/v1/ledger/records`, the CLI's `--url`); either is a stream of (ts, record) in ledger order.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, select

from trustplane.decision.engine import Evaluator
from trustplane.decision.requests import parse_entity
from trustplane.model import AccessRequest, Decision, Elevation, EntityRef, ExceptionRef, GrantRef
from trustplane.store.tables import access_grants, decisions, policy_exceptions
from trustplane.telemetry.ledger import rfc3339
from trustplane.telemetry.query import reason_code
from trustplane.trust.assessor import TRUST_KEY
from trustplane.trust.policy import trust_policy

POLICY_ANSWERS = frozenset({"policy_permits", "policy_forbids", "no_policy_permits"})
EVALUATED = POLICY_ANSWERS | {"evaluation_error"}
FAIL_ON = ("new-denies", "any-flip")
EXAMPLES = 3  # example decisions kept per group
CHUNK = 1000  # records evaluated per batch


class Unreplayable(Exception):
    """Why one record cannot be asked again; the message is the reason it is counted under."""


@dataclass(frozen=True)
class Grants:
    """What the records' grant and exception ids stand for: the role a grant adds and the
    forbid an exception sets aside, with their windows (`GrantRef`, `ExceptionRef`)."""

    grants: Mapping[str, GrantRef] = field(default_factory=dict)
    exceptions: Mapping[str, ExceptionRef] = field(default_factory=dict)

    @classmethod
    def from_store(cls, engine: Engine) -> Grants:
        with engine.connect() as connection:
            grant_rows = connection.execute(
                select(
                    access_grants.c.id,
                    access_grants.c.role,
                    access_grants.c.starts_at,
                    access_grants.c.expires_at,
                )
            ).all()
            exception_rows = connection.execute(
                select(
                    policy_exceptions.c.id,
                    policy_exceptions.c.policy_id,
                    policy_exceptions.c.starts_at,
                    policy_exceptions.c.expires_at,
                )
            ).all()
        return cls.from_rows(
            [dict(row._mapping) for row in grant_rows],
            [dict(row._mapping) for row in exception_rows],
        )

    @classmethod
    def from_rows(
        cls, grants: Iterable[Mapping[str, Any]], exceptions: Iterable[Mapping[str, Any]]
    ) -> Grants:
        """From the store's rows or the admin API's lists (`/v1/access/grants`,
        `/v1/exceptions`): id, role or policy_id, starts_at, expires_at."""
        found: dict[str, GrantRef] = {}
        for row in grants:
            try:
                role = parse_entity(row["role"], "role")
            except Exception:  # a role this version cannot read: the records say so
                continue
            found[str(row["id"])] = GrantRef(
                str(row["id"]),
                role.type,
                role.id,
                float(row["starts_at"]),
                float(row["expires_at"]),
            )
        held: dict[str, ExceptionRef] = {}
        for row in exceptions:
            if row.get("starts_at") is None or row.get("expires_at") is None:
                continue  # never approved: no record names it
            held[str(row["id"])] = ExceptionRef(
                str(row["id"]),
                str(row["policy_id"]),
                float(row["starts_at"]),
                float(row["expires_at"]),
            )
        return cls(found, held)


@dataclass(frozen=True, slots=True)
class Replay:
    """One record made ready to ask again."""

    record: Mapping[str, Any]
    request: AccessRequest
    at: datetime
    elevation: Elevation | None


def replay_input(
    record: Mapping[str, Any], grants: Grants, trust: Callable[[Mapping[str, Any]], Any]
) -> Replay:
    """The question `record` asked, as the candidate will be asked it; `Unreplayable` naming
    why not. `trust(record)` gives the `context.trust` the candidate's Cedar would see (None:
    the candidate declares no trust.yaml)."""
    code = reason_code(record)
    if code not in EVALUATED:
        raise Unreplayable(f"settled before any policy ({code})")
    request = record.get("request")
    if not isinstance(request, dict):
        raise Unreplayable("no request recorded")
    action = request.get("action") or {}
    if str(action.get("id", "")).startswith("admission:"):
        raise Unreplayable("admission review (posture rules, not Cedar)")
    if record.get("unencodable"):
        raise Unreplayable("record holds values it could not encode")
    masked = record.get("masked") or []
    if masked:
        raise Unreplayable(f"masked input ({', '.join(sorted(str(m) for m in masked))})")
    try:
        principal = _entity(request.get("principal"))
        resource = _entity(request.get("resource"))
        verb = _entity(action)
    except (KeyError, TypeError, ValueError):
        raise Unreplayable("request entities unreadable") from None
    context = request.get("context") or {}
    if not isinstance(context, dict):
        raise Unreplayable("context is not an object")
    context = {k: v for k, v in context.items() if k != TRUST_KEY}
    seen = trust(record)
    if seen is not None:
        context[TRUST_KEY] = seen
    elevation = None
    grant_ids = record.get("grants") or []
    exception_ids = record.get("exceptions") or []
    if grant_ids or exception_ids:
        missing = [g for g in grant_ids if g not in grants.grants]
        missing += [e for e in exception_ids if e not in grants.exceptions]
        if missing:
            raise Unreplayable("grant or exception unknown here")
        elevation = Elevation(
            tuple(grants.grants[g] for g in grant_ids),
            tuple(grants.exceptions[e] for e in exception_ids),
        )
    try:
        at = datetime.fromisoformat(str(record["time"]))  # Python 3.11 reads the Z
    except (KeyError, ValueError):
        raise Unreplayable("no time recorded") from None
    return Replay(record, AccessRequest(principal, verb, resource, context), at, elevation)


def _entity(doc: Any) -> EntityRef:
    if not isinstance(doc, dict):
        raise TypeError("entity")
    properties = doc.get("properties")
    return EntityRef(str(doc["type"]), str(doc["id"]), properties or None)


def trust_view(candidate: Any) -> Callable[[Mapping[str, Any]], Any]:
    """`context.trust` as the candidate's Cedar sees it, rebuilt from a record's assessment:
    the recorded score and level, and the points of every signal the candidate's trust.yaml
    enforces (recorded in full when they moved the score, by name when quiet). None when the
    candidate has no trust.yaml, as the assessor leaves it out then."""
    policy = trust_policy(candidate)
    if not policy.declared:
        return lambda record: None
    enforced = {name for name, rule in policy.rules.items() if rule.enforce}

    def view(record: Mapping[str, Any]) -> Any:
        assessed = record.get("trust")
        if not isinstance(assessed, dict) or "score" not in assessed:
            raise Unreplayable("no trust assessment recorded")
        signals: dict[str, int] = {}
        for name in assessed.get("quiet") or []:
            if name in enforced:
                signals[name] = 0
        for row in assessed.get("signals") or []:
            if isinstance(row, dict) and row.get("mode") == "enforce" and row["name"] in enforced:
                signals[row["name"]] = int(row.get("points", 0))
        return {"score": assessed["score"], "level": assessed["level"], "signals": signals}

    return view


# -- the report -------------------------------------------------------------------------------


@dataclass
class Group:
    """Flips that share a key (a policy, a principal or a resource)."""

    count: int = 0
    allow_to_deny: int = 0
    deny_to_allow: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, flip: dict[str, Any]) -> None:
        self.count += 1
        if flip["from"] == "allow":
            self.allow_to_deny += 1
        else:
            self.deny_to_allow += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(flip)

    def as_dict(self, key: str, name: str) -> dict[str, Any]:
        return {
            name: key,
            "flips": self.count,
            "allow_to_deny": self.allow_to_deny,
            "deny_to_allow": self.deny_to_allow,
            "examples": self.examples,
        }


@dataclass
class ImpactReport:
    candidate: str
    since: float | None
    records: int = 0
    replayed: int = 0
    unchanged: int = 0
    allow_to_deny: int = 0
    deny_to_allow: int = 0
    not_replayed: Counter[str] = field(default_factory=Counter)
    not_replayed_examples: dict[str, list[str]] = field(default_factory=dict)
    by_policy: dict[str, Group] = field(default_factory=dict)
    by_principal: dict[str, Group] = field(default_factory=dict)
    by_resource: dict[str, Group] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def flips(self) -> int:
        return self.allow_to_deny + self.deny_to_allow

    def fails(self, fail_on: str | None) -> bool:
        if fail_on == "new-denies":
            return self.allow_to_deny > 0
        if fail_on == "any-flip":
            return self.flips > 0
        return False

    def skipped(self, reason: str, decision_id: str) -> None:
        self.not_replayed[reason] += 1
        examples = self.not_replayed_examples.setdefault(reason, [])
        if len(examples) < EXAMPLES:
            examples.append(decision_id)

    def flipped(self, flip: dict[str, Any]) -> None:
        if flip["from"] == "allow":
            self.allow_to_deny += 1
        else:
            self.deny_to_allow += 1
        for policy in flip["policies"] or ["(no policy)"]:
            self.by_policy.setdefault(policy, Group()).add(flip)
        self.by_principal.setdefault(flip["principal"], Group()).add(flip)
        self.by_resource.setdefault(flip["resource"], Group()).add(flip)

    def as_dict(self) -> dict[str, Any]:
        def groups(found: dict[str, Group], name: str) -> list[dict[str, Any]]:
            ordered = sorted(found.items(), key=lambda kv: (-kv[1].count, kv[0]))
            return [group.as_dict(key, name) for key, group in ordered]

        return {
            "candidate": self.candidate,
            "since": None if self.since is None else rfc3339(self.since),
            "records": self.records,
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "flips": self.flips,
            "allow_to_deny": self.allow_to_deny,
            "deny_to_allow": self.deny_to_allow,
            "not_replayed": sum(self.not_replayed.values()),
            "not_replayed_by_reason": [
                {
                    "reason": reason,
                    "count": count,
                    "examples": self.not_replayed_examples.get(reason, []),
                }
                for reason, count in self.not_replayed.most_common()
            ],
            "by_policy": groups(self.by_policy, "policy"),
            "by_principal": groups(self.by_principal, "principal"),
            "by_resource": groups(self.by_resource, "resource"),
            "seconds": round(self.seconds, 3),
        }


def flip_of(replay: Replay, decision: Decision) -> dict[str, Any] | None:
    """The flip `decision` makes of its record, if its enforced answer differs. `policies`
    names what made the difference: the candidate's determining policies (the forbid that now
    denies, the permit that now allows), or, for a deny no policy decided, the recorded
    permits that no longer hold (`… (no longer permits)`)."""
    was = replay.record.get("decision")
    now = decision.effect.value
    if was == now:
        return None
    policies = [r.policy_id for r in decision.reasons]
    if not policies and decision.errors:
        policies = ["(evaluation error)"]
    elif not policies:
        before = replay.record.get("reasons") or []
        policies = [f"{p} (no longer permits)" for p in before] or ["(default deny)"]
    request = replay.request
    return {
        "decision_id": replay.record.get("decision_id"),
        "time": replay.record.get("time"),
        "from": was,
        "to": now,
        "principal": str(request.principal),
        "action": str(request.action),
        "resource": str(request.resource),
        "policies": policies,
        "recorded_policies": list(replay.record.get("reasons") or []),
        "errors": list(decision.errors),
    }


def replay(
    records: Iterable[Mapping[str, Any]],
    evaluator: Evaluator,
    grants: Grants,
    *,
    since: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImpactReport:
    """Ask `evaluator` (the candidate) every record again; `progress(n)` is told of each
    record done (in chunks)."""
    started = time.perf_counter()
    report = ImpactReport(evaluator.revision, since)
    trust = trust_view(evaluator.bundle)
    pending: list[Replay] = []

    def settle() -> None:
        # One Cedar call per chunk (per policy generation and entity set within it): the
        # per-call cost is most of what one evaluation costs beyond Cedar's own work.
        answers = evaluator.evaluate_batch(
            [(a.request, a.at.timestamp(), a.elevation) for a in pending]
        )
        for asked, decision in zip(pending, answers, strict=True):
            report.replayed += 1
            flip = flip_of(asked, decision)
            if flip is None:
                report.unchanged += 1
            else:
                report.flipped(flip)
        if progress is not None:
            progress(len(pending))
        pending.clear()

    for record in records:
        if record.get("kind") != "decision":
            continue
        report.records += 1
        try:
            pending.append(replay_input(record, grants, trust))
        except Unreplayable as exc:
            report.skipped(str(exc), str(record.get("decision_id")))
            if progress is not None:
                progress(1)
            continue
        if len(pending) >= CHUNK:
            settle()
    if pending:
        settle()
    report.seconds = time.perf_counter() - started
    return report


# -- where records come from ------------------------------------------------------------------


def count_store_records(engine: Engine, since: float | None) -> int:
    from sqlalchemy import func

    statement = select(func.count()).select_from(decisions).where(decisions.c.kind == "decision")
    if since is not None:
        statement = statement.where(decisions.c.ts >= since)
    with engine.connect() as connection:
        return int(connection.execute(statement).scalar() or 0)


def store_records(engine: Engine, since: float | None) -> Iterator[dict[str, Any]]:
    """Decision records from `since` on, in ledger order, streamed."""
    statement = select(decisions.c.record).where(decisions.c.kind == "decision")
    if since is not None:
        statement = statement.where(decisions.c.ts >= since)
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=5000).execute(
            statement.order_by(decisions.c.seq)
        )
        for (data,) in result:
            yield orjson.loads(bytes(data))


def api_records(
    fetch: Callable[[str, dict[str, str]], Any], since: float | None, page: int = 5000
) -> Iterator[dict[str, Any]]:
    """Decision records from a server's admin API (`/v1/ledger/records`, page by page),
    those at or after `since`."""
    import base64

    start: int | None = 0
    while start is not None:
        doc = fetch("/v1/ledger/records", {"from_seq": str(start), "limit": str(page)})
        for item in doc["records"]:
            if item.get("kind") != "decision":
                continue
            if since is not None and float(item.get("ts") or 0) < since:
                continue
            yield orjson.loads(base64.b64decode(item["record"]))
        start = doc.get("next_from_seq")
