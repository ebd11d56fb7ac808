"""Checks that need several manifests at once, run by `trustplane scan` over everything it
scanned when the `lateral-movement` pack is selected.

The CEL engine reviews one object at a time (admission sees nothing else), so a rule such as
"this namespace has no default-deny NetworkPolicy" or "no NetworkPolicy selects this pod"
cannot be one of its rules: they are written here, with rule ids, severities and fixes like
the CEL rules (and like `pipelines.py`), and use the simulation's own reading of RBAC and
NetworkPolicy (`posture/cluster.py`), so the scan and the attack paths agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from trustplane.posture.cluster import allows, policy_types, read_estate, selected_by
from trustplane.posture.rules import Severity
from trustplane.posture.workloads import pod_of

PACK = "lateral-movement"


@dataclass(frozen=True, slots=True)
class EstateRule:
    id: str
    severity: Severity
    description: str
    fix: str


RULES = {
    r.id: r
    for r in (
        EstateRule(
            "rbac/secrets-cluster-wide",
            Severity.HIGH,
            "No subject reads secrets in every namespace: each secret holds a credential "
            "(service-account tokens among them).",
            "Bind the role with a RoleBinding in the namespaces that need it, to the secrets "
            "by name (resourceNames).",
        ),
        EstateRule(
            "network/namespace-default-deny",
            Severity.MEDIUM,
            "Every namespace denies ingress and egress by default (a NetworkPolicy selecting "
            "every pod, with policyTypes Ingress and Egress and no rules); what is allowed is "
            "then said one flow at a time.",
            "Add a NetworkPolicy with podSelector: {}, policyTypes: [Ingress, Egress] and no "
            "ingress or egress rules to the namespace.",
        ),
        EstateRule(
            "network/unselected-workload",
            Severity.MEDIUM,
            "Every workload is selected by a NetworkPolicy; a pod none selects accepts and "
            "opens any connection.",
            "Cover the workload with a NetworkPolicy (a namespace default-deny covers every "
            "pod in it).",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Located:
    """A manifest as scanned: the object, its file and line."""

    obj: dict[str, Any]
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class EstateFinding:
    rule: EstateRule
    file: str
    line: int
    message: str


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


def _ns(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def _default_deny(policy: dict[str, Any], direction: str) -> bool:
    spec = policy.get("spec") or {}
    key = "ingress" if direction == "Ingress" else "egress"
    return (
        spec.get("podSelector") in ({}, None)
        and direction in policy_types(policy)
        and not spec.get(key)
    )


def check(manifests: list[Located]) -> Iterator[EstateFinding]:
    objects = [m.obj for m in manifests]
    where = {id(m.obj): m for m in manifests}
    estate = read_estate(objects)
    # secrets readable cluster-wide: a ClusterRoleBinding to a role that reads secrets
    for grant in estate.grants:
        if grant.scope == "*" and allows(grant.rules, ("get", "list", "watch"), "secrets"):
            binding = next(
                (
                    m
                    for m in manifests
                    if m.obj.get("kind") == "ClusterRoleBinding" and _name(m.obj) == grant.binding
                ),
                None,
            )
            if binding is not None:
                kind, name = grant.subject
                yield EstateFinding(
                    RULES["rbac/secrets-cluster-wide"],
                    binding.file,
                    binding.line,
                    f"ClusterRoleBinding {grant.binding}: {kind} {name} reads secrets in every "
                    f"namespace (through {grant.role})",
                )
    # namespaces without default-deny ingress and egress
    workloads_by_ns: dict[str, list[Located]] = {}
    for m in manifests:
        if m.obj.get("kind") not in ("Namespace", "NetworkPolicy") and (
            (m.obj.get("metadata") or {}).get("namespace")
        ):
            workloads_by_ns.setdefault(_ns(m.obj), []).append(m)
    namespaces = {_name(m.obj): m for m in manifests if m.obj.get("kind") == "Namespace"}
    for namespace in sorted(set(namespaces) | set(workloads_by_ns)):
        policies = [p for p in estate.policies if _ns(p) == namespace]
        missing = [
            d for d in ("Ingress", "Egress") if not any(_default_deny(p, d) for p in policies)
        ]
        if not missing:
            continue
        anchor = namespaces.get(namespace) or workloads_by_ns[namespace][0]
        yield EstateFinding(
            RULES["network/namespace-default-deny"],
            anchor.file,
            anchor.line,
            f"namespace {namespace}: no default-deny NetworkPolicy for "
            f"{' and '.join(d.lower() for d in missing)}",
        )
    # workloads no policy selects (either direction)
    for m in manifests:
        if pod_of(m.obj) is None:
            continue
        workload = next(
            (
                w
                for w in estate.workloads
                if w.name == _name(m.obj) and w.namespace == _ns(m.obj) and w.kind == m.obj["kind"]
            ),
            None,
        )
        if workload is None:
            continue
        open_ways = [d for d in ("Ingress", "Egress") if not selected_by(estate, workload, d)]
        if open_ways:
            yield EstateFinding(
                RULES["network/unselected-workload"],
                where[id(m.obj)].file,
                where[id(m.obj)].line,
                f"{m.obj['kind']} {_name(m.obj)}: no NetworkPolicy selects its pods for "
                f"{' or '.join(d.lower() for d in open_ways)} (everything allowed)",
            )
