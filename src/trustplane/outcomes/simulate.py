"""Compromise simulation: from a starting point (a stolen token, a rogue workload, a poisoned
pipeline), what the attacker reaches in the attack graph (outcomes/graph.py), with tiers, the
shortest multi-hop path to every tier-0 node, and how much service authorization blocks.

Lateral-movement resistance: over the (start, tier-0 target) pairs reachable in the *open*
graph (network and RBAC as they are, service authorization switched off), the share that the
*authorized* graph no longer reaches. 100 % means every tier-0 target the network and RBAC
would let the attacker reach is refused by policy; a tier-0 target reached through RBAC alone
counts as open whatever the policy says, since no service authorization stands on that path.
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from trustplane.errors import TrustplaneError
from trustplane.model import EntityRef
from trustplane.outcomes.graph import ACCESS, AttackGraph, reachable, sa_of_spiffe

_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.:-]+)\}")


class ScenarioError(TrustplaneError):
    """A starting point the estate does not know (no such principal, rule or SPIFFE ID)."""


@dataclass(frozen=True)
class Start:
    scenario: str  # stolen-token | rogue-workload | poisoned-pipeline
    name: str
    nodes: tuple[str, ...]
    principals: tuple[EntityRef, ...] = ()


def stolen_token(graph: AttackGraph, principal: EntityRef) -> Start:
    key = str(principal)
    if key not in graph.principals:
        known = ", ".join(sorted(graph.principals)[:8])
        raise ScenarioError(f"{key} is not a principal of this estate (known: {known}, ...)")
    return Start("stolen-token", key, (key,))


def rogue_workload(graph: AttackGraph, spiffe_id: str, workload_type: str) -> Start:
    """A workload that obtained `spiffe_id`: the principal the enforcement points would name
    (the entity whose `spiffe_id` it is, else the ID itself) and its Kubernetes account."""
    if not spiffe_id.startswith("spiffe://"):
        raise ScenarioError(f"{spiffe_id!r} is not a SPIFFE ID (spiffe://trust-domain/path)")
    nodes = [
        key
        for key, ref in graph.principals.items()
        if ref.id == spiffe_id or graph.labels.get(key) == spiffe_id
    ]
    principal = EntityRef(workload_type, spiffe_id)
    if not nodes:
        nodes = [str(principal)]
    sa = sa_of_spiffe(spiffe_id)
    if sa is not None and f"sa:{sa}" in graph.graph:
        nodes.append(f"sa:{sa}")
    return Start("rogue-workload", spiffe_id, tuple(nodes), (principal,))


def exchange_pattern(rule: Any) -> re.Pattern[str]:
    """The SPIFFE IDs a token-exchange rule can issue: each `{claim}` is the claim's value
    when the rule pins it to one exact value, else anything a forged claim could say."""

    def part(claim: str) -> str:
        accepted = rule.claims.get(claim)
        if isinstance(accepted, str) and not accepted.endswith("*"):
            return re.escape(accepted)
        if isinstance(accepted, str):
            return re.escape(accepted[:-1]) + ".*"
        return ".*"  # unpinned or a list: any of several (or any) values

    pieces = _PLACEHOLDER.split(rule.spiffe_id)  # text, claim, text, claim, ..., text
    out = [re.escape(p) if i % 2 == 0 else part(p) for i, p in enumerate(pieces)]
    return re.compile("^" + "".join(out) + "$")


def poisoned_pipeline(
    graph: AttackGraph, rule: Any, spiffe_ids: dict[str, str], workload_type: str
) -> Start:
    """A pipeline that satisfies `rule`'s claim conditions (a poisoned workflow on an accepted
    branch): every principal whose SPIFFE ID the rule can issue."""
    pattern = exchange_pattern(rule)
    nodes = sorted(key for key, spiffe in spiffe_ids.items() if pattern.match(spiffe))
    principals: tuple[EntityRef, ...] = ()
    if not nodes:
        principal = EntityRef(workload_type, rule.spiffe_id)
        nodes = [str(principal)]
        principals = (principal,)
    return Start("poisoned-pipeline", rule.name, tuple(nodes), principals)


@dataclass(frozen=True)
class Outcome:
    start: Start
    radius: list[dict[str, Any]]  # every node reached: what, tier, how
    paths: dict[str, list[dict[str, str]]]  # tier-0 target → hops
    open_targets: list[str]  # tier-0 targets reachable without service authorization
    blocked: list[str]  # ... that the policy blocks

    @property
    def resistance(self) -> float | None:
        return len(self.blocked) / len(self.open_targets) if self.open_targets else None

    def as_dict(self) -> dict[str, Any]:
        tiers: dict[str, int] = {}
        for row in self.radius:
            tiers[str(row["tier"])] = tiers.get(str(row["tier"]), 0) + 1
        return {
            "scenario": self.start.scenario,
            "start": self.start.name,
            "start_nodes": list(self.start.nodes),
            "blast_radius": {"count": len(self.radius), "by_tier": tiers, "reached": self.radius},
            "tier0_paths": self.paths,
            "lateral_movement": {
                "tier0_reachable_without_authz": len(self.open_targets),
                "blocked_by_authz": len(self.blocked),
                "blocked": self.blocked,
                "resistance": self.resistance,
            },
        }


def _target(node: str) -> str:
    return node.removeprefix(ACCESS)


def simulate(graph: AttackGraph, start: Start) -> Outcome:
    authorized = graph.authorized()
    held = reachable(authorized, start.nodes)
    radius: list[dict[str, Any]] = []
    for node in sorted(held):
        if node in start.nodes:
            continue
        incoming = [
            authorized[u][node].get("label", "") for u in authorized.predecessors(node) if u in held
        ]
        radius.append(
            {
                "node": _target(node),
                "how": "accessed" if node.startswith(ACCESS) else "held",
                "tier": graph.tier(node),
                "via": sorted(set(incoming))[:3],
            }
        )
    # What the attacker starts with is not a target: a stolen tier-0 token is already tier 0.
    tier0 = set(graph.tier0()) - set(start.nodes)
    reached_targets = {_target(n) for n in held if n in tier0}
    paths: dict[str, list[dict[str, str]]] = {}
    for target in sorted(reached_targets):
        best: list[str] | None = None
        for node in (target, ACCESS + target):
            if node not in authorized:
                continue
            for source in start.nodes:
                if source not in authorized:
                    continue
                try:
                    path = nx.shortest_path(authorized, source, node)
                except nx.NetworkXNoPath:
                    continue
                if best is None or len(path) < len(best):
                    best = path
        if best is not None:
            paths[target] = [
                {
                    "from": _target(u),
                    "to": _target(v),
                    "via": authorized[u][v].get("via", ""),
                    "how": authorized[u][v].get("label", ""),
                }
                for u, v in itertools.pairwise(best)
            ]
    open_reach = reachable(graph.graph, start.nodes)
    open_targets = sorted({_target(n) for n in open_reach if n in tier0})
    blocked = sorted(t for t in open_targets if t not in reached_targets)
    return Outcome(start, radius, paths, open_targets, blocked)


def resistance_of(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The estate's figure: blocked (start, tier-0 target) pairs over those open."""
    open_pairs = sum(len(o.open_targets) for o in outcomes)
    blocked = sum(len(o.blocked) for o in outcomes)
    return {
        "paths_without_authz": open_pairs,
        "blocked_by_authz": blocked,
        "resistance": blocked / open_pairs if open_pairs else None,
    }


# -- the picture --------------------------------------------------------------------------------

_COLOURS = {"cedar": "#1f77b4", "flow": "#2ca02c", "rbac": "#d62728", "identity": "#7f7f7f"}


def render_html(outcomes: Iterable[Outcome], title: str = "trustplane attack paths") -> str:
    """One self-contained HTML page (inline SVG, no script, no fetched asset): per scenario,
    the tier-0 paths laid out by hop, coloured by what each hop goes through."""
    sections = []
    for number, outcome in enumerate(outcomes):
        hops = [h for path in outcome.paths.values() for h in path]
        depth: dict[str, int] = {n: 0 for n in outcome.start.nodes}
        for path in outcome.paths.values():
            for index, hop in enumerate(path):
                depth.setdefault(hop["from"], index)
                depth[hop["to"]] = max(depth.get(hop["to"], 0), index + 1)
        columns: dict[int, list[str]] = {}
        for node, level in sorted(depth.items(), key=lambda item: (item[1], item[0])):
            columns.setdefault(level, []).append(node)
        position = {
            node: (20 + 260 * level, 30 + 44 * row)
            for level, nodes in columns.items()
            for row, node in enumerate(nodes)
        }
        width = 260 * (max(columns) + 1) + 40 if columns else 300
        height = 44 * max((len(v) for v in columns.values()), default=1) + 40
        shapes = []
        seen: set[tuple[str, str]] = set()
        for hop in hops:
            key = (hop["from"], hop["to"])
            if key in seen or hop["from"] not in position or hop["to"] not in position:
                continue
            seen.add(key)
            (x1, y1), (x2, y2) = position[hop["from"]], position[hop["to"]]
            colour = _COLOURS.get(hop["via"], "#000")
            shapes.append(
                f'<line x1="{x1 + 220}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" '
                f'stroke-width="2" marker-end="url(#arrow{number})">'
                f"<title>{html.escape(hop['via'])}: {html.escape(hop['how'])}</title></line>"
            )
        for node, (x, y) in position.items():
            fill = "#fdd" if node in outcome.paths else "#eef"
            shapes.append(
                f'<rect x="{x}" y="{y - 14}" width="220" height="28" rx="4" fill="{fill}" '
                f'stroke="#555"/><text x="{x + 6}" y="{y + 4}" font-size="11" '
                f'font-family="monospace">{html.escape(node[:34])}</text>'
            )
        figure = outcome.resistance
        sections.append(
            f"<h2>{html.escape(outcome.start.scenario)}: {html.escape(outcome.start.name)}</h2>"
            f"<p>reached {len(outcome.radius)} nodes; tier-0 reached: {len(outcome.paths)}; "
            f"blocked by service authorization: {len(outcome.blocked)} of "
            f"{len(outcome.open_targets)}"
            + (f" ({figure:.0%})" if figure is not None else "")
            + "</p>"
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<defs><marker id="arrow{number}" viewBox="0 0 10 10" refX="10" refY="5" '
            'markerWidth="6" markerHeight="6" orient="auto-start-reverse">'
            '<path d="M 0 0 L 10 5 L 0 10 z"/>'
            "</marker></defs>" + "".join(shapes) + "</svg>"
        )
    legend = " ".join(
        f'<span style="color:{c}">&#9632; {html.escape(k)}</span>' for k, c in _COLOURS.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "</head><body style='font-family:sans-serif'>"
        f"<h1>{html.escape(title)}</h1><p>{legend}; red boxes: tier-0 targets</p>"
        + "".join(sections)
        + "</body></html>"
    )


# -- putting an estate together ------------------------------------------------------------------


@dataclass
class Estate:
    """What a simulation reads: the bundle (and its evaluator), the manifests, the flows
    observed, the token-exchange rules, the context an attacker's requests carry."""

    bundle: Any  # decision.policy_bundle.Bundle
    evaluate: Any  # AccessRequest -> Decision
    k8s: Any  # posture.cluster.Estate
    flows: list[Any]  # outcomes.graph.Flow
    rules: list[Any]  # config.ExchangeRuleSettings
    context: dict[str, Any]
    extra_actions: tuple[str, ...] = ()

    @property
    def workload_type(self) -> str:
        routes = self.bundle.routes
        return routes.workload_type if routes is not None else "Service"

    def spiffe_ids(self) -> dict[str, str]:
        found = {}
        for entity in self.bundle.entities:
            value = (entity.get("attrs") or {}).get("spiffe_id")
            if isinstance(value, str):
                found[f'{entity["uid"]["type"]}::"{entity["uid"]["id"]}"'] = value
        return found


def attack_graph(estate: Estate, extra: Iterable[EntityRef] = ()) -> AttackGraph:
    from trustplane.outcomes.graph import build_graph
    from trustplane.outcomes.universe import bundle_parts

    _, actions = bundle_parts(estate.bundle)
    graph = build_graph(
        estate.bundle,
        estate.evaluate,
        estate.k8s,
        estate.context,
        [*actions, *estate.extra_actions],
        estate.flows,
        extra,
    )
    graph.labels.update(estate.spiffe_ids())
    return graph


def starts_for(
    estate: Estate, scenario: str | None, target: str | None
) -> tuple[AttackGraph, list[Start]]:
    """The graph and the starting points: one scenario (`scenario`, `target`), or with
    `scenario` None every principal, every workload SPIFFE ID and every exchange rule."""
    from trustplane.decision.requests import RequestError, parse_entity

    extra: list[EntityRef] = []
    if scenario == "rogue-workload" and target is not None:
        extra.append(EntityRef(estate.workload_type, target))
    if scenario == "poisoned-pipeline":
        for rule in estate.rules:
            if rule.name == target and not any(
                exchange_pattern(rule).match(s) for s in estate.spiffe_ids().values()
            ):
                extra.append(EntityRef(estate.workload_type, rule.spiffe_id))
    graph = attack_graph(estate, extra)
    if scenario == "stolen-token":
        assert target is not None
        try:
            principal = parse_entity(target, "PRINCIPAL")
        except RequestError as exc:
            raise ScenarioError(str(exc)) from None
        return graph, [stolen_token(graph, principal)]
    if scenario == "rogue-workload":
        assert target is not None
        return graph, [rogue_workload(graph, target, estate.workload_type)]
    if scenario == "poisoned-pipeline":
        rule = next((r for r in estate.rules if r.name == target), None)
        if rule is None:
            names = ", ".join(r.name for r in estate.rules) or "none configured"
            raise ScenarioError(
                f"no token-exchange rule named {target!r} (identity.exchange_rules: {names})"
            )
        return graph, [poisoned_pipeline(graph, rule, estate.spiffe_ids(), estate.workload_type)]
    starts = [stolen_token(graph, ref) for _, ref in sorted(graph.principals.items())]
    starts += [
        rogue_workload(graph, spiffe, estate.workload_type)
        for _, spiffe in sorted(estate.spiffe_ids().items())
        if sa_of_spiffe(spiffe) is not None
    ]
    starts += [
        poisoned_pipeline(graph, rule, estate.spiffe_ids(), estate.workload_type)
        for rule in estate.rules
    ]
    return graph, starts


def run(estate: Estate, scenario: str | None, target: str | None) -> dict[str, Any]:
    graph, starts = starts_for(estate, scenario, target)
    outcomes = [simulate(graph, start) for start in starts]
    return {
        "scenarios": [o.as_dict() for o in outcomes],
        "lateral_movement": resistance_of(outcomes),
        "graph": {
            "nodes": graph.graph.number_of_nodes(),
            "edges": graph.graph.number_of_edges(),
            "denied_edges": sum(
                1 for _, _, d in graph.graph.edges(data=True) if d.get("authz") == "deny"
            ),
        },
        "_outcomes": outcomes,
    }
