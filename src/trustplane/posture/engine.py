"""Evaluate selected rules against Kubernetes objects: the one engine behind admission and scan.

Variables every expression sees:

- `object`: the whole object under review (a Deployment, a Pod, a ConfigMap …), and
  `objectMetadata`, its own metadata;
- `kind`, `namespace`: its kind and namespace (`""` when it has none);
- for rules matching `Pod` (pods wherever they hide): `metadata` and `spec` of the pod (the pod
  template for a workload) and `containers`: every init, regular and ephemeral container;
- `params`: values the operator configures for a pack (approved registries, …).

Null values are dropped before evaluation, as the API server does when it decodes an object, so
`has(x.f)` means "set"; YAML timestamps become the strings kubectl would send. Before any rule
runs, every field the shipped rules read is checked for its type (`posture/shape.py`): an object
the engine cannot read completely — a string where the pod's metadata belongs, a privileged
flag that is not a boolean, a value CEL cannot hold — is not reviewed by guesswork. `evaluate`
reports it as a failing finding of every rule that applies (what `trustplane scan` shows);
with `strict=True` it raises `Unreadable` naming each field (the admission webhook refuses the
object with that). An expression that fails at run time is a violation too (fail closed); a
field it reads that is not set is named by its path in the object.

Turning Python values into CEL values is most of the cost of a review (about 0.7 ms per copy of
a 10-container pod), so only the variables some selected rule names are built, once per object.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cel

from trustplane.posture.functions import CUSTOM_FUNCTIONS, SERVICE_FUNCTIONS
from trustplane.posture.rules import Exemption, Mode, Rule, Severity, Variant
from trustplane.posture.shape import problems
from trustplane.posture.workloads import POD_PATHS, PodView, pod_of


class Unreadable(Exception):
    """The object cannot be read completely: `problems` name each field and what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Selected:
    """A rule as it applies in one evaluation: the variant for the version, the mode."""

    rule: Rule
    variant: Variant
    mode: Mode


@dataclass(frozen=True, slots=True)
class Finding:
    rule_id: str
    check: str | None
    severity: Severity
    mode: Mode
    message: str
    fix: str
    path: str  # where in the object the rule looked ("spec.template.spec" for a Deployment)
    offenders: tuple[str, ...] = ()
    error: bool = False  # the rule could not be evaluated (counted as a violation)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule_id,
            "check": self.check,
            "severity": self.severity.label,
            "mode": self.mode.value,
            "message": self.message,
            "fix": self.fix,
            "path": self.path,
            "offenders": list(self.offenders),
            "error": self.error,
        }


def select(rules: Iterable[Rule], version: int | None, cap: Mode = Mode.ENFORCE) -> list[Selected]:
    """The rules in force at Kubernetes minor `version` (None: latest), each rule's mode capped
    by `cap` (a namespace in `warn` turns enforce rules into warnings)."""
    out = []
    for rule in rules:
        variant = rule.variant(version)
        if variant is not None:
            out.append(Selected(rule, variant, rule.mode.weakest(cap)))
    return out


class Engine:
    def __init__(
        self,
        selected: Iterable[Selected],
        params: Mapping[str, Any] | None = None,
        exemptions: Mapping[str, Sequence[Exemption]] | None = None,
        functions: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        """`exemptions`: more exemptions by rule id (the operator's, beside the rule file's);
        `functions`: implementations of SERVICE_FUNCTIONS. A rule calling a service function
        not given here is left out, and named in `skipped` with what it needs."""
        self._functions = {**CUSTOM_FUNCTIONS, **(functions or {})}
        self.skipped: dict[str, str] = {}
        kept: list[Selected] = []
        for item in selected:
            missing = [
                SERVICE_FUNCTIONS[name]
                for name in item.variant.program.functions()
                if name in SERVICE_FUNCTIONS and name not in self._functions
            ]
            if missing:
                self.skipped[item.rule.id] = missing[0]
            else:
                kept.append(item)
        self.selected = kept
        self._params = dict(params or {})
        self._exemptions = {k: tuple(v) for k, v in (exemptions or {}).items()}
        self._pod_rules = [s for s in self.selected if s.rule.matches_pods]
        self._by_kind: dict[str, list[Selected]] = {}
        for s in self.selected:
            for kind in s.rule.kinds - {"Pod"}:
                self._by_kind.setdefault(kind, []).append(s)
        self._pod_names: set[str] = set()
        for s in self._pod_rules:
            self._pod_names.update(s.variant.program.variables())
        # `spec` without its container lists when no rule can reach them through `spec` (they
        # are in `containers`): the lists are most of a pod, and converting them twice doubles
        # the cost of a review. What a rule can observe is the same either way.
        self._full_spec = any(
            _reaches_container_lists(s.variant.program.source) for s in self._pod_rules
        )

    def evaluate(
        self,
        obj: Mapping[str, Any],
        namespace: str | None = None,
        today: dt.date | None = None,
        *,
        strict: bool = False,
    ) -> list[Finding]:
        """Every violation in `obj` (an empty list: compliant). An object the engine cannot
        read completely fails every rule that applies to its kind, or, with `strict`, raises
        `Unreadable` whether or not any rule applies."""
        today = today or dt.datetime.now(dt.UTC).date()
        clean: dict[str, Any] = _plain(dict(obj))
        unreadable = problems(clean)
        if unreadable:
            return self._unreadable(clean, unreadable, strict)
        kind = str(clean["kind"])
        metadata = clean.get("metadata") or {}
        namespace = namespace if namespace is not None else str(metadata.get("namespace", ""))
        findings: list[Finding] = []
        variables: dict[str, Any] = {
            "kind": kind,
            "namespace": namespace,
            "params": self._params,
            "objectMetadata": metadata,
        }
        direct = self._by_kind.get(kind, [])
        pod = pod_of(clean)
        pod_rules = self._pod_rules if pod is not None else []
        if not direct and not pod_rules:
            return findings
        if direct or "object" in self._pod_names:
            variables["object"] = clean
        labels = _labels(metadata)
        if pod is not None:
            names = self._pod_names
            if "metadata" in names:
                variables["metadata"] = pod.metadata
            if "spec" in names:
                variables["spec"] = pod.spec if self._full_spec else _without_containers(pod.spec)
            if "containers" in names:
                variables["containers"] = pod.containers()
            labels = {**_labels(pod.metadata), **labels}
        try:
            context = cel.Context(variables, functions=self._functions)
        except Exception as exc:  # a value CEL cannot represent: every rule fails closed
            return self._unreadable(clean, [f"object: cannot be read: {exc}"], strict)
        reader = _Reader(clean, pod, self._params)
        for selected in direct:
            self._run(selected, context, "", namespace, labels, today, findings, reader)
        if pod is not None:
            for selected in pod_rules:
                self._run(
                    selected, context, pod.spec_path, namespace, labels, today, findings, reader
                )
        return findings

    def _unreadable(self, obj: dict[str, Any], found: list[str], strict: bool) -> list[Finding]:
        if strict:
            raise Unreadable(found)
        kind = obj.get("kind")
        reason = "rule could not be evaluated: the object cannot be read: " + "; ".join(found)
        direct = self._by_kind.get(kind, []) if isinstance(kind, str) else []
        path = POD_PATHS.get(kind) if isinstance(kind, str) else None
        findings = [_finding(s, "", reason) for s in direct]
        if path is not None:
            spec_path = ".".join((*path, "spec"))
            findings.extend(_finding(s, spec_path, reason) for s in self._pod_rules)
        return findings

    def _run(
        self,
        selected: Selected,
        context: cel.Context,
        path: str,
        namespace: str,
        labels: dict[str, str],
        today: dt.date,
        findings: list[Finding],
        reader: _Reader,
    ) -> None:
        rule = selected.rule
        exemptions = (*rule.exemptions, *self._exemptions.get(rule.id, ()))
        if any(e.applies(namespace, labels, today) for e in exemptions):
            return
        try:
            result = selected.variant.program.execute(context)
        except Exception as exc:  # the library raises KeyError, TypeError, RuntimeError …
            detail = reader.explain(exc, selected.variant.program.source)
            findings.append(_finding(selected, path, f"rule could not be evaluated: {detail}"))
            return
        if result is True or (isinstance(result, list) and not result):
            return
        if result is False:
            offenders: tuple[str, ...] = ()
        elif isinstance(result, list):
            offenders = tuple(str(item) for item in result)
        else:
            detail = f"rule could not be evaluated: expression gave {type(result).__name__}"
            findings.append(_finding(selected, path, detail))
            return
        message = selected.variant.message
        quoted = ", ".join(f'"{o}"' for o in offenders)
        message = message.replace("{offenders}", quoted).replace("{count}", str(len(offenders)))
        findings.append(
            Finding(
                rule.id,
                rule.check,
                rule.severity,
                selected.mode,
                message,
                rule.fix,
                path,
                offenders,
            )
        )


def _finding(selected: Selected, path: str, message: str) -> Finding:
    rule = selected.rule
    return Finding(
        rule.id, rule.check, rule.severity, selected.mode, message, rule.fix, path, error=True
    )


CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")


def _reaches_container_lists(source: str) -> bool:
    compact = "".join(source.split())
    return "spec[" in compact or any(f"spec.{key}" in compact for key in CONTAINER_LISTS)


def _without_containers(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in CONTAINER_LISTS}


def _labels(metadata: Mapping[str, Any]) -> dict[str, str]:
    labels = metadata.get("labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date):  # and datetime
        return value.isoformat()
    return value


_COMPREHENSION = re.compile(
    r"([A-Za-z_][\w.]*)\s*\.\s*(?:all|exists|exists_one|map|filter)\(\s*([A-Za-z_]\w*)\s*,"
)
Node = tuple[str, Any]  # where a value sits in the object ("object.spec.containers[0]"), it


class _Reader:
    """Names the field behind a rule's run-time error: CEL reports a field that is not set as
    `KeyError('name')`; the rule's source says which selections end in that field, and the
    object says where one of them is missing (`object.spec.initContainers[1].name`)."""

    def __init__(self, obj: dict[str, Any], pod: PodView | None, params: dict[str, Any]) -> None:
        self._roots: dict[str, list[Node]] = {
            "object": [("object", obj)],
            "objectMetadata": [("object.metadata", obj.get("metadata") or {})],
            "params": [("params", params)],
        }
        if pod is not None:
            base = ".".join(("object", *pod.path))
            self._roots["metadata"] = [(f"{base}.metadata", pod.metadata)]
            self._roots["spec"] = [(f"{base}.spec", pod.spec)]
            self._containers = [
                (f"{base}.spec.{key}[{i}]", item)
                for key in ("initContainers", "containers", "ephemeralContainers")
                for i, item in enumerate(pod.spec.get(key) or [])
            ]
        else:
            self._containers = []

    def explain(self, exc: Exception, source: str) -> str:
        if not isinstance(exc, KeyError) or not exc.args or not isinstance(exc.args[0], str):
            return repr(exc)
        key = exc.args[0]
        binds = {var: coll for coll, var in _COMPREHENSION.findall(source)}
        name = re.escape(key)
        pattern = rf"([A-Za-z_][\w.]*?)\s*(?:\.\s*{name}\b|\[\s*[\"']{name}[\"']\s*\])"
        selections = [m.group(1) for m in re.finditer(pattern, source)]
        for selection in selections:
            for path, value in self._nodes(selection, binds, 0):
                if isinstance(value, dict) and key not in value:
                    return f"{path}.{key} is not set (the rule reads {selection}.{key} unguarded)"
        return f"the field {key!r} it reads is not set (read without has())"

    def _nodes(self, expr: str, binds: dict[str, str], depth: int) -> list[Node]:
        head, *steps = [part.strip() for part in expr.split(".")]
        if head == "containers":
            nodes = list(self._containers)
        elif head in self._roots:
            nodes = list(self._roots[head])
        elif binds.get(head, "").strip() == "containers":
            nodes = list(self._containers)
        elif head in binds and depth < 8:  # a comprehension's variable: each element
            nodes = [
                (f"{path}[{i}]", item)
                for path, value in self._nodes(binds[head], binds, depth + 1)
                if isinstance(value, list)
                for i, item in enumerate(value)
            ]
        else:
            return []
        for step in steps:
            nodes = [
                (f"{p}.{step}", v[step]) for p, v in nodes if isinstance(v, dict) and step in v
            ]
        return nodes
