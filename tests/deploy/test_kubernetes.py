"""The Kubernetes manifests (deploy/kubernetes): every overlay renders with `kubectl kustomize`,
validates against the Kubernetes schemas of several versions (kubernetes-validate, strict),
and passes trustplane's own `pss-restricted` and `zero-trust` packs (`trustplane scan`): the
deployment is held to the rules it enforces."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import orjson
import pytest
import yaml

from tests.support import REPO, TRUSTPLANE, required_binary
from trustplane.config import load_settings

KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())
VERSIONS = ("1.29.0", "1.31.0", "1.33.0", "1.35.0")
REGISTRIES = "registry.example.internal/,docker.io/envoyproxy/"
CLUSTER_SCOPED = {"Namespace", "ValidatingWebhookConfiguration"}


def render(target: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [required_binary("kubectl"), "kustomize", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module", params=["base", *OVERLAYS])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    name = str(request.param)
    target = KUBERNETES / name if name == "base" else KUBERNETES / "overlays" / name
    documents = render(target)
    path = tmp_path_factory.mktemp("rendered") / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return name, documents, path


def test_the_overlays_are_the_documented_ones() -> None:
    assert OVERLAYS == [
        "admission-webhook",
        "envoy-ext-authz",
        "replicas-postgresql",
        "single-node-sqlite",
    ]


def test_every_object_validates_against_several_kubernetes_versions(rendered: Any) -> None:
    name, documents, _ = rendered
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "NetworkPolicy"} <= kinds
    assert "PodDisruptionBudget" in kinds
    for document in documents:
        if document["apiVersion"].startswith("security.istio.io/"):
            continue  # Istio's CRD: no Kubernetes schema; its shape is checked below
        if document["kind"] not in CLUSTER_SCOPED:
            assert document["metadata"].get("namespace"), f"{name}: {document['kind']}"
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{name}: {document['kind']}/{document['metadata']['name']} "
                    f"on {version}: {exc.message} at {list(exc.path)}"
                )


def test_trustplane_passes_its_own_rule_packs(rendered: Any) -> None:
    name, _, path = rendered
    done = subprocess.run(
        [
            *TRUSTPLANE,
            "scan",
            str(path),
            "--pack",
            "pss-restricted",
            "--pack",
            "zero-trust",
            "--param",
            f"approved_registries={REGISTRIES}",
            "--fail-on",
            "low",
            "--json",
        ],
        capture_output=True,
        timeout=300,
    )
    report = orjson.loads(done.stdout)
    assert report["findings"] == [], f"{name}: {report['findings']}"
    assert done.returncode == 0, done.stderr.decode()


def test_the_deployment_is_hardened_and_probed(rendered: Any) -> None:
    name, documents, _ = rendered
    deployment = next(
        d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "trustplane"
    )
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "trustplane")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "@sha256:" in container["image"]
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    default_deny = next(p for p in policies if p["metadata"]["name"] == "default-deny")
    assert default_deny["spec"]["podSelector"] == {}
    assert set(default_deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    if name == "replicas-postgresql":
        assert deployment["spec"]["replicas"] > 1
        budget = next(d for d in documents if d["kind"] == "PodDisruptionBudget")
        assert budget["spec"]["minAvailable"] == 2
    if name in ("single-node-sqlite", "admission-webhook"):
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "persistentVolumeClaim" in volumes["state"]


def test_the_shipped_settings_load() -> None:
    settings = load_settings(KUBERNETES / "base" / "trustplane.toml")
    assert settings.server.host == "0.0.0.0" and settings.log_format == "json"
    assert settings.pep.auth.value == "required"  # decisions beyond loopback: PEPs only


def test_the_istio_policy_and_envoy_bootstrap_point_at_trustplane() -> None:
    overlay = KUBERNETES / "overlays" / "envoy-ext-authz"
    policy = yaml.safe_load((overlay / "istio-authorizationpolicy.yaml").read_text())
    assert policy["spec"] == {"action": "CUSTOM", "provider": {"name": "trustplane"}, "rules": [{}]}
    bootstrap = yaml.safe_load((overlay / "envoy-config.yaml").read_text())
    listener = bootstrap["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    ext_authz = manager["http_filters"][0]["typed_config"]
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "trustplane"
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    address = clusters["trustplane"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert address["endpoint"]["address"]["socket_address"]["port_value"] == 9191
