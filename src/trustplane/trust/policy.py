"""The bundle's `trust.yaml`: how much each signal weighs, where the levels start, and which
signals count (`enforce`) or are only computed and recorded (`observe`).

It is compiled with the bundle (an `ExtraFile`, like governance's `access.yaml`), so a mistake
refuses the bundle with its file and line, and it is hashed into the bundle's revision. A
bundle without it gets `DEFAULT_POLICY`: the authentication signals observed, nothing counted,
and no `context.trust` for Cedar (its schema need not know the trust plane).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from trustplane.decision.policy_bundle import (
    Bundle,
    BundleProblem,
    ExtraFile,
    read_yaml,
    schema_without_comments,
)
from trustplane.trust.authentication import AuthenticationSignals
from trustplane.trust.behaviour import BehaviourSignals
from trustplane.trust.device import DeviceSignals
from trustplane.trust.network import NetworkSignals
from trustplane.trust.signals import Provider
from trustplane.trust.travel import TravelSignals
from trustplane.trust.workload import WorkloadSignals
from trustplane.yaml_lines import key_node as _key
from trustplane.yaml_lines import node_line as _line
from trustplane.yaml_lines import value_node as _value

TRUST_FILE = "trust.yaml"
LEVELS = ("low", "medium", "high", "critical")
DEFAULT_THRESHOLDS = (("medium", 25), ("high", 50), ("critical", 80))
_TOP_KEYS = frozenset({"levels", "signals"})
_RULE_KEYS = frozenset({"weight", "mode", "on_error"})
MODES = ("enforce", "observe")
ON_ERROR = {"max": 1.0, "zero": 0.0}  # the value a failed signal takes: fail closed, or not


def signal_catalog(providers: tuple[type[Provider], ...]) -> dict[str, Mapping[str, Any]]:
    """Every signal a provider can compute → its tunable parameters with their defaults."""
    return {
        name: provider.params.get(name, {}) for provider in providers for name in provider.names
    }


# The providers whose signals trust.yaml may name (the assessor runs instances of them).
KNOWN_PROVIDERS: tuple[type[Provider], ...] = (
    AuthenticationSignals,
    NetworkSignals,
    TravelSignals,
    DeviceSignals,
    WorkloadSignals,
    BehaviourSignals,
)


def _constraints() -> tuple[dict[str, Mapping[str, tuple[str, ...]]], dict[str, tuple[str, ...]]]:
    """Per signal: the list parameters whose items must be one of a set (`choices`), and the
    number parameters that are fractions from 0 to 1 (`fractions`), as providers declare."""
    choices: dict[str, Mapping[str, tuple[str, ...]]] = {}
    fractions: dict[str, tuple[str, ...]] = {}
    for provider in KNOWN_PROVIDERS:
        choices.update(getattr(provider, "choices", {}))
        fractions.update(getattr(provider, "fractions", {}))
    return choices, fractions


CHOICES, FRACTIONS = _constraints()


@dataclass(frozen=True, slots=True)
class SignalRule:
    name: str
    weight: int  # points at value 1.0; negative lowers the score (a corporate network)
    enforce: bool  # counted in the score (and seen by Cedar) or only recorded
    on_error: float  # the value taken when the provider fails
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)  # hashed by identity: the assessor memoises per policy
class TrustPolicy:
    rules: Mapping[str, SignalRule]
    thresholds: tuple[tuple[str, int], ...] = DEFAULT_THRESHOLDS
    declared: bool = False  # the bundle has trust.yaml: Cedar gets context.trust
    _params: Mapping[str, Mapping[str, Any]] = field(init=False, repr=False)

    def level(self, score: int) -> str:
        level = "low"
        for name, start in self.thresholds:
            if score >= start:
                level = name
        return level

    def params(self) -> Mapping[str, Mapping[str, Any]]:
        return self._params

    def __post_init__(self) -> None:
        params = {name: rule.params for name, rule in self.rules.items() if rule.params}
        object.__setattr__(self, "_params", MappingProxyType(params))


DEFAULT_WEIGHTS = {
    "mfa_strength": 20,
    "phishing_resistance": 10,
    "auth_age": 15,
    "token_age": 10,
    "token_lifetime": 5,
}
DEFAULT_POLICY = TrustPolicy(
    MappingProxyType(
        {name: SignalRule(name, weight, False, 1.0) for name, weight in DEFAULT_WEIGHTS.items()}
    )
)


def parse_trust(text: str, problems: list[BundleProblem]) -> TrustPolicy:
    """Compile trust.yaml; every problem goes to `problems` with its line."""
    document = read_yaml(TRUST_FILE, text, problems)
    if document is None:
        return DEFAULT_POLICY
    data = document.data or {}
    if not isinstance(data, dict):
        problems.append(BundleProblem(TRUST_FILE, "must be a mapping", _line(document.node)))
        return DEFAULT_POLICY
    root = document.node

    def problem(message: str, node: yaml.Node | None) -> None:
        problems.append(BundleProblem(TRUST_FILE, message, _line(node)))

    for key in sorted(set(data) - _TOP_KEYS):
        problem(f"unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})", _key(root, key))
    thresholds = _thresholds(data.get("levels"), _value(root, "levels"), problem)
    catalog = signal_catalog(KNOWN_PROVIDERS)
    signals = data.get("signals")
    signals_node = _value(root, "signals")
    rules: dict[str, SignalRule] = {}
    if signals is None:
        problem("signals: missing (name each signal the score counts or observes)", root)
    elif not isinstance(signals, dict):
        problem("signals: must be a mapping of signal name → {weight, mode, ...}", signals_node)
    else:
        for name, item in signals.items():
            where = _key(signals_node, name)
            if name not in catalog:
                problem(
                    f"signals.{name}: unknown signal (known: {', '.join(sorted(catalog))})", where
                )
                continue
            rule = _rule(str(name), item, catalog[name], _value(signals_node, name), problem)
            if rule is not None:
                rules[str(name)] = rule
    return TrustPolicy(MappingProxyType(rules), thresholds, declared=True)


def _thresholds(value: Any, node: yaml.Node | None, problem: Any) -> tuple[tuple[str, int], ...]:
    if value is None:
        return DEFAULT_THRESHOLDS
    if not isinstance(value, dict):
        problem("levels: must map medium/high/critical to the score where each starts", node)
        return DEFAULT_THRESHOLDS
    found: list[tuple[str, int]] = []
    for name in value:
        if name not in LEVELS[1:]:
            problem(
                f"levels.{name}: unknown level (known: medium, high, critical)", _key(node, name)
            )
    for name in LEVELS[1:]:
        start = value.get(name, dict(DEFAULT_THRESHOLDS)[name])
        if not _is_int(start) or not 1 <= start <= 100:
            problem(f"levels.{name}: must be a whole number from 1 to 100", _value(node, name))
            return DEFAULT_THRESHOLDS
        found.append((name, int(start)))
    starts = [start for _, start in found]
    if starts != sorted(starts) or len(set(starts)) != len(starts):
        problem("levels: medium < high < critical is required", node)
        return DEFAULT_THRESHOLDS
    return tuple(found)


def _rule(
    name: str, item: Any, defaults: Mapping[str, Any], node: yaml.Node | None, problem: Any
) -> SignalRule | None:
    if not isinstance(item, dict):
        problem(f"signals.{name}: must be a mapping with at least `weight`", node)
        return None
    ok = True
    for key in sorted(set(item) - _RULE_KEYS - set(defaults)):
        known = ", ".join(sorted(_RULE_KEYS | set(defaults)))
        problem(f"signals.{name}.{key}: unknown key (known: {known})", _key(node, key))
        ok = False
    weight = item.get("weight")
    if not isinstance(weight, int) or isinstance(weight, bool) or not -100 <= weight <= 100:
        problem(
            f"signals.{name}.weight: must be a whole number from -100 to 100",
            _value(node, "weight") or node,
        )
        ok = False
        weight = 0
    mode = item.get("mode", "enforce")
    if mode not in MODES:
        problem(
            f"signals.{name}.mode: must be enforce or observe, not {mode!r}", _value(node, "mode")
        )
        ok = False
    on_error = item.get("on_error", "max")
    if on_error not in ON_ERROR:
        problem(
            f"signals.{name}.on_error: must be max (fail closed) or zero, not {on_error!r}",
            _value(node, "on_error"),
        )
        ok = False
    params: dict[str, Any] = {}
    for key, default in defaults.items():
        if key not in item:
            continue
        value = item[key]
        if not _same_kind(value, default):
            kind = "a list" if isinstance(default, list) else "a number"
            problem(
                f"signals.{name}.{key}: must be {kind} (default {default!r})", _value(node, key)
            )
            ok = False
        elif isinstance(value, int | float) and value < 0:
            problem(f"signals.{name}.{key}: must not be negative", _value(node, key))
            ok = False
        elif key in FRACTIONS.get(name, ()) and value > 1:
            problem(f"signals.{name}.{key}: must be from 0 to 1", _value(node, key))
            ok = False
        elif isinstance(value, list) and key in CHOICES.get(name, {}):
            allowed = CHOICES[name][key]
            wrong = [v for v in value if v not in allowed]
            if wrong:
                problem(
                    f"signals.{name}.{key}: unknown {', '.join(map(repr, wrong))} "
                    f"(known: {', '.join(allowed)})",
                    _value(node, key),
                )
                ok = False
            else:
                params[key] = value
        else:
            params[key] = value
    if not ok:
        return None
    return SignalRule(name, weight, mode == "enforce", ON_ERROR[on_error], MappingProxyType(params))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if isinstance(default, str):
        return isinstance(value, str)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compile_trust(
    text: str | None, entities: list[dict[str, Any]], problems: list[BundleProblem]
) -> TrustPolicy:
    return DEFAULT_POLICY if text is None else parse_trust(text, problems)


BUNDLE_FILES: tuple[ExtraFile, ...] = (ExtraFile(TRUST_FILE, _compile_trust),)
"""The bundle files the trust plane reads; whoever loads bundles passes them (LoadOptions)."""


_TRUST_CONTEXT = re.compile(r"\btype\s+TrustContext\s*=\s*\{([^{}]*)\}")
_OPTIONAL_SIGNALS = re.compile(r"(?:^|[\s,{])signals\s*\?\s*:")


def signals_optional(schema_text: str) -> bool:
    """Whether the bundle's schema declares the trust fragment's `signals` optional
    (`type TrustContext = { …, signals?: TrustSignals }`, docs/trust.md): then Cedar's view
    may leave it out when no signal moved the score. Anything else, including a schema that
    names the record differently, keeps `signals` in every request, which every fragment
    accepts."""
    found = _TRUST_CONTEXT.search(schema_without_comments(schema_text))
    return found is not None and _OPTIONAL_SIGNALS.search(found.group(1)) is not None


def trust_policy(bundle: Bundle | None) -> TrustPolicy:
    """The bundle's compiled trust.yaml (DEFAULT_POLICY when it has none, or no bundle)."""
    policy = None if bundle is None else bundle.extras.get(TRUST_FILE)
    return policy if isinstance(policy, TrustPolicy) else DEFAULT_POLICY
