"""Compromise simulation on a crafted estate (tests/outcomes/estate: a bundle, manifests with
RBAC and NetworkPolicies, observed flows) whose attack paths are known."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from tests.support import run_cli
from trustplane.config import ExchangeRuleSettings
from trustplane.decision.engine import Evaluator
from trustplane.decision.policy_bundle import BundleSource, compile_bundle
from trustplane.model import EntityRef
from trustplane.outcomes.graph import Flow
from trustplane.outcomes.simulate import Estate, exchange_pattern, run
from trustplane.posture.cluster import load_objects, reaches, read_estate

ESTATE = Path(__file__).parent / "estate"
RULE = ExchangeRuleSettings(
    name="deploy",
    issuer="https://ci.bank.test",
    claims={"repository": "bank/app"},
    spiffe_id="spiffe://bank.test/ci/app/deploy",
)
CONTEXT = {"mfa": True, "auth_age_seconds": 0}


def estate(bundle: str = "bundle") -> Estate:
    compiled = compile_bundle(BundleSource.from_dir(ESTATE / bundle))
    flows = [
        Flow(_ref(f["principal"]), f["action"], _ref(f["resource"]))
        for f in json.loads((ESTATE / "flows.json").read_text())
    ]
    k8s = read_estate(load_objects([ESTATE / "manifests"]))
    return Estate(compiled, Evaluator(compiled).evaluate, k8s, flows, [RULE], CONTEXT)


def _ref(text: str) -> EntityRef:
    kind, _, rest = text.partition("::")
    return EntityRef(kind, rest.strip('"'))


def hops(result: dict[str, Any], target: str) -> list[tuple[str, str, str]]:
    path = result["scenarios"][0]["tier0_paths"][target]
    return [(h["from"], h["via"], h["to"]) for h in path]


def test_network_policy_reachability() -> None:
    k8s = read_estate(load_objects([ESTATE / "manifests"]))
    pods = {w.name: w for w in k8s.workloads}
    assert reaches(k8s, pods["api"], pods["ledger"])  # the one allowed way into core
    assert not reaches(k8s, pods["web"], pods["ledger"])  # ledger's ingress names only api
    assert not reaches(k8s, pods["batch"], pods["ledger"])  # core's default deny, both ways
    assert reaches(k8s, pods["web"], pods["api"])  # no policy selects api: default allow
    assert not reaches(k8s, pods["batch"], pods["api"])  # batch's egress is denied


def test_rogue_web_workload_execs_into_api_and_posts_to_the_ledger() -> None:
    result = run(estate(), "rogue-workload", "spiffe://bank.test/ns/web/sa/web")
    assert hops(result, 'Api::"ledger.post"') == [
        ("sa:web/web", "rbac", "pod:app/api"),
        ("pod:app/api", "identity", "sa:app/api"),
        ("sa:app/api", "identity", 'Service::"api"'),
        ('Service::"api"', "cedar", 'Api::"ledger.post"'),
    ]
    lateral = result["scenarios"][0]["lateral_movement"]
    # api could try the ledger service and its database; the policy refuses both
    assert lateral["blocked"] == ['Database::"ledger-db"', 'Service::"ledger"']
    assert lateral["resistance"] == pytest.approx(2 / 3)


def test_stolen_web_token_stays_at_the_api() -> None:
    result = run(estate(), "stolen-token", 'Service::"web"')
    scenario = result["scenarios"][0]
    reached = {row["node"] for row in scenario["blast_radius"]["reached"]}
    assert reached == {'Api::"api.orders"'}  # an SVID is not the Kubernetes account
    assert scenario["tier0_paths"] == {}


def test_batch_reads_secrets_everywhere_and_authorization_cannot_help() -> None:
    result = run(estate(), "rogue-workload", "spiffe://bank.test/ns/core/sa/batch")
    scenario = result["scenarios"][0]
    assert hops(result, 'Database::"ledger-db"') == [
        ("sa:core/batch", "rbac", "secrets:core"),
        ("secrets:core", "rbac", "sa:core/ledger"),
        ("sa:core/ledger", "identity", 'Service::"ledger"'),
        ('Service::"ledger"', "cedar", 'Database::"ledger-db"'),
    ]
    assert {"secrets:app", "secrets:core", "secrets:web"} <= set(scenario["tier0_paths"])
    assert scenario["lateral_movement"]["blocked"] == []  # RBAC alone gets there


def test_poisoned_pipeline_releases_api_then_posts() -> None:
    assert exchange_pattern(RULE).match("spiffe://bank.test/ci/app/deploy")
    result = run(estate(), "poisoned-pipeline", "deploy")
    assert result["scenarios"][0]["start_nodes"] == ['CiJob::"deployer"']
    assert hops(result, 'Api::"ledger.post"') == [
        ('CiJob::"deployer"', "cedar", 'Service::"api"'),
        ('Service::"api"', "cedar", 'Api::"ledger.post"'),
    ]


def test_a_rule_with_an_unpinned_claim_can_issue_any_matching_id() -> None:
    loose = ExchangeRuleSettings(
        name="any",
        issuer="https://ci.bank.test",
        claims={"repository": "bank/*"},
        spiffe_id="spiffe://bank.test/ci/{repository}/deploy",
    )
    pattern = exchange_pattern(loose)
    assert pattern.match("spiffe://bank.test/ci/bank/app/deploy")
    assert not pattern.match("spiffe://bank.test/ci/other/app/deploy")


def test_observed_flow_the_policy_now_refuses_counts_as_blocked() -> None:
    """batch called the ledger once (flows.json); the policy has no such permit and the
    network would refuse it now, so the flow is the only open edge, and it is denied."""
    graph_result = run(estate(), "stolen-token", 'Service::"batch"')
    scenario = graph_result["scenarios"][0]
    assert 'Api::"ledger.post"' in scenario["lateral_movement"]["blocked"]


def test_all_and_the_candidate_bundle(tmp_path: Path) -> None:
    env = {
        "TRUSTPLANE_STATE_DIR": str(tmp_path / "none"),
        "TRUSTPLANE_IDENTITY__EXCHANGE_RULES": json.dumps([RULE.model_dump()]),
    }
    page = tmp_path / "paths.html"
    args = ["-b", str(ESTATE / "bundle"), "-m", str(ESTATE / "manifests")]
    args += ["--flows", str(ESTATE / "flows.json")]
    done = run_cli(
        "simulate",
        "--all",
        *args,
        "--candidate",
        str(ESTATE / "candidate"),
        "--html",
        str(page),
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    starts = {(s["scenario"], s["start"]) for s in doc["scenarios"]}
    assert ("stolen-token", 'User::"ops"') in starts
    assert ("rogue-workload", "spiffe://bank.test/ns/app/sa/api") in starts
    assert ("poisoned-pipeline", "deploy") in starts
    now, then = doc["lateral_movement"], doc["candidate"]["lateral_movement"]
    # Without api → ledger.post the candidate blocks more of the same paths.
    assert then["paths_without_authz"] == now["paths_without_authz"]
    assert then["blocked_by_authz"] > now["blocked_by_authz"]
    text = page.read_text()
    assert text.startswith("<!doctype html>") and "<svg" in text
    markers = re.findall(r'marker id="([^"]+)"', text)
    assert len(markers) == len(doc["scenarios"]) == len(set(markers))  # one picture each
    for svg in re.findall(r"<svg.*?</svg>", text, re.S):
        ElementTree.fromstring(svg)  # well-formed
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_unknown_starting_points_are_refused_clearly(tmp_path: Path) -> None:
    env = {"TRUSTPLANE_STATE_DIR": str(tmp_path / "none")}
    args = ["-b", str(ESTATE / "bundle"), "-m", str(ESTATE / "manifests")]
    done = run_cli("simulate", "stolen-token", "User:nobody", *args, env=env)
    assert done.returncode == 2
    assert 'User::"nobody" is not a principal of this estate' in done.stderr
    done = run_cli("simulate", "poisoned-pipeline", "nope", *args, env=env)
    assert done.returncode == 2 and "no token-exchange rule named 'nope'" in done.stderr


def test_candidate_manifests_show_their_effect(tmp_path: Path) -> None:
    """Without the web → app exec binding the rogue web workload no longer reaches the ledger
    API (the --candidate DIR of manifests; the CLI runs the same `run`)."""
    for name in ("namespaces.yaml", "workloads.yaml", "network.yaml"):
        (tmp_path / name).write_text((ESTATE / "manifests" / name).read_text())
    rbac = (ESTATE / "manifests" / "rbac.yaml").read_text().split("\n---\n")
    kept = [doc for doc in rbac if "web-debugs-app" not in doc]
    (tmp_path / "rbac.yaml").write_text("\n---\n".join(kept))
    current = estate()
    candidate = estate()
    candidate.k8s = read_estate(load_objects([tmp_path]))
    start = "spiffe://bank.test/ns/web/sa/web"
    before = run(current, "rogue-workload", start)["scenarios"][0]
    after = run(candidate, "rogue-workload", start)["scenarios"][0]
    assert 'Api::"ledger.post"' in before["tier0_paths"]
    assert after["tier0_paths"] == {}
    assert after["blast_radius"]["count"] < before["blast_radius"]["count"]


def test_a_saved_simulation_is_the_scorecards_lateral_movement(tmp_path: Path) -> None:
    env = {
        "TRUSTPLANE_STATE_DIR": str(tmp_path / "state"),
        "TRUSTPLANE_IDENTITY__EXCHANGE_RULES": json.dumps([RULE.model_dump()]),
    }
    assert run_cli("init", env=env).returncode == 0
    args = ["-b", str(ESTATE / "bundle"), "-m", str(ESTATE / "manifests")]
    args += ["--flows", str(ESTATE / "flows.json")]
    done = run_cli("simulate", "--all", *args, "--save", "--json", env=env)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)["lateral_movement"]
    card = run_cli("scorecard", "--json", env=env)
    assert card.returncode == 0, card.stderr
    scored = {f["key"]: f for f in json.loads(card.stdout)["figures"]}
    lateral = scored["lateral_movement"]
    assert lateral["value"] == pytest.approx(figures["resistance"])
    assert (
        f"{figures['blocked_by_authz']} of {figures['paths_without_authz']}"
        in (lateral["evidence"])
    )
    left = figures["paths_without_authz"] - figures["blocked_by_authz"]
    assert scored["false_negatives"]["value"] == left

    nowhere = {"TRUSTPLANE_STATE_DIR": str(tmp_path / "none")}
    refused = run_cli("simulate", "--all", *args, "--save", env=nowhere)
    assert refused.returncode == 2 and "no trustplane store" in refused.stderr
