"""The zero-trust pack: a workload that follows every rule passes; each rule names what it
found; example credentials (AKIAIOSFODNN7EXAMPLE) do not fire."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from trustplane.posture.engine import Engine, select
from trustplane.posture.packs import load_pack

DIGEST = "@sha256:" + "ab" * 32
PARAMS = {"approved_registries": ["registry.example.com/"]}
ENGINE = Engine(select(load_pack("zero-trust").rules, None), PARAMS)

GOOD: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "payments",
        "labels": {
            "trustplane.io/owner": "payments-team",
            "trustplane.io/data-classification": "confidential",
        },
    },
    "spec": {
        "template": {
            "metadata": {"annotations": {"trustplane.io/egress": "ledger.internal:443"}},
            "spec": {
                "serviceAccountName": "payments",
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "api",
                        "image": "registry.example.com/payments/api" + DIGEST,
                        "env": [
                            {"name": "AWS_ACCESS_KEY_ID", "value": "AKIAIOSFODNN7EXAMPLE"},
                            {"name": "LOG_LEVEL", "value": "info"},
                            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db"}}},
                        ],
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "128Mi"},
                            "limits": {"memory": "256Mi"},
                        },
                    }
                ],
            },
        }
    },
}


def rules_hit(obj: dict[str, Any]) -> set[str]:
    findings = ENGINE.evaluate(obj)
    assert not any(f.error for f in findings), findings
    return {f.rule_id for f in findings}


def changed(path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(GOOD)
    *parents, last = path.split("/")
    node: Any = obj
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value is None:
        del node[key]
    else:
        node[key] = value
    return obj


POD = "spec/template/spec"
C = f"{POD}/containers/0"


def test_a_workload_following_every_rule_passes() -> None:
    assert rules_hit(GOOD) == set()


@pytest.mark.parametrize(
    ("path", "value", "rule"),
    [
        (f"{POD}/serviceAccountName", "default", "default-service-account"),
        (f"{POD}/serviceAccountName", None, "default-service-account"),
        (f"{POD}/automountServiceAccountToken", None, "automount-service-account-token"),
        (f"{C}/image", "docker.io/library/nginx" + DIGEST, "approved-registries"),
        (f"{C}/image", "registry.example.com/payments/api:1.2", "image-digest"),
        (f"{C}/resources", {"requests": {"cpu": "1"}}, "resources"),
        ("metadata/labels", {"trustplane.io/owner": "x"}, "ownership-labels"),
        (f"{C}/env/0/value", "AKIAZ3MSJV4WWNKWW5FG", "no-static-cloud-credentials"),
        (f"{C}/env/1", {"name": "API_TOKEN", "value": "q8Zt2LmX9vB4nR7kW1pY6sD3"},
         "no-static-cloud-credentials"),
        (f"{C}/env/1", {"name": "AZURE_CLIENT_SECRET", "value": "abc"},
         "no-static-cloud-credentials"),
        ("spec/template/metadata/annotations", {}, "egress-annotation"),
    ],
)  # fmt: skip
def test_each_rule_fires_on_what_it_forbids(path: str, value: Any, rule: str) -> None:
    assert rules_hit(changed(path, value)) == {f"zero-trust/{rule}"}


def test_placeholders_and_low_entropy_values_do_not_fire() -> None:
    for value in (
        "changeme-changeme-changeme",
        "${API_TOKEN}",
        "<your token here>",
        "aaaaaaaaaaaaaaaaaaaa",
    ):
        obj = changed(f"{C}/env/1", {"name": "API_TOKEN", "value": value})
        assert rules_hit(obj) == set(), value


def test_the_token_opt_in_annotation_allows_automount() -> None:
    obj = changed(f"{POD}/automountServiceAccountToken", None)
    obj["spec"]["template"]["metadata"]["annotations"]["trustplane.io/needs-api-token"] = "true"
    assert rules_hit(obj) == set()


def test_configmaps_with_cloud_credentials_are_flagged() -> None:
    config = {
        "kind": "ConfigMap",
        "metadata": {"name": "app"},
        "data": {
            "aws": "aws_access_key_id = AKIAZ3MSJV4WWNKWW5FG",
            "docs": "e.g. AKIAIOSFODNN7EXAMPLE",
            "gcp.json": '{"type": "service_account", "private_key_id": "1"}',
            "level": "debug",
        },
    }
    (finding,) = ENGINE.evaluate(config)
    assert finding.rule_id == "zero-trust/no-credentials-in-config"
    assert set(finding.offenders) == {"aws", "gcp.json"}
