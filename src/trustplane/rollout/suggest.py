"""Policy suggestions from observed traffic, and entitlement coverage (M7).

Recorded decisions say what principals actually do: requests denied by default (no permit
applied: traffic a policy has yet to cover) and requests allowed (what the permits in force are
really used for). Each becomes evidence for a least-privilege permit candidate:

- principals are grouped by type and parents (`User::"erin"` in `Role::"support"`); a group
  is written `principal is User in Role::"support"` only when every member of that role the
  bundle knows was observed, so a suggestion never grants a member nobody saw act; otherwise
  the principals observed are named;
- resources likewise by type and parent (`Api` in `Service::"inventory"`);
- the actions each group used on each resource group are one `action in [...]`;
- a boolean of the context every one of those decisions had with the same value (`mfa`
  true) becomes a condition (`when { context has mfa && context.mfa }`).

Each candidate carries `@id`, `@owner`, `@mode("observe")` and a description, its evidence as
comments (how many decisions, denied by default or allowed by which policies, first and last
seen), and is validated against the bundle's schema (strict, as the bundle compiler does). The
file is written for a person to review; nothing here activates it.

Coverage: of the action–resource pairs observed, the share some explicit policy decided (a
permit or a forbid determined the answer) rather than the default deny.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cedarpy

from trustplane.decision.policy_bundle import Bundle
from trustplane.telemetry.ledger import rfc3339
from trustplane.telemetry.query import reason_code

DEFAULT_DENY = "no_policy_permits"
EXPLICIT = frozenset({"policy_permits", "policy_forbids"})


def _uid(doc: Any) -> tuple[str, str] | None:
    if not isinstance(doc, dict) or "type" not in doc or "id" not in doc:
        return None
    return str(doc["type"]), str(doc["id"])


def _cedar(uid: tuple[str, str]) -> str:
    escaped = uid[1].replace("\\", "\\\\").replace('"', '\\"')
    return f'{uid[0]}::"{escaped}"'


@dataclass
class Evidence:
    count: int = 0
    denied: int = 0
    allowed_by: Counter[str] = field(default_factory=Counter)
    first: float | None = None
    last: float | None = None
    # Boolean context values seen, by attribute; None once an attribute was missing or not a
    # boolean in some decision: only a value every decision had becomes a condition.
    flags: dict[str, set[bool] | None] | None = None

    def add(self, ts: float, code: str, reasons: Iterable[str], context: Mapping[str, Any]) -> None:
        seen = {k: {v} for k, v in context.items() if isinstance(v, bool)}
        self._flags(seen)
        self.count += 1
        if code == DEFAULT_DENY:
            self.denied += 1
        else:
            self.allowed_by.update(reasons)
        self.first = ts if self.first is None else min(self.first, ts)
        self.last = ts if self.last is None else max(self.last, ts)

    def _flags(self, seen: Mapping[str, set[bool] | None]) -> None:
        if self.flags is None:
            self.flags = dict(seen)
            return
        for key in set(self.flags) | set(seen):
            mine, theirs = self.flags.get(key), seen.get(key)
            self.flags[key] = None if mine is None or theirs is None else mine | theirs

    def conditions(self) -> list[str]:
        """`context.x` (or `!context.x`) for each boolean every decision had with one value."""
        found = []
        for key, values in sorted((self.flags or {}).items()):
            if values is None or len(values) != 1 or not key.isidentifier():
                continue
            test = f"context.{key}" if True in values else f"!context.{key}"
            found.append(f"context has {key} && {test}")
        return found

    def merge(self, other: Evidence) -> None:
        if other.flags is not None:
            self._flags(other.flags)
        self.count += other.count
        self.denied += other.denied
        self.allowed_by.update(other.allowed_by)
        for ts in (other.first, other.last):
            if ts is not None:
                self.first = ts if self.first is None else min(self.first, ts)
                self.last = ts if self.last is None else max(self.last, ts)


@dataclass
class Candidate:
    policy_id: str
    text: str
    principals: list[str]
    actions: list[str]
    resources: list[str]
    evidence: Evidence
    valid: bool = True
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.policy_id,
            "principals": self.principals,
            "actions": self.actions,
            "resources": self.resources,
            "decisions": self.evidence.count,
            "denied_by_default": self.evidence.denied,
            "allowed_by": dict(self.evidence.allowed_by),
            "first_seen": self.evidence.first,
            "last_seen": self.evidence.last,
            "valid": self.valid,
            "problems": self.problems,
            "text": self.text,
        }


@dataclass
class Suggestions:
    candidates: list[Candidate]
    records: int
    used: int
    pairs: int
    explicit_pairs: int
    uncovered: list[dict[str, Any]]

    @property
    def coverage(self) -> float | None:
        return None if not self.pairs else self.explicit_pairs / self.pairs

    def text(self) -> str:
        header = (
            "// Suggested by `trustplane policy suggest` from recorded decisions: review, "
            "give each an owner,\n// and add the ones you agree with to the bundle. Observe "
            "mode: they change no answer until promoted.\n"
        )
        return header + "".join(f"\n{c.text}" for c in self.candidates if c.valid)

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "used": self.used,
            "candidates": [c.as_dict() for c in self.candidates],
            "coverage": {
                "pairs": self.pairs,
                "explicit": self.explicit_pairs,
                "default_deny": self.pairs - self.explicit_pairs,
                "share": self.coverage,
                "uncovered": self.uncovered,
            },
        }


class _Graph:
    """The bundle's entities: each one's parents, and each parent's members by type."""

    def __init__(self, entities: list[dict[str, Any]]) -> None:
        self.parents: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        self.members: dict[tuple[tuple[str, str], str], set[tuple[str, str]]] = {}
        for entity in entities:
            uid = (entity["uid"]["type"], entity["uid"]["id"])
            parents = tuple(
                sorted((p["type"], p["id"]) for p in entity.get("parents") or [] if "id" in p)
            )
            self.parents[uid] = parents
            for parent in parents:
                self.members.setdefault((parent, uid[0]), set()).add(uid)

    def group(self, uid: tuple[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
        return uid[0], self.parents.get(uid, ())

    def scope(
        self, var: str, kind: str, parents: tuple[tuple[str, str], ...], seen: set[Any]
    ) -> tuple[str, str]:
        """The scope clause for the observed `seen` entities of type `kind` sharing `parents`,
        and a condition when the scope alone would say more than was observed."""
        if len(seen) == 1:
            return f"{var} == {_cedar(next(iter(seen)))}", ""
        for parent in parents:
            if self.members.get((parent, kind), set()) == seen:
                return f"{var} is {kind} in {_cedar(parent)}", ""
        listed = ", ".join(_cedar(u) for u in sorted(seen))
        return f"{var} is {kind}", f"[{listed}].contains({var})"


def suggest(
    records: Iterable[Mapping[str, Any]],
    bundle: Bundle,
    *,
    principal_type: str | None = None,
    owner: str = "unassigned",
    prefix: str = "suggested",
) -> Suggestions:
    """Permit candidates and coverage from `records` (decision records, any order)."""
    graph = _Graph(bundle.entities)
    triples: dict[tuple[tuple[str, str], str, tuple[str, str]], Evidence] = {}
    pairs: dict[tuple[str, str], bool] = {}
    seen_records = used = 0
    for record in records:
        if record.get("kind") != "decision":
            continue
        seen_records += 1
        request = record.get("request")
        if not isinstance(request, dict):
            continue
        principal, resource = _uid(request.get("principal")), _uid(request.get("resource"))
        verb = _uid(request.get("action"))
        if principal is None or resource is None or verb is None:
            continue
        if verb[1].startswith("admission:"):
            continue  # the posture engine's, not Cedar's
        code = reason_code(record)
        action = _cedar(verb)
        pair = (action, _cedar(resource))
        if code in EXPLICIT or code == DEFAULT_DENY:
            pairs[pair] = pairs.get(pair, False) or code in EXPLICIT
        if code not in (DEFAULT_DENY, "policy_permits"):
            continue  # forbidden, refused before any policy, or an evaluation error
        if principal_type is not None and principal[0] != principal_type:
            continue
        used += 1
        ts = _timestamp(record)
        evidence = triples.setdefault((principal, action, resource), Evidence())
        context = request.get("context")
        evidence.add(
            ts, code, record.get("reasons") or [], context if isinstance(context, dict) else {}
        )

    # principal group → resource group → actions, principals, resources, evidence
    grouped: dict[tuple[Any, Any], dict[str, Any]] = {}
    for (principal, action, resource), evidence in triples.items():
        key = (graph.group(principal), graph.group(resource))
        slot = grouped.setdefault(
            key, {"principals": set(), "resources": set(), "actions": set(), "evidence": Evidence()}
        )
        slot["principals"].add(principal)
        slot["resources"].add(resource)
        slot["actions"].add(action)
        slot["evidence"].merge(evidence)

    candidates = [
        _candidate(graph, key, slot, owner, prefix)
        for key, slot in sorted(grouped.items(), key=lambda kv: -kv[1]["evidence"].count)
    ]
    _validate(candidates, bundle.schema)
    uncovered = [
        {"action": action, "resource": resource}
        for (action, resource), explicit in sorted(pairs.items())
        if not explicit
    ]
    return Suggestions(
        candidates,
        seen_records,
        used,
        len(pairs),
        sum(1 for explicit in pairs.values() if explicit),
        uncovered,
    )


def _timestamp(record: Mapping[str, Any]) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return 0.0


def _candidate(
    graph: _Graph, key: tuple[Any, Any], slot: dict[str, Any], owner: str, prefix: str
) -> Candidate:
    (ptype, pparents), (rtype, rparents) = key
    principal, p_when = graph.scope("principal", ptype, pparents, slot["principals"])
    resource, r_when = graph.scope("resource", rtype, rparents, slot["resources"])
    actions = sorted(slot["actions"])
    action = f"action == {actions[0]}" if len(actions) == 1 else f"action in [{', '.join(actions)}]"
    evidence: Evidence = slot["evidence"]
    principals = sorted(_cedar(p) for p in slot["principals"])
    resources = sorted(_cedar(r) for r in slot["resources"])
    digest = hashlib.sha256(f"{principal}|{action}|{resource}|{p_when}|{r_when}".encode())
    policy_id = f"{prefix}-{ptype.lower()}-{rtype.lower()}-{digest.hexdigest()[:8]}"
    allowed = ", ".join(f"{p} ({n})" for p, n in evidence.allowed_by.most_common())
    lines = [
        f"// evidence: {evidence.count} decision(s), first seen "
        f"{rfc3339(evidence.first or 0)}, last seen {rfc3339(evidence.last or 0)}",
        f"//   denied by default: {evidence.denied}"
        + (f"; allowed by: {allowed}" if allowed else ""),
        f"//   principals: {', '.join(principals)}",
        f"//   resources: {', '.join(resources)}",
        f'@id("{policy_id}")',
        f'@owner("{owner}")',
        '@mode("observe")',
        f'@description("Suggested from {evidence.count} observed decision(s): '
        f"{len(principals)} principal(s), {len(actions)} action(s), "
        f'{len(resources)} resource(s).")',
        "permit (",
        f"  {principal},",
        f"  {action},",
        f"  {resource}",
        ")",
    ]
    # Least privilege in context too: a flag every observed decision had (signed in with MFA)
    # is required of the candidate, so it grants no more than was used.
    conditions = [c for c in (p_when, r_when) if c] + evidence.conditions()
    text = "\n".join(lines)
    text += "".join(f"\nwhen {{ {c} }}" for c in conditions) + ";\n"
    return Candidate(policy_id, text, principals, actions, resources, evidence)


def _validate(candidates: list[Candidate], schema: Any) -> None:
    """Each candidate against the bundle's schema, strict as the bundle compiler validates."""
    for candidate in candidates:
        result = cedarpy.validate_policies(candidate.text, schema)
        if not result.validation_passed:
            candidate.valid = False
            candidate.problems = [str(e.error) for e in result.errors]
