"""Rule packs shipped as package data (`posture/packs/*.yaml`), and pack selections such as
`pss-restricted@v1.29` (a pack at a Kubernetes minor version, like PSA's `enforce-version`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from trustplane.config import AdmissionModes, AdmissionSettings, ConfigError
from trustplane.posture.engine import Selected, select
from trustplane.posture.rules import Mode, Rule, RuleError, load_rules, minor


@dataclass(frozen=True, slots=True)
class Pack:
    name: str
    description: str
    rules: tuple[Rule, ...]  # its own rules after those of the packs it includes


@dataclass(frozen=True, slots=True)
class PackRef:
    """A pack at a version: `name` or `name@latest` or `name@v1.N`."""

    name: str
    version: int | None  # None: latest

    @classmethod
    def parse(cls, text: str) -> PackRef:
        name, _, version = text.strip().partition("@")
        if name not in pack_names():
            known = ", ".join(pack_names())
            raise ValueError(f"unknown rule pack {name!r} (shipped: {known})")
        if version in ("", "latest"):
            return cls(name, None)
        return cls(name, minor(version))

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@v1.{self.version}"


def _pack_dir() -> Path:
    return Path(str(resources.files("trustplane.posture") / "packs"))


@functools.cache
def _index() -> dict[str, dict[str, object]]:
    data = yaml.safe_load((_pack_dir() / "index.yaml").read_text())
    assert isinstance(data, dict)
    return data


def pack_names() -> list[str]:
    return sorted(_index())


@functools.cache
def load_pack(name: str) -> Pack:
    """A shipped pack with its includes; a broken shipped file raises RuleError."""
    entry = _index().get(name)
    if entry is None:
        raise KeyError(name)
    rules: list[Rule] = []
    includes = entry.get("includes") or []
    assert isinstance(includes, list)
    for included in includes:
        rules.extend(load_pack(str(included)).rules)
    path = _pack_dir() / f"{name}.yaml"
    rules.extend(load_rules(path.read_text(), f"packs/{path.name}"))
    return Pack(name, str(entry.get("description", "")), tuple(rules))


def load_rule_file(path: Path) -> list[Rule]:
    """Rules from an operator's own file (same format as the shipped packs)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RuleError([f"{path}: cannot read: {exc.strerror}"]) from None
    return load_rules(text, str(path))


def selection(refs: list[tuple[PackRef, Mode]]) -> list[Selected]:
    """The rules of several packs at their versions and modes; a rule in more than one keeps
    its strongest mode (a namespace that enforces baseline and warns restricted enforces the
    baseline rules), and is evaluated once."""
    chosen: dict[str, Selected] = {}
    for ref, mode in refs:
        for item in select(load_pack(ref.name).rules, ref.version, mode):
            current = chosen.get(item.rule.id)
            if current is None or item.mode.strength > current.mode.strength:
                chosen[item.rule.id] = item
    return list(chosen.values())


def shipped_rule_ids() -> set[str]:
    return {rule.id for name in pack_names() for rule in load_pack(name).rules}


def check_admission_settings(admission: AdmissionSettings) -> None:
    """Refuse admission settings the engine cannot use (an unknown pack, a rule file that does
    not compile, an exemption for a rule nobody ships), naming the setting; the server runs this
    before it listens, and the webhook before it is built."""
    problems: list[str] = []
    modes: dict[str, AdmissionModes] = {"admission": admission}
    modes.update({f"admission.namespaces.{n}": m for n, m in admission.namespaces.items()})
    for where, mode in modes.items():
        for kind in ("enforce", "warn", "audit"):
            for item in getattr(mode, kind):
                try:
                    PackRef.parse(item)
                except ValueError as exc:
                    problems.append(f"{where}.{kind}: {exc}")
    for path in admission.rule_files:
        try:
            load_rule_file(path)
        except RuleError as exc:
            problems.append("admission.rule_files: " + "; ".join(exc.problems))
    known = shipped_rule_ids() if admission.exemptions else set()
    for item in admission.exemptions:
        if item.rule not in known:
            problems.append(f"admission.exemptions: exemption for unknown rule {item.rule!r}")
    if problems:
        raise ConfigError("; ".join(problems))
