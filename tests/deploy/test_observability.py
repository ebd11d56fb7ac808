"""The shipped Prometheus rules and Grafana dashboards (deploy/): the rules pass `promtool check
rules` and their own unit tests (`promtool test rules`), the dashboards load, their queries
parse as PromQL, and rules and dashboards ask only for metrics a real `trustplane serve`
exports (names read from its /metrics) or that the rules themselves record."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SHOP
from tests.support import REPO, required_binary, running_server

RULES = REPO / "deploy" / "prometheus" / "trustplane-rules.yaml"
RULE_TESTS = sorted((REPO / "deploy" / "prometheus" / "tests").glob("*.yaml"))
DASHBOARDS = sorted((REPO / "deploy" / "grafana").glob("*.json"))
NAME = re.compile(r"\btrustplane[_:][A-Za-z0-9_:]*")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [required_binary("promtool"), *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Every sample name a serving trustplane exposes (families without samples yet count:
    their HELP and TYPE lines are there, and their samples come with traffic)."""
    state = tmp_path_factory.mktemp("state")
    url = f"sqlite:///{state / 'trustplane.db'}"
    with running_server(state, url, SHOP, policy__watch="false") as server:
        text = server.client.get("/metrics").text
    names = set()
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    yield names


def rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression) of every query of every shipped dashboard."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                found.append((path.name, panel["title"], target["expr"]))
    return found


def test_the_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    assert RULE_TESTS
    done = promtool("test", "rules", *map(str, RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_and_has_a_runbook() -> None:
    tested = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested.update(
                t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")
            )
    operations = (REPO / "docs" / "operations.md").read_text()
    alerts = [rule for rule in rules() if "alert" in rule]
    assert alerts
    for rule in alerts:
        assert rule["alert"] in tested, f"{rule['alert']} never fires in a promtool test"
        assert rule["labels"]["severity"] in ("page", "ticket")
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {rule['alert']}" in operations and anchor == rule["alert"].lower()


def test_the_dashboards_load_and_their_queries_parse(tmp_path: Path) -> None:
    assert {p.name for p in DASHBOARDS} == {"executive.json", "oncall.json"}
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"].startswith("trustplane-") and board["panels"]
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids))
    # promtool parses every expression, as a recording rule of a throwaway file.
    queries = dashboard_queries()
    document = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, (_, _, expr) in enumerate(queries)
                ],
            }
        ]
    }
    check = tmp_path / "queries.yaml"
    check.write_text(yaml.safe_dump(document))
    done = promtool("check", "rules", str(check))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_and_dashboards_ask_only_for_metrics_trustplane_exports(
    exported: set[str],
) -> None:
    known = exported | recorded()
    wanted = {(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in rules()}
    wanted |= {(f"{board}: {title}", expr) for board, title, expr in dashboard_queries()}
    unknown = sorted(
        f"{where}: {name}"
        for where, expr in wanted
        for name in NAME.findall(expr)
        if name not in known
    )
    assert not unknown, "\n".join(unknown)
    assert "trustplane_bundle_info" in exported and "trustplane_ledger_records" in exported
