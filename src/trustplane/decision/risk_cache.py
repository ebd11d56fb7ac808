"""The decision cache's rules: how long an answer may be reused, by policy tier and risk level.

Two caches reuse answers: the evaluator's own (decision/engine.py, per bundle revision) and the
enforcement points' (the SDK's, for the `ttl_seconds` each answer carries). Both follow what
this module says for a request:

- **live**: evaluated by Cedar every time and answered with `ttl_seconds` 0 — a Tier 0 resource
  (its `tier` attribute) or an answer a Tier 0 policy determined (`@tier("0")`); a risk level
  in `policy.live_risk_levels` (high, critical); a volatile signal that fired
  (`policy.volatile_signals`: token and authentication age, travel); a failed assessment.
- **a low-risk read** (an action in the schema's `read` group, risk level `low`) of a tier
  named in `policy.read_ttl_seconds`: reused up to that tier's bound.
- **anything else** (writes, medium risk, resources of no known tier): up to
  `policy.decision_ttl_seconds`.

Every bound is further cut at the next policy `@expires` boundary and a grant's edge (the
evaluator) and at the verified token's `exp`: an answer never outlives what it rested on.

The tier of a request is the most critical of its resource's `tier` attribute (the bundle's
entities, or the caller's resource properties) and the `@tier` of every policy that determined
the answer, enforced or shadow; "none" when neither says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trustplane.decision.policy_bundle import Bundle, schema_without_comments
from trustplane.model import AccessRequest, PolicyReason

TIERS = ("0", "1", "2")
NO_TIER = "none"  # the metrics label of a request no tier attribute or annotation classifies
NO_RISK = "none"  # no assessment (the trust plane is not wired in)
LOW_RISK = "low"


@dataclass(frozen=True)
class CacheRules:
    """The `[policy]` settings the cache follows (config.PolicySettings)."""

    decision_ttl_seconds: int = 5
    read_ttl_seconds: Mapping[str, int] = field(default_factory=lambda: {"1": 15, "2": 60})
    read_action_group: str = "read"
    live_risk_levels: frozenset[str] = frozenset({"high", "critical"})
    volatile_signals: frozenset[str] = frozenset(
        {"auth_age", "token_age", "impossible_travel", "new_country"}
    )

    @property
    def longest(self) -> int:
        """The longest reuse any answer may get: the evaluator's own cut-off."""
        return max([self.decision_ttl_seconds, *self.read_ttl_seconds.values()])


@dataclass(frozen=True, slots=True)
class Plan:
    """What is known before evaluation: the resource's tier, the risk level, and why the
    request is evaluated live (None: it may be answered from the evaluator's cache)."""

    tier: str | None
    risk: str
    live: str | None


class RiskCache:
    """The rules applied to one request before and after it is evaluated. Thread-safe: what
    it memoises per bundle revision is replaced whole."""

    def __init__(self, rules: CacheRules) -> None:
        self.rules = rules
        self._by_revision: dict[str, tuple[dict[tuple[str, str], str], frozenset[str]]] = {}

    def plan(
        self, request: AccessRequest, bundle: Bundle | None, assessment: Mapping[str, Any] | None
    ) -> Plan:
        tiers, _ = self._bundle_facts(bundle)
        resource = request.resource
        tier = tiers.get((resource.type, resource.id))
        if resource.properties:
            tier = most_critical((tier, _tier_text(resource.properties.get("tier"))))
        if assessment is None:
            return Plan(tier, NO_RISK, "tier 0" if tier == "0" else None)
        risk = str(assessment.get("level") or NO_RISK)
        live = None
        if tier == "0":
            live = "tier 0"
        elif "error" in assessment:
            live = "assessment failed"
        elif risk in self.rules.live_risk_levels:
            live = f"risk {risk}"
        else:
            volatile = self.rules.volatile_signals
            for row in assessment.get("signals") or ():
                if row.get("name") in volatile and (row.get("value") or row.get("error")):
                    live = f"volatile signal {row['name']}"
                    break
        return Plan(tier, risk, live)

    def finish(
        self,
        plan: Plan,
        request: AccessRequest,
        ttl: int,
        reasons: Iterable[PolicyReason],
        shadow_reasons: Iterable[PolicyReason],
        errors: tuple[str, ...],
        bundle: Bundle | None,
        now: float,
    ) -> tuple[int, str]:
        """The answer's `ttl_seconds` (`ttl`: the evaluator's, cut at @expires and grant
        edges) and its tier (a metrics label)."""
        tier = plan.tier
        for reason in (*reasons, *shadow_reasons):  # tiers are validated at load: "0"-"2"
            found = reason.tier
            if found is not None and (tier is None or found < tier):
                tier = found
        if plan.live is not None or tier == "0" or errors or not ttl:
            return 0, tier or NO_TIER
        rules = self.rules
        bound = rules.decision_ttl_seconds
        if plan.risk == LOW_RISK and tier is not None and tier in rules.read_ttl_seconds:
            _, reads = self._bundle_facts(bundle)
            if request.action.id in reads:
                bound = rules.read_ttl_seconds[tier]
        if bound < ttl:
            ttl = bound
        evidence = request.evidence
        if ttl and evidence is not None and evidence.claims is not None:
            expires = evidence.claims.get("exp")
            if isinstance(expires, int | float) and not isinstance(expires, bool):
                ttl = max(0, min(ttl, int(expires - now)))
        return ttl, tier or NO_TIER

    def _bundle_facts(
        self, bundle: Bundle | None
    ) -> tuple[dict[tuple[str, str], str], frozenset[str]]:
        """The resources' tiers and the read actions of `bundle`, computed once per revision."""
        if bundle is None:
            return {}, frozenset()
        known = self._by_revision.get(bundle.revision)
        if known is None:
            tiers: dict[tuple[str, str], str] = {}
            for entity in bundle.entities:
                uid = entity.get("uid") if isinstance(entity, dict) else None
                if isinstance(uid, dict) and "__entity" in uid:
                    uid = uid["__entity"]
                attrs = entity.get("attrs") if isinstance(entity, dict) else None
                if not isinstance(uid, dict) or not isinstance(attrs, dict):
                    continue
                tier = _tier_text(attrs.get("tier"))
                if tier is not None:
                    tiers[(str(uid.get("type")), str(uid.get("id")))] = tier
            reads = members(action_groups(bundle.schema_text), self.rules.read_action_group)
            known = (tiers, reads)
            if len(self._by_revision) > 8:
                self._by_revision = {}
            self._by_revision = {**self._by_revision, bundle.revision: known}
        return known


def most_critical(tiers: Iterable[str | None]) -> str | None:
    known = [t for t in tiers if t in TIERS]
    return min(known) if known else None


def _tier_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    text = str(value) if isinstance(value, int | str) else None
    return text if text in TIERS else None


_ACTION = re.compile(
    r'\baction\s+((?:"[^"]*"|[A-Za-z_][\w:]*)(?:\s*,\s*(?:"[^"]*"|[A-Za-z_][\w:]*))*)'
    r'\s+in\s+(\[[^\]]*\]|"[^"]*"|[A-Za-z_][\w:]*(?:"[^"]*")?)'
)
_NAME = re.compile(r'"([^"]*)"|([A-Za-z_][\w]*)(?=\s*(?:,|\]|$))')


def action_groups(schema_text: str) -> dict[str, frozenset[str]]:
    """Each action of a Cedar schema (human format) → the groups it is declared `in`."""
    text = schema_without_comments(schema_text)
    groups: dict[str, set[str]] = {}
    for names, parents in _ACTION.findall(text):
        parent_names = {_last(m) for m in _NAME.finditer(parents.strip("[]"))}
        for match in _NAME.finditer(names):
            groups.setdefault(_last(match), set()).update(parent_names)
    return {action: frozenset(p) for action, p in groups.items()}


def _last(match: re.Match[str]) -> str:
    return match.group(1) if match.group(1) is not None else match.group(2)


def members(groups: Mapping[str, frozenset[str]], group: str) -> frozenset[str]:
    """The actions in `group`, directly or through other groups."""
    found: set[str] = set()
    frontier = {group}
    while frontier:
        frontier = {a for a, parents in groups.items() if parents & frontier} - found
        found |= frontier
    return frozenset(found)
