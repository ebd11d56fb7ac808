"""`access.yaml`: what may be requested, by whom, for how long, approved by whom.

The file is part of the bundle (hashed into its revision, signed with it) and is checked when
the bundle is compiled: a role nobody defined, a duration over the cap, a Tier 0 entry with
fewer than two approvals or a break-glass profile longer than an hour refuse the bundle, with
the file and line named. Membership (is bob a developer?) is read from the bundle's entities,
so the people who may request or approve are the ones policies already know.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trustplane.decision.policy_bundle import Bundle, BundleProblem, ExtraFile, read_yaml
from trustplane.decision.requests import RequestError, parse_entity

ACCESS_FILE = "access.yaml"
BREAK_GLASS_MAX_SECONDS = 3600  # the hard cap of the issue: break-glass is short
EXCEPTION_MAX_SECONDS = 90 * 86400  # default cap on exceptions
DEFAULT_PENDING_SECONDS = 24 * 3600
DEFAULT_REVIEW_SECONDS = 72 * 3600
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TOP_KEYS = frozenset({"requestable", "break_glass", "exceptions"})
_REQUESTABLE_KEYS = frozenset(
    {
        "role",
        "requesters",
        "approvers",
        "max_duration",
        "approvals",
        "tier",
        "reason_required",
        "ticket_required",
        "pending_ttl",
        "description",
    }
)
_PROFILE_KEYS = frozenset(
    {"name", "role", "who", "max_duration", "review_within", "reviewers", "description"}
)
_EXCEPTION_KEYS = frozenset({"max_duration", "approvals", "approvers"})


class DurationError(ValueError):
    """A duration that is not `<number><s|m|h|d>`."""


def parse_duration(value: Any) -> int:
    """Seconds in `30m`, `4h`, `7d` (or a bare number of seconds)."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = int(match[1]) * _UNITS[match[2]]
    else:
        raise DurationError(f"{value!r} is not a duration such as 30m, 4h or 7d")
    if seconds <= 0:
        raise DurationError(f"{value!r} must be longer than zero")
    return seconds


@dataclass(frozen=True)
class Requestable:
    """One role that may be requested just in time."""

    role: str  # canonical entity text: Role::"sre"
    requesters: tuple[str, ...]
    approvers: tuple[str, ...]
    max_seconds: int
    approvals: int
    tier: str
    reason_required: bool
    ticket_required: bool
    pending_seconds: int
    description: str = ""


@dataclass(frozen=True)
class BreakGlassProfile:
    name: str
    role: str
    who: tuple[str, ...]
    max_seconds: int
    review_seconds: int
    reviewers: tuple[str, ...]  # empty: anyone but the opener may close the review
    description: str = ""


@dataclass(frozen=True)
class ExceptionRules:
    max_seconds: int = EXCEPTION_MAX_SECONDS
    approvals: int = 1
    approvers: tuple[str, ...] = ()  # empty: any authenticated approver but the requester


@dataclass(frozen=True)
class AccessCatalog:
    """The compiled access.yaml, with the membership closure of the bundle's entities."""

    requestable: Mapping[str, Requestable] = field(default_factory=dict)
    profiles: Mapping[str, BreakGlassProfile] = field(default_factory=dict)
    exceptions: ExceptionRules = field(default_factory=ExceptionRules)
    ancestors: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def member(self, principal: str, groups: Iterable[str]) -> bool:
        """Whether `principal` is one of `groups` or inside one (through entity parents)."""
        wanted = set(groups)
        return principal in wanted or bool(self.ancestors.get(principal, frozenset()) & wanted)

    def roles_of(self, principal: str) -> frozenset[str]:
        return self.ancestors.get(principal, frozenset())


def ancestors_of(entities: list[dict[str, Any]]) -> dict[str, frozenset[str]]:
    """Every entity's transitive parents, as canonical entity text."""
    parents: dict[str, list[str]] = {}
    for entity in entities:
        uid = entity.get("uid", {})
        key = f'{uid.get("type")}::"{uid.get("id")}"'
        parents[key] = [f'{p.get("type")}::"{p.get("id")}"' for p in entity.get("parents", [])]
    closure: dict[str, frozenset[str]] = {}
    for start in parents:
        seen: set[str] = set()
        stack = list(parents[start])
        while stack:
            item = stack.pop()
            if item not in seen:
                seen.add(item)
                stack.extend(parents.get(item, []))
        closure[start] = frozenset(seen)
    return closure


def parse_access(
    text: str, entities: list[dict[str, Any]], problems: list[BundleProblem]
) -> AccessCatalog:
    """Compile access.yaml; every problem goes to `problems` with its line."""
    document = read_yaml(ACCESS_FILE, text, problems)
    known = ancestors_of(entities)
    if document is None:
        return AccessCatalog(ancestors=known)
    data = document.data or {}
    if not isinstance(data, dict):
        problems.append(BundleProblem(ACCESS_FILE, "must be a mapping"))
        return AccessCatalog(ancestors=known)
    for key in sorted(set(data) - _TOP_KEYS):
        problems.append(
            BundleProblem(
                ACCESS_FILE, f"unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})"
            )
        )
    checker = _Checker(problems, set(known))
    requestable: dict[str, Requestable] = {}
    lines = document.item_lines("requestable")
    for index, item in enumerate(_items(data, "requestable", problems)):
        where = _Where(f"requestable[{index}]", lines[index] if index < len(lines) else None)
        parsed = checker.requestable(item, where)
        if parsed is None:
            continue
        if parsed.role in requestable:
            checker.problem(where, f"role {parsed.role} is declared twice")
        requestable[parsed.role] = parsed
    profiles: dict[str, BreakGlassProfile] = {}
    lines = document.item_lines("break_glass")
    for index, item in enumerate(_items(data, "break_glass", problems)):
        where = _Where(f"break_glass[{index}]", lines[index] if index < len(lines) else None)
        profile = checker.profile(item, where)
        if profile is None:
            continue
        if profile.name in profiles:
            checker.problem(where, f"profile {profile.name!r} is declared twice")
        profiles[profile.name] = profile
    rules = checker.exception_rules(data.get("exceptions"))
    return AccessCatalog(requestable, profiles, rules, known)


def _items(data: dict[str, Any], key: str, problems: list[BundleProblem]) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        problems.append(BundleProblem(ACCESS_FILE, f"{key} must be a list"))
        return []
    return value


@dataclass(frozen=True)
class _Where:
    path: str
    line: int | None


class _Checker:
    def __init__(self, problems: list[BundleProblem], entities: set[str]) -> None:
        self._problems = problems
        self._entities = entities

    def problem(self, where: _Where, message: str) -> None:
        self._problems.append(BundleProblem(ACCESS_FILE, f"{where.path}: {message}", where.line))

    def _keys(self, item: dict[str, Any], allowed: frozenset[str], where: _Where) -> None:
        for key in sorted(set(item) - allowed):
            self.problem(where, f"unknown key {key!r} (known: {', '.join(sorted(allowed))})")

    def entity(self, value: Any, where: _Where, name: str) -> str | None:
        try:
            ref = parse_entity(value, name)
        except RequestError as exc:
            self.problem(where, f"{name}: {exc}")
            return None
        text = str(ref)
        if text not in self._entities:
            self.problem(where, f"{name}: {text} is not an entity of this bundle (entities.json)")
            return None
        return text

    def entities(self, value: Any, where: _Where, name: str, required: bool) -> tuple[str, ...]:
        if value is None and not required:
            return ()
        if not isinstance(value, list) or (required and not value):
            self.problem(where, f"{name} must be a non-empty list of entities")
            return ()
        found = [self.entity(v, where, name) for v in value]
        return tuple(f for f in found if f is not None)

    def duration(self, value: Any, where: _Where, name: str, cap: int | None = None) -> int:
        try:
            seconds = parse_duration(value)
        except DurationError as exc:
            self.problem(where, f"{name}: {exc}")
            return 0
        if cap is not None and seconds > cap:
            self.problem(where, f"{name}: {value} is over the cap of {_human(cap)}")
        return seconds

    def count(self, value: Any, where: _Where, name: str, default: int) -> int:
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10:
            self.problem(where, f"{name} must be a whole number from 1 to 10")
            return default
        return value

    def requestable(self, item: Any, where: _Where) -> Requestable | None:
        if not isinstance(item, dict):
            self.problem(where, "must be a mapping with role, requesters, approvers, max_duration")
            return None
        self._keys(item, _REQUESTABLE_KEYS, where)
        role = self.entity(item.get("role"), where, "role")
        requesters = self.entities(item.get("requesters"), where, "requesters", True)
        approvers = self.entities(item.get("approvers"), where, "approvers", True)
        if "max_duration" not in item:
            self.problem(where, "max_duration is required (no standing access)")
        max_seconds = self.duration(item.get("max_duration"), where, "max_duration")
        pending = self.duration(
            item.get("pending_ttl", DEFAULT_PENDING_SECONDS), where, "pending_ttl"
        )
        tier = str(item.get("tier", "2"))
        if tier not in ("0", "1", "2"):
            self.problem(where, f"tier must be 0, 1 or 2, not {tier!r}")
        approvals = self.count(item.get("approvals"), where, "approvals", 2 if tier == "0" else 1)
        if tier == "0" and approvals < 2:
            self.problem(where, "Tier 0 access needs at least 2 approvals from distinct people")
        flags = {}
        for flag in ("reason_required", "ticket_required"):
            value = item.get(flag, flag == "reason_required")
            if not isinstance(value, bool):
                self.problem(where, f"{flag} must be true or false")
                value = True
            flags[flag] = value
        description = item.get("description", "")
        if role is None or not isinstance(description, str):
            return None
        return Requestable(
            role=role,
            requesters=requesters,
            approvers=approvers,
            max_seconds=max_seconds,
            approvals=approvals,
            tier=tier,
            reason_required=flags["reason_required"],
            ticket_required=flags["ticket_required"],
            pending_seconds=pending,
            description=description,
        )

    def profile(self, item: Any, where: _Where) -> BreakGlassProfile | None:
        if not isinstance(item, dict):
            self.problem(where, "must be a mapping with name, role, who, max_duration")
            return None
        self._keys(item, _PROFILE_KEYS, where)
        name = item.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", name):
            self.problem(where, "name must be lowercase letters, digits and dashes")
            name = None
        role = self.entity(item.get("role"), where, "role")
        who = self.entities(item.get("who"), where, "who", True)
        reviewers = self.entities(item.get("reviewers"), where, "reviewers", False)
        if "max_duration" not in item:
            self.problem(where, "max_duration is required (at most 1h)")
        max_seconds = self.duration(
            item.get("max_duration"), where, "max_duration", BREAK_GLASS_MAX_SECONDS
        )
        review = self.duration(
            item.get("review_within", DEFAULT_REVIEW_SECONDS), where, "review_within"
        )
        if name is None or role is None:
            return None
        return BreakGlassProfile(
            name, role, who, max_seconds, review, reviewers, str(item.get("description", ""))
        )

    def exception_rules(self, value: Any) -> ExceptionRules:
        where = _Where("exceptions", None)
        if value is None:
            return ExceptionRules()
        if not isinstance(value, dict):
            self.problem(where, "must be a mapping")
            return ExceptionRules()
        self._keys(value, _EXCEPTION_KEYS, where)
        cap = EXCEPTION_MAX_SECONDS
        if "max_duration" in value:
            # Operators may lower or raise the cap, never remove it: no permanent exception.
            cap = self.duration(value["max_duration"], where, "max_duration", 365 * 86400)
        return ExceptionRules(
            max_seconds=cap,
            approvals=self.count(value.get("approvals"), where, "approvals", 1),
            approvers=self.entities(value.get("approvers"), where, "approvers", False),
        )


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _compile_access(
    text: str | None, entities: list[dict[str, Any]], problems: list[BundleProblem]
) -> AccessCatalog:
    if text is None and not entities:
        return AccessCatalog()
    return parse_access(text or "{}", entities, problems)


BUNDLE_FILES: tuple[ExtraFile, ...] = (ExtraFile(ACCESS_FILE, _compile_access),)
"""The bundle files governance reads; whoever loads bundles passes them (LoadOptions)."""


def access_catalog(bundle: Bundle) -> AccessCatalog:
    """The bundle's compiled access.yaml (empty when the bundle has none)."""
    catalog = bundle.extras.get(ACCESS_FILE)
    return catalog if isinstance(catalog, AccessCatalog) else AccessCatalog()
