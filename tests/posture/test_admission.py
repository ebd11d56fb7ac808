"""The admission adapter without a server: the example webhook configuration, the answer's
shape and the ledger request it records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO
from trustplane.config import AdmissionSettings, ConfigError, Settings, load_settings
from trustplane.enforcement.admission import AdmissionRequest, AdmissionWebhook, warning
from trustplane.posture.engine import Finding
from trustplane.posture.packs import check_admission_settings
from trustplane.posture.rules import Mode, Severity


def test_the_example_webhook_configuration_is_valid() -> None:
    doc = yaml.safe_load((REPO / "docs" / "admission-webhook.yaml").read_text())
    assert doc["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert doc["kind"] == "ValidatingWebhookConfiguration"
    (hook,) = doc["webhooks"]
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] in ("Fail", "Ignore")
    assert 1 <= hook["timeoutSeconds"] <= 30
    assert hook["clientConfig"]["url"].startswith("https://")
    assert hook["clientConfig"]["url"].endswith("/v1/admission")
    operations = {op for rule in hook["rules"] for op in rule["operations"]}
    assert operations == {"CREATE", "UPDATE"}
    resources = {r for rule in hook["rules"] for r in rule["resources"]}
    assert {"pods", "deployments", "cronjobs", "jobs", "daemonsets", "statefulsets"} <= resources


def request(obj: dict[str, Any], **fields: Any) -> AdmissionRequest:
    return AdmissionRequest.model_validate(
        {
            "uid": "u1",
            "kind": {"kind": obj["kind"]},
            "operation": "CREATE",
            "namespace": "team-a",
            "object": obj,
            **fields,
        }
    )


def test_warnings_are_cut_to_120_characters() -> None:
    finding = Finding("r/x", None, Severity.LOW, Mode.WARN, "m" * 300, "", "spec")
    assert len(warning(finding)) == 120
    short = Finding("r/x", None, Severity.LOW, Mode.WARN, "short", "", "spec")
    assert warning(short) == "short"


def test_the_default_modes_enforce_baseline_and_warn_restricted() -> None:
    webhook = AdmissionWebhook(None, AdmissionSettings())
    pod = {
        "kind": "Pod",
        "metadata": {"generateName": "job-"},
        "spec": {"containers": [{"name": "a", "image": "x"}]},
    }
    answer, decision, _ = webhook.review(request(pod))
    assert answer["response"]["allowed"] is True
    assert answer["response"]["warnings"]
    assert decision.allowed and decision.shadow_mismatch
    pod["spec"]["hostPID"] = True
    answer, decision, _ = webhook.review(request(pod))
    assert answer["response"]["status"]["code"] == 403
    assert [r.policy_id for r in decision.reasons] == ["pss-baseline/hostNamespaces"]


def test_the_guide_s_configuration_is_valid() -> None:
    import tomllib

    text = (REPO / "docs" / "posture.md").read_text()
    values = tomllib.loads(text.split("```toml\n", 1)[1].split("```", 1)[0])
    values.pop("tls")  # files the guide creates with openssl
    settings = Settings(**values)
    assert settings.admission.namespaces["payments"].enforce == ["pss-restricted", "zero-trust"]
    webhook = AdmissionWebhook(None, settings.admission)
    assert webhook.review(request({"kind": "Pod", "metadata": {}, "spec": {}}))[0]["response"]


def test_an_object_without_kind_is_reviewed_as_the_request_s_kind() -> None:
    webhook = AdmissionWebhook(None, AdmissionSettings())
    req = AdmissionRequest.model_validate(
        {
            "uid": "u2",
            "kind": {"kind": "Pod"},
            "operation": "CREATE",
            "object": {"metadata": {"name": "p"}, "spec": {"hostPID": True, "containers": []}},
        }
    )
    answer, _, _ = webhook.review(req)
    assert answer["response"]["allowed"] is False


def test_an_update_that_leaves_the_pod_as_it_was_is_not_reviewed() -> None:
    webhook = AdmissionWebhook(None, AdmissionSettings())
    old = {
        "kind": "Deployment",
        "metadata": {"name": "agent", "labels": {"v": "1"}},
        "spec": {"replicas": 1, "template": {"spec": {"hostPID": True, "containers": []}}},
    }
    scaled = {**old, "metadata": {"name": "agent", "labels": {"v": "2"}}}
    scaled["spec"] = {**old["spec"], "replicas": 5}
    answer, _, _ = webhook.review(request(scaled, operation="UPDATE", oldObject=old))
    assert answer["response"]["allowed"] is True
    changed = {**scaled, "spec": {"replicas": 5, "template": {"spec": {"hostPID": True,
               "hostNetwork": True, "containers": []}}}}  # fmt: skip
    answer, _, _ = webhook.review(request(changed, operation="UPDATE", oldObject=old))
    assert answer["response"]["allowed"] is False
    answer, _, _ = webhook.review(request(scaled, operation="UPDATE"))  # no oldObject: reviewed
    assert answer["response"]["allowed"] is False


def test_the_operator_s_rule_files_are_reviewed_in_every_namespace(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "id: acme/no-latest\ndescription: d\nseverity: low\nmatch: {kinds: [Pod]}\nmode: warn\n"
        "expression: containers.map(c, c.image.endsWith(':latest'), c.name)\n"
        "message: containers {offenders} use the latest tag\n"
    )
    quiet = {"enforce": [], "warn": [], "audit": []}  # no packs: only the operator's rules
    settings = Settings(admission={"rule_files": [rules], "namespaces": {"quiet": quiet}})
    webhook = AdmissionWebhook(None, settings.admission)
    containers = [{"name": "a", "image": "x:latest"}]
    pod = {"kind": "Pod", "metadata": {}, "spec": {"containers": containers}}
    for namespace in ("team-a", "quiet"):
        answer, _, _ = webhook.review(request(pod, namespace=namespace))
        assert 'containers "a" use the latest tag' in answer["response"]["warnings"]


def test_a_broken_rule_file_is_a_configuration_error_naming_file_and_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("id: x\ndescription: d\nseverity: high\nmatch: {kinds: [Pod]}\n"
                     "expression: 'containers.all(c,'\nmessage: m\n")  # fmt: skip
    settings = load_settings(overrides={"admission": {"rule_files": [str(rules)]}})
    with pytest.raises(ConfigError, match=rf"{rules}:5: invalid CEL"):
        check_admission_settings(settings.admission)
    with pytest.raises(ConfigError, match=rf"{rules}:5: invalid CEL"):
        AdmissionWebhook(None, settings.admission)


def test_an_unreadable_object_is_refused_with_at_most_ten_fields_named() -> None:
    webhook = AdmissionWebhook(None, AdmissionSettings())
    pod = {"kind": "Pod", "metadata": {}, "spec": {"containers": [{"image": "x"}] * 25}}
    answer, decision, findings = webhook.review(request(pod))
    response = answer["response"]
    assert response["allowed"] is False and findings == []
    assert response["status"]["code"] == 422
    message = response["status"]["message"]
    assert "object.spec.containers[9].name: required field is missing" in message
    assert "containers[10]" not in message and message.endswith("(and 15 more)")
    assert [r.policy_id for r in decision.reasons] == ["trustplane/unreadable-object"]
    assert len(decision.errors) == 10


def test_an_unchanged_update_is_not_reviewed_but_still_refused_when_unreadable() -> None:
    webhook = AdmissionWebhook(None, AdmissionSettings())
    old = {"kind": "Pod", "metadata": {}, "spec": {"hostNetwork": "yes", "containers": []}}
    relabelled = {**old, "metadata": {"labels": {"v": "2"}}}
    answer, _, _ = webhook.review(request(relabelled, operation="UPDATE", oldObject=old))
    assert answer["response"]["status"]["code"] == 422
    assert "object.spec.hostNetwork: expected a boolean" in answer["response"]["status"]["message"]
