"""The attack graph: who can reach what, joining three sources in one networkx DiGraph.

Nodes are what an attacker can hold (a Cedar principal such as `Service::"checkout"`, a
Kubernetes service account `sa:ns/name`, a pod `pod:ns/name`, a namespace's secrets
`secrets:ns`, `cluster-admin`) or touch (`access:Type::"id"`, a resource used through
an action that does not hand over its identity). Edges say how, with `via`:

- `cedar`: the active policy allows the principal an action on the resource (evaluated
  exactly, by the bundle's Evaluator). A call between workloads needs the network too: the
  edge exists only when a pod of the caller can reach a pod of the resource's service
  (NetworkPolicy; a side without pods is not constrained). An action that hands over control
  (`CONTROL_ACTIONS`: deploy, release, exec, attach, impersonate) on a principal leads to the
  principal itself, so the path goes on from there;
- `flow`: a service calling another's resource under its own identity, observed in the ledger;
- `rbac`: the Kubernetes escalations (create pods and mount a service account's token,
  exec/attach, read secrets, escalate/bind/impersonate, cluster-admin);
- `identity`: a pod holds its mounted service-account token; a service account is the
  workload whose SPIFFE ID names it (`spiffe://td/ns/NS/sa/SA`); a person's Cedar user is
  their Kubernetes user of the same name or email.

Each `cedar` and `flow` edge carries `authz` = allow or deny. The *authorized* graph keeps the
allowed ones; the *open* graph keeps every one the network permits, i.e. the estate as if
service authorization were switched off. What is reachable in the open graph and not in the
authorized one is what service authorization blocks (lateral-movement resistance).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from trustplane.decision.policy_bundle import Bundle
from trustplane.model import AccessRequest, Decision, EntityRef
from trustplane.posture.cluster import (
    CLUSTER,
    ESCALATIONS,
    Estate,
    Workload,
    allows,
    privilege_escalation,
    reaches,
)

CONTROL_ACTIONS = re.compile(r"deploy|release|exec|attach|impersonate")
_SPIFFE_K8S = re.compile(r"^spiffe://[^/]+/ns/([^/]+)/sa/([^/]+)$")
ACCESS = "access:"
CLUSTER_ADMIN = "cluster-admin"

Evaluate = Callable[[AccessRequest], Decision]


@dataclass(frozen=True)
class Flow:
    """A call observed in the ledger: a workload principal, the action, the resource."""

    principal: EntityRef
    action: str
    resource: EntityRef


@dataclass
class AttackGraph:
    graph: Any  # nx.DiGraph: every edge, `authz` on the policy-decided ones
    principals: dict[str, EntityRef]
    tiers: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def authorized(self) -> Any:
        """The graph without the edges service authorization denies."""
        view = nx.subgraph_view(
            self.graph, filter_edge=lambda u, v: self.graph[u][v].get("authz", "allow") == "allow"
        )
        return view

    def tier(self, node: str) -> int | None:
        return self.tiers.get(node.removeprefix(ACCESS))

    def tier0(self) -> list[str]:
        return sorted(n for n in self.graph if self.tier(n) == 0)


def sa_of_spiffe(spiffe_id: str) -> str | None:
    match = _SPIFFE_K8S.match(spiffe_id)
    return f"{match.group(1)}/{match.group(2)}" if match else None


def _entity_ref(entity: dict[str, Any]) -> EntityRef:
    return EntityRef(str(entity["uid"]["type"]), str(entity["uid"]["id"]))


def build_graph(
    bundle: Bundle,
    evaluate: Evaluate,
    estate: Estate,
    context: dict[str, Any],
    actions: Iterable[str],
    flows: Iterable[Flow] = (),
    extra_principals: Iterable[EntityRef] = (),
) -> AttackGraph:
    graph = nx.DiGraph()
    routes = bundle.routes
    workload_type = routes.workload_type if routes is not None else "Service"
    human_type = routes.principal_type if routes is not None else "User"
    entities = {str(_entity_ref(e)): e for e in bundle.entities}
    tiers: dict[str, int] = {}
    principals: dict[str, EntityRef] = {}
    resources: dict[str, EntityRef] = {}
    owner: dict[str, str] = {}  # resource → the workload principal that serves it
    for key, entity in entities.items():
        ref = _entity_ref(entity)
        attrs = entity.get("attrs") or {}
        if isinstance(attrs.get("tier"), int):
            tiers[key] = attrs["tier"]
        if ref.type in (workload_type, human_type) or "spiffe_id" in attrs:
            principals[key] = ref
        if "tier" in attrs or ref.type == workload_type:
            resources[key] = ref
        for parent in entity.get("parents") or []:
            if parent.get("type") == workload_type:
                owner[key] = f'{workload_type}::"{parent.get("id")}"'
        if ref.type == workload_type:
            owner[key] = key
    for ref in extra_principals:
        principals.setdefault(str(ref), ref)
    workloads = {
        k
        for k, r in principals.items()
        if r.type == workload_type or "spiffe_id" in (entities.get(k, {}).get("attrs") or {})
    }

    # -- pods and identities --------------------------------------------------------------
    pods_of_sa: dict[str, list[Workload]] = {}
    for workload in estate.workloads:
        sa = f"{workload.namespace}/{workload.service_account}"
        pods_of_sa.setdefault(sa, []).append(workload)
        pod = f"pod:{workload.key}"
        graph.add_node(pod)
        if workload.token_mounted:
            graph.add_edge(pod, f"sa:{sa}", via="identity", label="mounted SA token")
    for sa in estate.service_accounts():
        graph.add_node(f"sa:{sa}")
    pods_of_principal: dict[str, list[Workload]] = {}
    for key, ref in principals.items():
        spiffe = (entities.get(key, {}).get("attrs") or {}).get("spiffe_id")
        if ref.type == workload_type and spiffe is None and ref.id.startswith("spiffe://"):
            spiffe = ref.id
        account = sa_of_spiffe(spiffe) if isinstance(spiffe, str) else None
        if account is not None:
            sa = account
            graph.add_edge(f"sa:{sa}", key, via="identity", label="SVID of this account")
            pods_of_principal[key] = pods_of_sa.get(sa, [])
            if key in tiers:
                tiers.setdefault(f"sa:{sa}", tiers[key])
        if ref.type == human_type:
            email = (entities.get(key, {}).get("attrs") or {}).get("email")
            for grant in estate.grants:
                if grant.subject[0] == "User" and grant.subject[1] in (ref.id, email):
                    graph.add_edge(
                        key, f"k8s-user:{grant.subject[1]}", via="identity", label="same person"
                    )

    # -- Cedar ----------------------------------------------------------------------------
    def network_allows(principal: str, resource: str) -> bool:
        sources = pods_of_principal.get(principal)
        serving = owner.get(resource)
        targets = pods_of_principal.get(serving) if serving else None
        if not sources or not targets:
            return True  # no pods on one side: the network says nothing
        return any(reaches(estate, s, t) for s in sources for t in targets)

    action_list = sorted(set(actions))
    for pkey, pref in principals.items():
        graph.add_node(pkey)
        for rkey, rref in resources.items():
            if rkey == pkey:
                continue
            allowed = [
                a
                for a in action_list
                if evaluate(AccessRequest(pref, EntityRef("Action", a), rref, context)).allowed
            ]
            if not network_allows(pkey, rkey):
                continue  # the network refuses the call whatever the policy says
            control = [a for a in allowed if CONTROL_ACTIONS.search(a) and rkey in principals]
            if control:
                graph.add_edge(pkey, rkey, via="cedar", authz="allow", label=", ".join(control))
            if allowed:
                graph.add_edge(
                    pkey, ACCESS + rkey, via="cedar", authz="allow", label=", ".join(allowed)
                )
            elif pkey in workloads:  # service-to-service: what authorization alone refuses
                graph.add_edge(
                    pkey, ACCESS + rkey, via="cedar", authz="deny", label="no action allowed"
                )
    for flow in flows:
        pkey, rkey = str(flow.principal), str(flow.resource)
        request = AccessRequest(
            flow.principal, EntityRef("Action", flow.action), flow.resource, context
        )
        verdict = "allow" if evaluate(request).allowed else "deny"
        existing = graph.get_edge_data(pkey, ACCESS + rkey)
        if existing is not None and existing.get("authz") == "allow":
            existing["observed"] = True
            continue
        graph.add_edge(
            pkey, ACCESS + rkey, via="flow", authz=verdict, label=f"observed {flow.action}"
        )
        principals.setdefault(pkey, flow.principal)

    # -- RBAC ------------------------------------------------------------------------------
    namespaces = sorted(estate.namespaces)
    for namespace in namespaces:
        graph.add_node(f"secrets:{namespace}")
        tiers[f"secrets:{namespace}"] = 0
        for sa in estate.service_accounts(namespace):
            graph.add_edge(f"secrets:{namespace}", f"sa:{sa}", via="rbac", label="SA token secret")
    tiers[CLUSTER_ADMIN] = 0
    graph.add_node(CLUSTER_ADMIN)
    for target in [n for n in graph if n.startswith(("sa:", "pod:", "secrets:"))]:
        graph.add_edge(CLUSTER_ADMIN, target, via="rbac", label="cluster-admin")
    for grant in estate.grants:
        kind, name = grant.subject
        if kind == "ServiceAccount":
            subject = f"sa:{name}"
        elif kind == "User":
            subject = f"k8s-user:{name}"
        elif kind == "Group":
            subject = f"k8s-group:{name}"
            for sa in estate.service_accounts():
                ns = sa.split("/")[0]
                if name in ("system:serviceaccounts", f"system:serviceaccounts:{ns}"):
                    graph.add_edge(f"sa:{sa}", subject, via="identity", label="group member")
        else:
            continue
        scope = namespaces if grant.scope == CLUSTER else [grant.scope]
        escalation = privilege_escalation(grant.rules)
        how = f"{grant.binding} → {grant.role}"
        if escalation is not None:
            if grant.scope == CLUSTER:
                graph.add_edge(subject, CLUSTER_ADMIN, via="rbac", label=f"{escalation} ({how})")
            else:
                admin = f"ns-admin:{grant.scope}"
                tiers[admin] = 0
                graph.add_edge(subject, admin, via="rbac", label=f"{escalation} ({how})")
                for target in [
                    n
                    for n in list(graph)
                    if n.startswith((f"sa:{grant.scope}/", f"pod:{grant.scope}/"))
                ] + [f"secrets:{grant.scope}"]:
                    graph.add_edge(admin, target, via="rbac", label="namespace admin")
        for label, verbs, resource in ESCALATIONS:
            if not allows(grant.rules, verbs, resource):
                continue
            for namespace in scope:
                if resource == "pods":
                    targets = [f"sa:{sa}" for sa in estate.service_accounts(namespace)]
                elif resource == "secrets":
                    targets = [f"secrets:{namespace}"]
                else:
                    targets = [f"pod:{w.key}" for w in estate.workloads if w.namespace == namespace]
                for target in targets:
                    if target != subject:
                        graph.add_edge(subject, target, via="rbac", label=f"{label} ({how})")
    result = AttackGraph(graph, principals, tiers)
    return result


def reachable(graph: Any, starts: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for start in starts:
        if start in graph:
            found.add(start)
            found.update(nx.descendants(graph, start))
    return found
