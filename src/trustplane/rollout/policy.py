"""The bundle's `rollout.yaml`: per tier (a policy's `@tier` annotation; `default` for the rest),
the evidence an observe-mode policy needs before it is enforced. Compiled with the bundle (an
`ExtraFile`, like `trust.yaml`): a mistake refuses the bundle with its file and line, and the file
is hashed into the revision. Without it, `DEFAULT_GATES` apply.

Kept apart from the measurement (`gates.py`), which reads the store: loading a bundle — `trustplane
check`, `policy validate` — needs this parser and nothing of the store.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import yaml

from trustplane.decision.policy_bundle import Bundle, BundleProblem, ExtraFile, read_yaml
from trustplane.yaml_lines import key_node as _key
from trustplane.yaml_lines import value_node as _value

ROLLOUT_FILE = "rollout.yaml"


@dataclass(frozen=True, slots=True)
class TierGate:
    """What a policy of one tier must show before it is enforced."""

    min_days: float
    min_decisions: int
    min_labels: int
    max_false_positive: float  # on the Wilson upper bound
    min_attributable: float  # share of its would-denies by a named principal


DEFAULT_GATES: Mapping[str, TierGate] = MappingProxyType(
    {
        "0": TierGate(7, 100, 30, 0.05, 0.95),
        "1": TierGate(7, 100, 30, 0.05, 0.95),
        "default": TierGate(3, 20, 10, 0.10, 0.95),
    }
)
_GATE_KEYS = {
    "min_days": "a number of days, 0 or more",
    "min_decisions": "a whole number, 0 or more",
    "min_labels": "a whole number, 0 or more",
    "max_false_positive": "a fraction from 0 to 1",
    "min_attributable": "a fraction from 0 to 1",
}


@dataclass(frozen=True, eq=False)
class RolloutPolicy:
    tiers: Mapping[str, TierGate]
    declared: bool = False  # the bundle has rollout.yaml

    def gate(self, tier: str | None) -> TierGate:
        return self.tiers.get(tier or "default") or self.tiers["default"]


DEFAULT_POLICY = RolloutPolicy(DEFAULT_GATES)


def parse_rollout(text: str, problems: list[BundleProblem]) -> RolloutPolicy:
    """Compile rollout.yaml; every problem goes to `problems` with its line. A tier names only
    what it changes: the rest comes from that tier's defaults (or `default`'s)."""
    document = read_yaml(ROLLOUT_FILE, text, problems)
    if document is None:
        return DEFAULT_POLICY
    data, root = document.data or {}, document.node

    def problem(message: str, node: yaml.Node | None) -> None:
        line = None if node is None else int(node.start_mark.line) + 1
        problems.append(BundleProblem(ROLLOUT_FILE, message, line))

    if not isinstance(data, dict):
        problem("must be a mapping with `tiers`", root)
        return DEFAULT_POLICY
    for key in sorted(set(data) - {"tiers"}):
        problem(f"unknown key {key!r} (known: tiers)", _key(root, key))
    tiers = data.get("tiers")
    tiers_node = _value(root, "tiers")
    if tiers is None:
        return RolloutPolicy(DEFAULT_GATES, declared=True)
    if not isinstance(tiers, dict):
        problem("tiers: must map a tier (0, 1, ..., default) to its gate", tiers_node)
        return DEFAULT_POLICY
    gates = dict(DEFAULT_GATES)
    for name, item in tiers.items():
        tier = str(name)
        where = _value(tiers_node, name)
        if not re.fullmatch(r"\d+|default", tier):
            problem(f"tiers.{tier}: a tier is a number or `default`", _key(tiers_node, name))
            continue
        if not isinstance(item, dict):
            problem(f"tiers.{tier}: must be a mapping of {', '.join(_GATE_KEYS)}", where)
            continue
        base = asdict(gates.get(tier) or DEFAULT_GATES["default"])
        for key, value in item.items():
            if key not in _GATE_KEYS:
                known = ", ".join(_GATE_KEYS)
                problem(f"tiers.{tier}.{key}: unknown key (known: {known})", _key(where, key))
            elif not _valid(str(key), value):
                problem(f"tiers.{tier}.{key}: must be {_GATE_KEYS[key]}", _value(where, key))
            else:
                base[key] = value
        gates[tier] = TierGate(**base)
    return RolloutPolicy(MappingProxyType(gates), declared=True)


def _valid(key: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if key in ("min_decisions", "min_labels"):
        return isinstance(value, int) and value >= 0
    if key == "min_days":
        return value >= 0
    return 0 <= value <= 1


def _compile_rollout(
    text: str | None, entities: list[dict[str, Any]], problems: list[BundleProblem]
) -> RolloutPolicy:
    return DEFAULT_POLICY if text is None else parse_rollout(text, problems)


BUNDLE_FILES: tuple[ExtraFile, ...] = (ExtraFile(ROLLOUT_FILE, _compile_rollout),)
"""The bundle files the rollout plane reads; whoever loads bundles passes them (LoadOptions)."""


def rollout_policy(bundle: Bundle | None) -> RolloutPolicy:
    policy = None if bundle is None else bundle.extras.get(ROLLOUT_FILE)
    return policy if isinstance(policy, RolloutPolicy) else DEFAULT_POLICY
