"""`trustplane scan` as people run it: the shipped example tree, each output format, exit codes
and clear one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support import REPO, run_cli

EXAMPLES = REPO / "examples" / "posture"
REGISTRY = "approved_registries=registry.example.com/"


def scan_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("scan", *args, "--param", REGISTRY, "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_the_example_tree_has_findings_with_file_line_rule_and_fix() -> None:
    code, report = scan_json(str(EXAMPLES))
    assert code == 1
    assert report["files"] == 4  # manifests, two pipelines, an AdmissionReview
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for finding in report["findings"]:
        assert finding["fix"]
        by_rule.setdefault(finding["rule"], []).append(finding)
    manifests = str(EXAMPLES / "manifests.yaml")
    (privileged,) = by_rule["pss-baseline/privileged"]
    assert privileged["file"] == manifests
    assert privileged["line"] == 16  # the container that sets it
    assert 'Deployment legacy-agent: privileged: containers "agent"' in privileged["message"]
    workflow = str(EXAMPLES / ".github" / "workflows" / "deploy.yml")
    assert [(f["file"], f["line"]) for f in by_rule["ci/unpinned-action"]] == [(workflow, 10)]
    assert [f["line"] for f in by_rule["ci/long-lived-cloud-keys"]] == [14]
    assert {f["line"] for f in by_rule["ci/missing-id-token-permission"]} == {22, 5}
    assert [f["line"] for f in by_rule["ci/broad-permissions"]] == [4]
    assert {(Path(f["file"]).name, f["line"]) for f in by_rule["ci/static-cloud-credentials"]} == {
        (".gitlab-ci.yml", 4)
    }
    # The real-looking key fires; AWS's documentation example (manifests.yaml:51) does not.
    secrets = {(Path(f["file"]).name, f["line"]) for f in by_rule["secrets/detected"]}
    assert secrets == {("manifests.yaml", 22), (".gitlab-ci.yml", 4)}
    # The compliant Deployment has no findings at all.
    assert not [f for f in report["findings"] if "payments" in f["message"]]


def test_fail_on_sets_the_exit_code() -> None:
    assert run_cli("scan", str(EXAMPLES), "--fail-on", "none").returncode == 0
    assert run_cli("scan", str(EXAMPLES), "--fail-on", "critical").returncode == 1
    clean = EXAMPLES / "manifests.yaml"
    result = run_cli("scan", str(clean), "--pack", "pss-baseline", "--no-secrets", "--fail-on",
                     "critical", "--format", "json")  # fmt: skip
    assert result.returncode == 1  # privileged is critical
    result = run_cli("scan", str(EXAMPLES / ".gitlab-ci.yml"), "--no-secrets", "--fail-on", "low")
    assert result.returncode == 1


def test_a_clean_file_passes(tmp_path: Path) -> None:
    text = (EXAMPLES / "manifests.yaml").read_text().split("---\n")[1]
    (tmp_path / "good.yaml").write_text(text)
    result = run_cli("scan", str(tmp_path), "--param", REGISTRY, "--fail-on", "low")
    assert result.returncode == 0, result.stdout
    assert "1 file(s) scanned, no findings" in result.stdout


def test_sarif_2_1_0_for_code_scanning(tmp_path: Path) -> None:
    target = tmp_path / "report.sarif"
    result = run_cli("scan", str(EXAMPLES), "--format", "sarif", "-o", str(target))
    assert result.returncode == 1
    log = json.loads(target.read_text())
    assert log["version"] == "2.1.0"
    assert log["$schema"].endswith("sarif-2.1.0.json")
    (run,) = log["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert run["tool"]["driver"]["name"] == "trustplane"
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids))
    for result_ in run["results"]:
        assert rules[result_["ruleIndex"]]["id"] == result_["ruleId"]
        assert result_["level"] in ("note", "warning", "error")
        location = result_["locations"][0]["physicalLocation"]
        assert location["region"]["startLine"] >= 1
        assert Path(location["artifactLocation"]["uri"]).exists()
    assert all(float(r["properties"]["security-severity"]) > 0 for r in rules)


def test_the_table_names_rules_and_locations() -> None:
    # Wide enough that no checkout path folds the location column.
    result = run_cli("scan", str(EXAMPLES / ".github"), "--no-secrets", env={"COLUMNS": "1000"})
    assert result.returncode == 1
    assert "ci/unpinned-action" in result.stdout
    assert "deploy.yml:10" in result.stdout
    assert "finding(s) in 1 file(s)" in result.stdout


def test_bad_yaml_is_named_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("apiVersion: v1\nkind: Pod\nspec: [\n")
    result = run_cli("scan", str(tmp_path))
    assert result.returncode == 2
    assert f"{tmp_path / 'broken.yaml'}:4: invalid YAML" in result.stderr
    assert "Traceback" not in result.stderr


def test_unrendered_templates_are_noted_not_errors(tmp_path: Path) -> None:
    (tmp_path / "deployment.yaml").write_text(
        "kind: Pod\nmetadata:\n  name: {{ .Values.name }}\nspec:\n  containers:\n"
        "  {{- range .Values.containers }}\n  - name: x\n  {{- end }}\n"
    )
    result = run_cli("scan", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    assert "unrendered template" in result.stderr
    assert json.loads(result.stdout)["skipped"]


def test_bad_rules_packs_params_and_paths_are_one_line_errors(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "id: x\ndescription: d\nseverity: high\nmatch: {kinds: [Pod]}\n"
        "expression: 'containers.all(c, c.image.'\nmessage: m\n"
    )
    result = run_cli("scan", str(EXAMPLES), "--rules", str(rules))
    assert result.returncode == 2
    assert f"{rules}:5: invalid CEL" in result.stderr
    result = run_cli("scan", str(EXAMPLES), "--pack", "pss-strict")
    assert result.returncode == 2
    assert "unknown rule pack 'pss-strict'" in result.stderr
    result = run_cli("scan", str(EXAMPLES), "--param", "oops")
    assert result.returncode == 2 and "expected KEY=VALUE" in result.stderr
    result = run_cli("scan", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "no such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_custom_rules_add_to_the_packs(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "id: acme/no-latest\ndescription: no latest tags\nseverity: low\n"
        "match: {kinds: [Pod]}\n"
        "expression: containers.filter(c, c.image.endsWith(':latest')).map(c, c.name)\n"
        "message: containers {offenders} use the latest tag\nfix: pin it\n"
    )
    code, report = scan_json(str(EXAMPLES / "manifests.yaml"), "--rules", str(rules))
    assert code == 1
    (finding,) = [f for f in report["findings"] if f["rule"] == "acme/no-latest"]
    assert finding["message"].endswith('containers "agent" use the latest tag')


def test_an_exemptions_file_silences_a_rule_until_it_expires(tmp_path: Path) -> None:
    manifests = str(EXAMPLES / "manifests.yaml")
    exemptions = tmp_path / "exemptions.yaml"
    entry = (
        "- rule: pss-baseline/privileged\n  owner: ops-team\n  reason: node agent until Q3\n"
        "  namespaces: [ops]\n  expires: {expires}\n"
    )
    exemptions.write_text(entry.format(expires="2999-12-31"))
    _, report = scan_json(manifests, "--exemptions", str(exemptions))
    assert "pss-baseline/privileged" not in {f["rule"] for f in report["findings"]}
    exemptions.write_text(entry.format(expires="2020-01-01"))
    _, report = scan_json(manifests, "--exemptions", str(exemptions))
    assert "pss-baseline/privileged" in {f["rule"] for f in report["findings"]}
    exemptions.write_text(
        "- rule: pss-baseline/privileged\n  owner: ops-team\n  namespaces: [ops]\n"
    )
    result = run_cli("scan", manifests, "--exemptions", str(exemptions))
    assert result.returncode == 2
    assert f"{exemptions}:1: [0.expires]: Field required" in result.stderr
    assert f"{exemptions}:1: [0.reason]: Field required" in result.stderr
