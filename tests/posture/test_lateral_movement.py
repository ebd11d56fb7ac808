"""The lateral-movement pack: RBAC rules and readOnlyRootFilesystem (CEL, one object at a
time), and the checks over every scanned manifest (posture/estate.py), SARIF included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import run_cli
from trustplane.posture.engine import Engine, select
from trustplane.posture.packs import load_pack
from trustplane.posture.scan import Scanner

ENGINE = Engine(select(load_pack("lateral-movement").rules, None))
ESTATE = Path(__file__).parents[1] / "outcomes" / "estate" / "manifests"


def role(*rules: dict[str, Any], kind: str = "ClusterRole") -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": {"name": "r", "namespace": "n"}, "rules": list(rules)}  # fmt: skip


def found(obj: dict[str, Any]) -> set[str]:
    return {f.rule_id for f in ENGINE.evaluate(obj)}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}, set()),
        ({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"rbac/wildcard"}),
        ({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}, {"rbac/wildcard"}),
        ({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]},
         {"rbac/pods-exec-attach"}),
        ({"apiGroups": [""], "resources": ["pods/attach"], "verbs": ["get"]},
         {"rbac/pods-exec-attach"}),
        ({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
          "verbs": ["escalate"]}, {"rbac/escalate"}),
        ({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"],
          "verbs": ["bind"]}, {"rbac/bind"}),
        ({"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]},
         {"rbac/impersonate"}),
    ],
)  # fmt: skip
def test_role_rules(rule: dict[str, Any], expected: set[str]) -> None:
    assert found(role(rule)) == expected
    assert found(role(rule, kind="Role")) == expected


def test_cluster_admin_bindings() -> None:
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "b"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "someone"}],
    }  # fmt: skip
    assert found(binding) == {"rbac/cluster-admin-binding"}
    assert found({**binding, "kind": "RoleBinding"}) == {"rbac/cluster-admin-binding"}
    view = {**binding, "roleRef": {**binding["roleRef"], "name": "view"}}
    assert found(view) == set()


def test_read_only_root_filesystem() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"name": "ok", "image": "i", "securityContext": {"readOnlyRootFilesystem": True}},
                {"name": "writable", "image": "i"},
            ]
        },
    }
    (finding,) = ENGINE.evaluate(pod)
    assert finding.rule_id == "workload/read-only-root-filesystem"
    assert finding.offenders == ("writable",)


def test_a_role_whose_rules_are_not_a_list_is_not_guessed() -> None:
    broken = role()
    broken["rules"] = "everything"
    findings = ENGINE.evaluate(broken)
    assert findings and all(f.error for f in findings)  # fail closed, naming the field


def test_estate_checks_over_a_scan() -> None:
    scanner = Scanner(ENGINE, {}, secrets=False, estate_checks=True)
    result = scanner.scan([ESTATE])
    by_rule: dict[str, list[str]] = {}
    for f in result.findings:
        by_rule.setdefault(f.rule, []).append(f.message)
    assert sorted(by_rule["rbac/secrets-cluster-wide"]) == [
        "ClusterRoleBinding batch-reads-secrets: ServiceAccount core/batch reads secrets in "
        "every namespace (through secret-reader)",
        "ClusterRoleBinding ops-admin: User ops@bank.test reads secrets in every namespace "
        "(through cluster-admin)",
    ]
    # core has its default deny; app and web have none
    assert sorted(by_rule["network/namespace-default-deny"]) == [
        "namespace app: no default-deny NetworkPolicy for ingress and egress",
        "namespace web: no default-deny NetworkPolicy for ingress and egress",
    ]
    unselected = " ".join(by_rule["network/unselected-workload"])
    assert "Deployment web" in unselected and "Deployment api" in unselected
    assert "ledger" not in unselected and "batch" not in unselected
    assert by_rule["rbac/pods-exec-attach"] and by_rule["rbac/cluster-admin-binding"]
    line = min(f.line for f in result.findings if f.rule == "rbac/secrets-cluster-wide")
    text = (ESTATE / "rbac.yaml").read_text().splitlines()
    assert text[line - 1].startswith("apiVersion") and "batch-reads-secrets" in text[line + 1]


def test_estate_checks_only_with_the_pack(tmp_path: Path) -> None:
    plain = run_cli("scan", str(ESTATE), "--json", "--fail-on", "none")
    assert plain.returncode == 0, plain.stderr
    assert not any(f["rule"].startswith("network/") for f in json.loads(plain.stdout)["findings"])
    target = tmp_path / "report.sarif"
    done = run_cli(
        "scan", str(ESTATE), "--pack", "lateral-movement", "--format", "sarif",
        "-o", str(target), "--fail-on", "none",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = json.loads(target.read_text())
    rules = {r["id"] for r in log["runs"][0]["tool"]["driver"]["rules"]}
    assert {"network/namespace-default-deny", "rbac/secrets-cluster-wide"} <= rules
    results = log["runs"][0]["results"]
    assert any(r["ruleId"] == "network/unselected-workload" for r in results)
