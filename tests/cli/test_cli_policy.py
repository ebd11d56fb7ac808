"""Everyday policy work through the real `trustplane` command: scaffold, validate, test with
filters and coverage, JSON problems on stdout, one problem per schema typo, local signature
verification."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHOP
from tests.support import run_cli

pytestmark = pytest.mark.slow

Result = subprocess.CompletedProcess[str]


def ok(result: Result, code: int = 0) -> Result:
    assert result.returncode == code, (
        f"exit {result.returncode}, expected {code}\n{result.stdout}\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_policy_new_scaffolds_a_bundle_that_validates_and_passes(tmp_path: Path) -> None:
    bundle = tmp_path / "docs-bundle"
    created = ok(run_cli("policy", "new", str(bundle)))
    assert "schema.cedarschema" in created.stdout and (bundle / "tests").is_dir()
    ok(run_cli("policy", "validate", str(bundle)))
    tested = json.loads(ok(run_cli("policy", "test", str(bundle), "--json")).stdout)
    assert tested["failed"] == 0 and tested["passed"] >= 3
    assert tested["coverage"]["not_reached"] == [] and tested["coverage"]["percent"] == 100.0
    again = ok(run_cli("policy", "new", str(bundle)), 2)
    assert "exists" in again.stderr


def test_a_schema_typo_is_one_problem_in_text_and_json(tmp_path: Path) -> None:
    bundle = tmp_path / "shop"
    shutil.copytree(SHOP, bundle)
    schema = bundle / "schema.cedarschema"
    schema.write_text(schema.read_text().replace("\n  score: Long,", "\n  scor: Long,"))
    text = ok(run_cli("policy", "validate", str(bundle)), 1)
    assert "1 problem(s)" in text.stderr, text.stderr
    assert "attribute `trust.score` in context not found" in text.stderr
    assert "for 14 actions" in text.stderr and "also in forbid-elevated-risk" in text.stderr

    as_json = ok(run_cli("policy", "validate", str(bundle), "--json"), 1)
    doc = json.loads(as_json.stdout)
    assert doc["valid"] is False and len(doc["problems"]) == 1
    assert doc["problems"][0]["file"] == "guardrails.cedar"
    assert doc["problems"][0]["policy"] == "forbid-high-risk"
    tested = json.loads(ok(run_cli("policy", "test", str(bundle), "--json"), 1).stdout)
    assert tested["valid"] is False and tested["problems"] == doc["problems"]

    # Two typos: two problems, in the same order every time.
    schema.write_text(schema.read_text().replace("  mfa: Bool,", "  mfaa: Bool,"))
    first = json.loads(ok(run_cli("policy", "validate", str(bundle), "--json"), 1).stdout)
    second = json.loads(ok(run_cli("policy", "validate", str(bundle), "--json"), 1).stdout)
    assert len(first["problems"]) == 2 and first == second


def test_policy_test_prints_failures_a_summary_coverage_and_filters(tmp_path: Path) -> None:
    bundle = tmp_path / "shop"
    shutil.copytree(SHOP, bundle)
    quiet = ok(run_cli("policy", "test", str(bundle)))
    lines = quiet.stdout.splitlines()
    summary = next(line for line in lines if " passed, 0 failed" in line)
    assert "coverage" in summary
    # Without -v no passing case is listed; the policies no test reaches are.
    assert not any("ci-deployer may release checkout from main" in line for line in lines)
    assert any(line.strip().startswith("not reached") for line in lines)

    verbose = ok(run_cli("policy", "test", str(bundle), "-v"))
    passed = int(summary.split()[0])
    assert verbose.stdout.count("✓") == passed and quiet.stdout.count("✓") == 0

    only = json.loads(
        ok(run_cli("policy", "test", str(bundle), "-k", "CI-DEPLOYER", "--json")).stdout
    )
    names = [r["name"] for r in only["results"]]
    assert names and all("ci-deployer" in n.lower() for n in names)
    assert only["passed"] == len(names)
    missed = {p["id"] for p in only["coverage"]["not_reached"]}
    assert "svc-checkout-charges-payments" in missed  # no ci-deployer test reaches it

    nothing = ok(run_cli("policy", "test", str(bundle), "-k", "no-such-test"), 2)
    assert "no test name contains 'no-such-test'" in nothing.stderr


def test_policy_verify_checks_a_signature_locally(tmp_path: Path) -> None:
    bundle = tmp_path / "shop"
    shutil.copytree(SHOP, bundle)
    ok(run_cli("policy", "keygen", "--out", str(tmp_path / "signer")))
    ok(run_cli("policy", "keygen", "--out", str(tmp_path / "other")))
    unsigned = ok(
        run_cli("policy", "verify", str(bundle), "--key", str(tmp_path / "signer.pub")), 1
    )
    assert "not signed" in unsigned.stderr

    ok(run_cli("policy", "sign", str(bundle), "--key", str(tmp_path / "signer.key")))
    good = ok(run_cli("policy", "verify", str(bundle), "--key", str(tmp_path / "signer.pub")))
    assert "signature valid" in good.stdout
    wrong = run_cli("policy", "verify", str(bundle), "--key", str(tmp_path / "other.pub"), "--json")
    doc = json.loads(ok(wrong, 1).stdout)
    assert doc["verified"] is False and doc["problems"]

    (bundle / "ci.cedar").write_text((bundle / "ci.cedar").read_text() + "\n// edited\n")
    edited = ok(run_cli("policy", "verify", str(bundle), "--key", str(tmp_path / "signer.pub")), 1)
    assert "ci.cedar" in edited.stderr
