"""What Kubernetes manifests say about lateral movement: workloads (pods, their service
account and labels), RBAC (who can do what, and the escalations KubeHound names) and
NetworkPolicy reachability (which pods can open a connection to which).

Semantics kept deliberately to what manifests prove:
- a pod's identity is its service account (`default` when unnamed); its token is mounted
  unless `automountServiceAccountToken: false` (pod, else the account);
- RBAC: a RoleBinding grants its Role or ClusterRole in its namespace, a ClusterRoleBinding
  cluster-wide; `*` matches any verb, resource or API group; `resourceNames` narrow nothing
  here (a path that needs one named object is still a path);
- NetworkPolicy: a pod no policy selects for a direction allows that direction (Kubernetes'
  default allow); once selected, only peers a rule names are allowed (podSelector within the
  policy's namespace, namespaceSelector by namespace labels, both together as their
  intersection; an empty `from`/`to` list allows nothing, a rule without `from`/`to` allows
  every peer). Ports and ipBlock peers are not modelled: reachability is per pod pair.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trustplane.posture.workloads import pod_of

CLUSTER = "*"  # the scope of a ClusterRoleBinding


class ManifestError(ValueError):
    """A manifest file that cannot be read as YAML: names the file."""


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    kind: str
    labels: dict[str, str]
    service_account: str
    token_mounted: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Grant:
    """What one binding gives one subject: the role's rules, in `scope` (a namespace or `*`)."""

    subject: tuple[str, str]  # (kind, name) with kind ServiceAccount (ns/name), User, Group
    scope: str
    rules: tuple[dict[str, Any], ...]
    role: str
    binding: str


@dataclass
class Estate:
    """The manifests of an estate, read once."""

    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # name → labels
    workloads: list[Workload] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    automount_off: set[str] = field(default_factory=set)  # ns/sa with automount false
    objects: list[dict[str, Any]] = field(default_factory=list)

    def service_accounts(self, namespace: str | None = None) -> list[str]:
        """Every ns/name account the manifests name (declared, bound or used by a pod)."""
        found = {f"{w.namespace}/{w.service_account}" for w in self.workloads}
        for obj in self.objects:
            if obj.get("kind") == "ServiceAccount":
                found.add(f"{_ns(obj)}/{_name(obj)}")
        for grant in self.grants:
            if grant.subject[0] == "ServiceAccount":
                found.add(grant.subject[1])
        return sorted(a for a in found if namespace is None or a.split("/")[0] == namespace)


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _ns(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def load_objects(paths: Iterable[Path]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in paths:
        files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
        for file in files:
            try:
                documents = list(yaml.safe_load_all(file.read_text()))
            except (OSError, yaml.YAMLError) as exc:
                raise ManifestError(f"{file}: {exc}") from None
            for doc in documents:
                if isinstance(doc, dict) and doc.get("kind") == "List":
                    objects.extend(i for i in doc.get("items") or [] if isinstance(i, dict))
                elif isinstance(doc, dict) and doc.get("kind"):
                    objects.append(doc)
    return objects


def read_estate(objects: list[dict[str, Any]]) -> Estate:
    estate = Estate(objects=objects)
    roles: dict[tuple[str, str], tuple[dict[str, Any], ...]] = {}
    for obj in objects:
        kind = obj.get("kind")
        if kind == "Namespace":
            labels = dict((obj.get("metadata") or {}).get("labels") or {})
            estate.namespaces[_name(obj)] = labels
        elif kind in ("Role", "ClusterRole"):
            scope = _ns(obj) if kind == "Role" else CLUSTER
            rules = tuple(r for r in obj.get("rules") or [] if isinstance(r, dict))
            roles[(scope, _name(obj))] = rules
        elif kind == "ServiceAccount" and obj.get("automountServiceAccountToken") is False:
            estate.automount_off.add(f"{_ns(obj)}/{_name(obj)}")
        elif kind == "NetworkPolicy":
            estate.policies.append(obj)
    # cluster-admin is built in: a binding to it need not ship its definition.
    roles.setdefault(
        (CLUSTER, "cluster-admin"), ({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},)
    )
    for obj in objects:
        kind = obj.get("kind")
        if kind in ("RoleBinding", "ClusterRoleBinding"):
            ref = obj.get("roleRef") or {}
            scope = _ns(obj) if kind == "RoleBinding" else CLUSTER
            role_scope = _ns(obj) if ref.get("kind") == "Role" else CLUSTER
            rules = roles.get((role_scope, str(ref.get("name"))), ())
            for subject in obj.get("subjects") or []:
                if not isinstance(subject, dict):
                    continue
                skind, sname = str(subject.get("kind")), str(subject.get("name"))
                if skind == "ServiceAccount":
                    sname = f"{subject.get('namespace') or _ns(obj)}/{sname}"
                estate.grants.append(
                    Grant((skind, sname), scope, rules, str(ref.get("name")), _name(obj))
                )
        pod = pod_of(obj)
        if pod is not None:
            namespace = _ns(obj)
            account = str(pod.spec.get("serviceAccountName") or "default")
            mounted = pod.spec.get("automountServiceAccountToken")
            if mounted is None:
                mounted = f"{namespace}/{account}" not in estate.automount_off
            labels = {str(k): str(v) for k, v in (pod.metadata.get("labels") or {}).items()}
            estate.workloads.append(
                Workload(namespace, _name(obj), str(kind), labels, account, bool(mounted))
            )
            estate.namespaces.setdefault(namespace, {})
    for obj in objects:  # namespaced objects name theirs; cluster-scoped ones none
        named = (obj.get("metadata") or {}).get("namespace")
        if isinstance(named, str) and named:
            estate.namespaces.setdefault(named, {})
    for name, labels in estate.namespaces.items():
        labels.setdefault("kubernetes.io/metadata.name", name)
    return estate


# -- RBAC ---------------------------------------------------------------------------------------


def allows(rules: Iterable[dict[str, Any]], verbs: Iterable[str], resource: str) -> bool:
    """Whether any rule grants any of `verbs` on `resource` (`pods/exec` for a subresource)."""
    wanted = set(verbs)
    for rule in rules:
        rule_verbs = set(rule.get("verbs") or [])
        resources = set(rule.get("resources") or [])
        if not ("*" in rule_verbs or rule_verbs & wanted):
            continue
        if "*" in resources or resource in resources:
            return True
    return False


ESCALATIONS = (
    # (label, verbs, resource) → what the holder reaches
    ("create pods + mount SA token", ("create",), "pods"),
    ("exec into pods", ("create", "get"), "pods/exec"),
    ("attach to pods", ("create", "get"), "pods/attach"),
    ("read secrets", ("get", "list", "watch"), "secrets"),
)


def is_cluster_admin(rules: Iterable[dict[str, Any]]) -> bool:
    rules = list(rules)
    return allows(rules, ("*",), "*") and any("*" in (r.get("verbs") or []) for r in rules)


def privilege_escalation(rules: Iterable[dict[str, Any]]) -> str | None:
    """The escalate/bind/impersonate verb a role holds, or `*` for full admin, else None."""
    rules = list(rules)
    if is_cluster_admin(rules):
        return "cluster-admin (* on *)"
    for verb, resources in (
        ("escalate", ("roles", "clusterroles")),
        ("bind", ("roles", "clusterroles", "rolebindings", "clusterrolebindings")),
        ("impersonate", ("users", "groups", "serviceaccounts")),
    ):
        for resource in resources:
            for rule in rules:
                if verb in (rule.get("verbs") or []) and (
                    resource in (rule.get("resources") or [])
                    or "*" in (rule.get("resources") or [])
                ):
                    return f"{verb} {resource}"
    return None


# -- NetworkPolicy ------------------------------------------------------------------------------


def _selects(selector: Any, labels: dict[str, str]) -> bool:
    """A LabelSelector: `{}` selects everything; matchLabels and matchExpressions (In, NotIn,
    Exists, DoesNotExist) all must hold."""
    if not isinstance(selector, dict):
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(str(key)) != str(value):
            return False
    for expression in selector.get("matchExpressions") or []:
        key, op = str(expression.get("key")), expression.get("operator")
        values = [str(v) for v in expression.get("values") or []]
        present = key in labels
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy.get("spec") or {}
    declared = spec.get("policyTypes")
    if declared:
        return [str(t) for t in declared]
    return ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]


def selected_by(estate: Estate, workload: Workload, direction: str) -> list[dict[str, Any]]:
    """The policies that select `workload` for `direction` (Ingress or Egress)."""
    return [
        p
        for p in estate.policies
        if _ns(p) == workload.namespace
        and direction in policy_types(p)
        and _selects((p.get("spec") or {}).get("podSelector", {}), workload.labels)
    ]


def _peer_allows(estate: Estate, policy: dict[str, Any], peers: Any, other: Workload) -> bool:
    if peers is None:  # a rule without from/to: every peer
        return True
    for peer in peers:
        if not isinstance(peer, dict):
            continue
        pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
        if pod_sel is None and ns_sel is None:
            continue  # ipBlock only: outside the cluster, not modelled
        if ns_sel is not None:
            ns_ok = _selects(ns_sel, estate.namespaces.get(other.namespace, {}))
        else:
            ns_ok = other.namespace == _ns(policy)
        if ns_ok and (pod_sel is None or _selects(pod_sel, other.labels)):
            return True
    return False


def _direction_allows(estate: Estate, workload: Workload, other: Workload, direction: str) -> bool:
    policies = selected_by(estate, workload, direction)
    if not policies:
        return True  # default allow
    key, peer_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in policies:
        for rule in (policy.get("spec") or {}).get(key) or []:
            if isinstance(rule, dict) and _peer_allows(estate, policy, rule.get(peer_key), other):
                return True
    return False


def reaches(estate: Estate, source: Workload, target: Workload) -> bool:
    """Whether `source` may open a connection to `target`: its egress and their ingress."""
    return _direction_allows(estate, source, target, "Egress") and _direction_allows(
        estate, target, source, "Ingress"
    )
