"""The known universe a search or a simulation enumerates: every entity and action trustplane
has evidence of. Bundle entities and the schema's actions, the workloads registered with the
identity plane, and the principals, actions and resources seen in the ledger.

A search answers over this set and nothing else: an entity nobody declared, registered or
asked about cannot be listed (Cedar's default deny would refuse most of them anyway, but a
policy such as `permit (principal, action, resource)` allows entities no list can enumerate;
docs/outcomes.md says so).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trustplane.decision.policy_bundle import Bundle

# `action "a", "b" appliesTo {...};` or `action read;` in Cedar's human schema syntax.
_ACTION_STATEMENT = re.compile(
    r"(?m)^\s*action\s+([^;{]*?)(?:\s+in\s+\[[^\]]*\]|\s+in\s+\S+)?\s*(?:appliesTo\b|;|\{)"
)
_NAME = re.compile(r'"((?:[^"\\]|\\.)*)"|([A-Za-z_][A-Za-z0-9_]*)')
_POLICY_ACTION = re.compile(r'Action::"((?:[^"\\]|\\.)*)"')
_COLUMN_ENTITY = re.compile(r'^([A-Za-z_][A-Za-z0-9_:]*)::"(.*)"$', re.S)


@dataclass(frozen=True)
class Universe:
    """Entities by type (ids sorted) and actions (sorted): what searches enumerate."""

    entities: dict[str, tuple[str, ...]] = field(default_factory=dict)
    actions: tuple[str, ...] = ()
    built_at: float = 0.0

    def ids(self, entity_type: str) -> tuple[str, ...]:
        return self.entities.get(entity_type, ())

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.entities.values()) + len(self.actions)


def schema_actions(schema_text: str) -> list[str]:
    """Action names declared in a human-syntax Cedar schema (group actions included)."""
    names: list[str] = []
    for match in _ACTION_STATEMENT.finditer(schema_text):
        for quoted, bare in _NAME.findall(match.group(1)):
            name = quoted or bare
            if name and name not in ("in", "appliesTo"):
                names.append(name)
    return names


def bundle_parts(bundle: Bundle) -> tuple[list[tuple[str, str]], list[str]]:
    """The bundle's entities and actions (schema declarations and actions policies name)."""
    entities = [(str(e["uid"]["type"]), str(e["uid"]["id"])) for e in bundle.entities]
    actions = schema_actions(bundle.schema_text)
    for policy in bundle.policies:
        actions.extend(_POLICY_ACTION.findall(policy.text))
    return entities, actions


def parse_column_entity(text: str) -> tuple[str, str] | None:
    """`Type::"id"` (a ledger query column) → (type, id); None for anything else."""
    match = _COLUMN_ENTITY.match(text or "")
    if match is None:
        return None
    return match.group(1), match.group(2).replace('\\"', '"')


def workload_entities(bundle: Bundle | None, spiffe_ids: Iterable[str]) -> list[tuple[str, str]]:
    """Registered SPIFFE IDs as the principals the enforcement adapters would name them: the
    bundle's workload entity whose attribute holds the ID, else the ID itself (enforcer.py)."""
    routes = bundle.routes if bundle is not None else None
    kind = routes.workload_type if routes is not None else "Service"
    attribute = routes.workload_id_attribute if routes is not None else "spiffe_id"
    index: dict[str, str] = {}
    for entity in bundle.entities if bundle is not None else []:
        value = entity.get("attrs", {}).get(attribute)
        if entity["uid"]["type"] == kind and isinstance(value, str):
            index[value] = str(entity["uid"]["id"])
    return [(kind, index.get(s, s)) for s in spiffe_ids]


def build(
    bundle: Bundle | None,
    extra_entities: Iterable[tuple[str, str]] = (),
    extra_actions: Iterable[str] = (),
) -> Universe:
    by_type: dict[str, set[str]] = {}
    actions: set[str] = set(extra_actions)
    entities: list[tuple[str, str]] = list(extra_entities)
    if bundle is not None:
        found, named = bundle_parts(bundle)
        entities.extend(found)
        actions.update(named)
    for kind, ident in entities:
        if kind == "Action":
            actions.add(ident)
        elif kind and ident:
            by_type.setdefault(kind, set()).add(ident)
    return Universe(
        {k: tuple(sorted(v)) for k, v in sorted(by_type.items())},
        tuple(sorted(actions)),
        time.time(),
    )


@dataclass
class StoreEvidence:
    """What the store knows of entities, read incrementally: registered SPIFFE IDs (re-read
    whole: a handful of rows) and the principals, actions and resources of ledger rows after
    `seq` (the primary key), so a refresh reads only what was appended since the last one."""

    spiffe_ids: list[str] = field(default_factory=list)
    entities: set[tuple[str, str]] = field(default_factory=set)
    actions: set[str] = field(default_factory=set)
    seq: int = -1

    def refresh(self, engine: Any) -> StoreEvidence:
        from sqlalchemy import func, select

        from trustplane.store.tables import decisions, identity_entries

        with engine.connect() as conn:
            self.spiffe_ids = [
                r[0] for r in conn.execute(select(identity_entries.c.spiffe_id).distinct())
            ]
            newest = conn.execute(select(func.max(decisions.c.seq))).scalar()
            if newest is None or newest <= self.seq:
                return self
            window = (
                decisions.c.kind == "decision",
                decisions.c.seq > self.seq,
                decisions.c.seq <= newest,
            )
            for column in (decisions.c.principal, decisions.c.resource):
                for (text,) in conn.execute(select(column).where(*window).distinct()):
                    parsed = parse_column_entity(text)
                    if parsed is not None:
                        self.entities.add(parsed)
            for (text,) in conn.execute(select(decisions.c.action).where(*window).distinct()):
                parsed = parse_column_entity(text)
                if parsed is not None and parsed[0].endswith("Action"):
                    self.actions.add(parsed[1])
            self.seq = int(newest)
        return self

    def universe(self, bundle: Bundle | None) -> Universe:
        entities = [*self.entities, *workload_entities(bundle, self.spiffe_ids)]
        return build(bundle, entities, self.actions)


def from_store(engine: Any, bundle: Bundle | None) -> Universe:
    """The universe with the store's evidence: registered workloads and every principal,
    action and resource a ledger row names (distinct values, read once)."""
    return StoreEvidence().refresh(engine).universe(bundle)


def observed_flows(engine: Any, principal_types: Iterable[str]) -> list[tuple[Any, str, Any]]:
    """Calls workloads made under their own identity and the policy allowed, from the
    ledger's query columns: distinct (principal, action, resource), principals of the given
    types only (people are not flows)."""
    from sqlalchemy import select

    from trustplane.model import EntityRef
    from trustplane.store.tables import decisions

    kinds = set(principal_types)
    found: list[tuple[Any, str, Any]] = []
    query = (
        select(decisions.c.principal, decisions.c.action, decisions.c.resource)
        .where(decisions.c.kind == "decision", decisions.c.decision == "allow")
        .distinct()
    )
    with engine.connect() as conn:
        for principal, action, resource in conn.execute(query):
            who, what, on = (parse_column_entity(t) for t in (principal, action, resource))
            if who is None or what is None or on is None or who[0] not in kinds:
                continue
            found.append((EntityRef(*who), what[1], EntityRef(*on)))
    return found


class KnownUniverse:
    """The universe a serving process searches, rebuilt at most every `max_age` seconds and
    at once when the active bundle changes; each rebuild reads only the ledger rows appended
    since the previous one (`StoreEvidence`), so it is not done per search and never scans
    the whole ledger twice."""

    def __init__(
        self, engine: Any, bundle: Any, max_age: float = 10.0, clock: Any = time.monotonic
    ) -> None:
        self._engine = engine
        self._bundle = bundle  # () -> Bundle | None
        self._max_age = max_age
        self._clock = clock
        self._cached: tuple[str | None, float, Universe] | None = None
        self._evidence = StoreEvidence()
        self._lock = threading.Lock()

    def current(self) -> Universe:
        bundle = self._bundle()
        revision = bundle.revision if bundle is not None else None
        with self._lock:  # one refresh at a time; the others wait and share it
            now = self._clock()
            cached = self._cached
            if cached is not None and cached[0] == revision and now - cached[1] < self._max_age:
                return cached[2]
            if self._engine is not None:
                universe = self._evidence.refresh(self._engine).universe(bundle)
            else:
                universe = build(bundle)
            self._cached = (revision, now, universe)
        return universe
