"""The rollout plane through a real server (SQLite and PostgreSQL): would-denies of the example
estate's observe-mode policy are generated, reviewed from a stratified queue, labelled through
the CLI (by id prefix and in bulk by principal, each labelling in the ledger with who and why),
and the policy's promotion gate fails, then passes once the labels bound its false-positive
rate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import SHOP
from tests.support import Server, run_cli, running_server
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions

pytestmark = pytest.mark.slow

POLICY = "forbid-large-refunds"
CTX = {"mfa": True, "auth_age_seconds": 120, "risk_score": 10}
ROLLOUT_YAML = """\
tiers:
  "0":
    min_days: 0
    min_decisions: 10
    min_labels: 8
    max_false_positive: 0.35
    min_attributable: 0.9
"""
SUPPORT = [{"type": "Role", "id": "support"}]
MORE_PEOPLE = [
    {"uid": {"type": "User", "id": "frank"}, "attrs": {"email": "f@x"}, "parents": SUPPORT},
    {
        "uid": {"type": "User", "id": "kiosk"},
        "attrs": {"email": "kiosk@x", "shared": True},
        "parents": SUPPORT,
    },
]


def estate(directory: Path) -> Path:
    """The example shop, with two more support accounts (one shared) and a rollout.yaml whose
    Tier 0 gate a test can meet in seconds."""
    shutil.copytree(SHOP, directory)
    entities = json.loads((directory / "entities.json").read_text())
    (directory / "entities.json").write_text(json.dumps(entities + MORE_PEOPLE))
    schema = directory / "schema.cedarschema"
    schema.write_text(
        schema.read_text().replace("  email: String,\n};", "  email: String,\n  shared?: Bool,\n};")
    )
    (directory / "rollout.yaml").write_text(ROLLOUT_YAML)
    return directory


@pytest.fixture(scope="module")
def server(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    bundle = estate(tmp_path_factory.mktemp("bundle") / "shop")
    with running_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        bundle,
        policy__watch="false",
        ledger__durability="sync",
    ) as srv:
        yield srv


def refund(server: Server, user: str, amount: int) -> dict[str, Any]:
    body = {
        "subject": {"type": "User", "id": user},
        "action": {"name": "payments:refund"},
        "resource": {"type": "Api", "id": "payments.refund"},
        "context": {**CTX, "amount_cents": amount},
    }
    answer = server.client.post("/access/v1/evaluation", json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def cli(server: Server, *args: str, code: int = 0) -> Any:
    """The command's output (parsed with --json); `code`: the exit code it must end with
    (`rollout status` exits 1 while a gate fails)."""
    done = run_cli(*args, env={**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url})
    assert done.returncode == code, done.stderr
    return json.loads(done.stdout) if "--json" in args else done.stdout


def admin_records(server: Server, action: str) -> list[dict[str, Any]]:
    engine = create_store_engine(server.env["TRUSTPLANE_STORE__URL"])
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(decisions.c.record)
                .where(decisions.c.kind == "admin")
                .order_by(decisions.c.seq)
            ).all()
    finally:
        engine.dispose()
    records = [json.loads(bytes(row.record)) for row in rows]
    return [r for r in records if r["action"] == action]


def test_would_denies_are_labelled_and_the_gate_fails_then_passes(server: Server) -> None:
    erin = [refund(server, "erin", 60000 + i) for i in range(12)]
    frank = [refund(server, "frank", 70000 + i) for i in range(3)]
    refund(server, "kiosk", 80000)
    for _ in range(4):
        refund(server, "erin", 1000)  # allowed and would stay allowed: not a would-deny
    assert all(answer["decision"] is True for answer in erin + frank)

    status = cli(server, "rollout", "status", "--json", code=1)
    (policy,) = status["policies"]
    assert policy["policy_id"] == POLICY and policy["tier"] == "0"
    assert (policy["would_denies"], policy["labelled"], policy["decisions"]) == (16, 0, 20)
    assert policy["attributable_share"] == pytest.approx(15 / 16)  # kiosk is shared
    assert policy["verdict"] == "fail"
    assert "0 would-denies labelled, fewer than 8" in policy["failing"]
    assert any("false-positive rate up to 100.0%" in r for r in policy["failing"])
    assert len(policy["failing"]) == 2
    people = cli(server, "rollout", "status", code=1)
    assert "fail" in people and "0 would-denies labelled, fewer than 8" in people

    queue = cli(server, "rollout", "queue", POLICY, "--limit", "3", "--json")
    assert queue["unlabelled"] == 16
    shown = [item["principal"] for item in queue["queue"]]
    assert sorted(shown) == ['User::"erin"', 'User::"frank"', 'User::"kiosk"']  # one each
    first = queue["queue"][0]
    assert "allowed by support-refunds-with-mfa" in first["explanation"]
    assert f"{POLICY} (observe) would deny it" in first["explanation"]
    assert first["context"]["amount_cents"] >= 60000

    frank_ids = [answer["context"]["decision_id"] for answer in frank]
    labelled = cli(
        server,
        "rollout",
        "label",
        *(decision_id[:13] for decision_id in frank_ids),  # unique prefixes
        "--verdict",
        "false-positive",
        "--note",
        "frank is a refunds lead: large refunds are his job",
        "--json",
    )
    assert sorted(label["decision_id"] for label in labelled["labelled"]) == sorted(frank_ids)
    bulk = cli(
        server,
        "rollout",
        "label",
        "--principal",
        'User::"erin"',
        "--policy",
        POLICY,
        "--verdict",
        "true-positive",
        "--note",
        "erin must use the finance approval flow",
        "--json",
    )
    assert len(bulk["labelled"]) == 12

    status = cli(server, "rollout", "status", "--json", code=1)
    (policy,) = status["policies"]
    assert (policy["labelled"], policy["false_positives"]) == (15, 3)
    rate = policy["false_positive_rate"]
    assert rate["estimate"] == pytest.approx(0.2)
    # 3 false positives in 15: the point estimate (20%) is within the 35% bound, the upper
    # bound of its interval (about 45%) is not, and the gate goes by the upper bound.
    assert rate["low"] < 0.2 < 0.35 < rate["high"]
    assert policy["verdict"] == "fail"
    assert [r for r in policy["failing"] if "false-positive" in r]

    more = [refund(server, "erin", 90000 + i) for i in range(10)]
    cli(
        server,
        "rollout",
        "label",
        *(answer["context"]["decision_id"] for answer in more),
        "--verdict",
        "true-positive",
        "--note",
        "above the limit, right to deny",
    )
    status = cli(server, "rollout", "status", "--json")
    (policy,) = status["policies"]
    assert (policy["labelled"], policy["false_positives"]) == (25, 3)
    assert policy["false_positive_rate"]["high"] < 0.35
    assert policy["verdict"] == "pass" and policy["failing"] == []

    records = admin_records(server, "rollout:label")
    assert len(records) == 3
    assert {r["actor"] for r in records} == {"bootstrap"}
    assert records[0]["reason"] == "frank is a refunds lead: large refunds are his job"
    assert records[0]["target"] == f"policy:{POLICY}"
    assert sorted(records[0]["details"]["decisions"]) == sorted(frank_ids)

    metrics = server.client.get("/metrics").text
    assert f'trustplane_rollout_gate_passing{{policy="{POLICY}"}} 1.0' in metrics
    assert f'trustplane_rollout_labelled{{policy="{POLICY}"}} 25.0' in metrics


def test_the_rest_is_labelled_in_bulk_by_route(server: Server) -> None:
    labelled = cli(
        server,
        "rollout",
        "label",
        "--action",
        'Action::"payments:refund"',
        "--resource",
        'Api::"payments.refund"',
        "--policy",
        POLICY,
        "--verdict",
        "false-positive",
        "--note",
        "the kiosk account is shared: refunds from it are reviewed apart",
        "--json",
    )
    assert [label["principal"] for label in labelled["labelled"]] == ['User::"kiosk"']
    (record,) = admin_records(server, "rollout:label")[-1:]
    assert record["details"]["bulk"]["action"] == 'Action::"payments:refund"'
    env = {**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url}
    again = run_cli(
        "rollout", "label", "--action", 'Action::"payments:refund"', "--policy", POLICY,
        "--verdict", "true-positive", "--note", "n", env=env,
    )  # fmt: skip
    assert again.returncode == 2
    assert f"no unlabelled would-deny of {POLICY} with action" in again.stderr


def test_labels_that_cannot_apply_are_refused_with_the_reason(server: Server) -> None:
    allowed = refund(server, "erin", 100)["context"]["decision_id"]
    env = {**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url}
    args = ("--verdict", "true-positive", "--note", "n")
    done = run_cli("rollout", "label", allowed, *args, env=env)
    assert done.returncode == 2
    assert f"decision {allowed} is not a would-deny" in done.stderr
    done = run_cli("rollout", "label", "ffffffff-0000", *args, env=env)
    assert done.returncode == 2 and "no decision ffffffff-0000" in done.stderr
    done = run_cli("rollout", "label", allowed, "--verdict", "maybe", "--note", "n", env=env)
    assert done.returncode == 2 and "--verdict must be" in done.stderr
    done = run_cli("rollout", "queue", "no-such-policy", env=env)
    assert done.returncode == 2 and "no policy no-such-policy" in done.stderr
