"""Promotion and canary through a real server (SQLite and PostgreSQL), on the example estate
with 200 more support people, its bundle directory a git working tree the server watches:

observe → `policy promote --canary 50` refused while the gate fails (measured from the store) →
labels → promoted through the admin API (the @mode edit and its diff) → the server reloads it →
the enforced cohort is within its binomial tolerance of half, every record names its cohort,
and `rollout status` reads each cohort apart → false positives in the enforced cohort fail the
gate → `policy promote` to enforce refused, then overridden with a reason (recorded in the
ledger) and committed on a git branch."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.rollout.test_rollout_server import admin_records, estate, refund
from tests.support import Server, run_cli, running_server, wait_for
from trustplane.decision.canary import ENFORCED, cohort
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions

pytestmark = pytest.mark.slow

POLICY = "forbid-large-refunds"
PEOPLE = [f"agent{i:03d}" for i in range(200)]
GIT = {
    "GIT_AUTHOR_NAME": "Rollout Test",
    "GIT_AUTHOR_EMAIL": "rollout@example.test",
    "GIT_COMMITTER_NAME": "Rollout Test",
    "GIT_COMMITTER_EMAIL": "rollout@example.test",
}


def git(directory: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(directory), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **GIT},
        check=True,
    )
    return done.stdout.strip()


def canary_estate(directory: Path) -> Path:
    """The rollout estate with 200 support agents, its observe test dropped (a promotion
    changes what it expects), as a git working tree with one commit."""
    estate(directory)
    entities = json.loads((directory / "entities.json").read_text())
    support = [{"type": "Role", "id": "support"}]
    entities += [
        {"uid": {"type": "User", "id": p}, "attrs": {"email": f"{p}@x"}, "parents": support}
        for p in PEOPLE
    ]
    (directory / "entities.json").write_text(json.dumps(entities))
    (directory / "tests" / "observe.yaml").unlink()
    git(directory, "init", "-q", "-b", "main")
    git(directory, "add", "-A")
    git(directory, "commit", "-q", "-m", "estate")
    return directory


@pytest.fixture(scope="module")
def server(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    bundle = canary_estate(tmp_path_factory.mktemp("bundle") / "shop")
    with running_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        bundle,
        ledger__durability="sync",
    ) as srv:
        yield srv


def bundle_dir(server: Server) -> Path:
    return Path(server.env["TRUSTPLANE_POLICY__BUNDLE_DIR"])


def promote(server: Server, *args: str, url: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**server.env, **GIT}
    extra = ("--url", server.url) if url else ()
    return run_cli("policy", "promote", POLICY, *args, *extra, env=env)


def status(server: Server) -> dict[str, Any]:
    env = {**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url}
    done = run_cli("rollout", "status", "--json", env=env)
    assert done.returncode in (0, 1), done.stderr
    document = json.loads(done.stdout)
    assert done.returncode == (
        0 if all(p["verdict"] == "pass" for p in document["policies"]) else 1
    )
    (policy,) = [p for p in document["policies"] if p["policy_id"] == POLICY]
    return dict(policy)


def active_mode(server: Server) -> tuple[str, str | None]:
    bundle = server.client.get("/v1/bundle", headers=server.admin).json()["active"]
    (policy,) = [p for p in bundle["policies"] if p["id"] == POLICY]
    return policy["mode"], policy.get("canary")


def records_of(server: Server, ids: list[str]) -> dict[str, dict[str, Any]]:
    engine = create_store_engine(server.env["TRUSTPLANE_STORE__URL"])
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(decisions.c.decision_id, decisions.c.record).where(
                    decisions.c.decision_id.in_(ids)
                )
            ).all()
    finally:
        engine.dispose()
    return {row.decision_id: json.loads(bytes(row.record)) for row in rows}


def test_observe_to_canary_to_enforce(server: Server) -> None:
    directory = bundle_dir(server)
    source = directory / "guardrails.cedar"
    before = source.read_text()
    for person in PEOPLE[:16]:
        assert refund(server, person, 90000)["decision"] is True  # observed: would-denies
    for person in PEOPLE[:10]:
        refund(server, person, 100)

    # The gate fails (no labels): refused, measured from the store, nothing edited.
    refused = promote(server, "--canary", "50", url=False)
    assert refused.returncode == 1, refused.stderr
    assert f"the promotion gate of {POLICY} fails" in refused.stderr
    assert "0 would-denies labelled, fewer than 8" in refused.stderr
    assert source.read_text() == before
    no_reason = promote(server, "--canary", "50", "--override")
    assert no_reason.returncode == 2 and "--override needs --reason" in no_reason.stderr

    env = {**server.env, "TRUSTPLANE_CLI__SERVER_URL": server.url}
    labelled = run_cli(
        "rollout", "label", "--action", 'Action::"payments:refund"', "--policy", POLICY,
        "--verdict", "true-positive", "--note", "above the limit", env=env,
    )  # fmt: skip
    assert labelled.returncode == 0, labelled.stderr
    assert status(server)["verdict"] == "pass"

    done = promote(server, "--canary", "50")
    assert done.returncode == 0, done.stderr
    assert '-@mode("observe")' in done.stdout and '+@mode("canary")' in done.stdout
    assert '+@canary("50")' in done.stdout and "--- a/guardrails.cedar" in done.stdout
    assert '@mode("canary")\n@canary("50")\n@tier("0")' in source.read_text()
    wait_for(lambda: active_mode(server) == ("canary", 50.0), timeout=30)
    (record,) = admin_records(server, "rollout:promote")
    assert record["details"]["gate"] == "pass" and record["details"]["override"] is False

    # Every agent once: the enforced cohort is denied, the rest observed; the split is within
    # its binomial tolerance and every record names the cohort.
    answers = {person: refund(server, person, 95000) for person in PEOPLE}
    expected = {p: cohort(f'User::"{p}"', POLICY, 50) for p in PEOPLE}
    for person, answer in answers.items():
        assert answer["decision"] is (expected[person] != ENFORCED), person
    enforced = sum(1 for c in expected.values() if c == ENFORCED)
    n = len(PEOPLE)
    assert abs(enforced - n / 2) <= 4.5 * math.sqrt(n * 0.25)
    ids = {p: a["context"]["decision_id"] for p, a in answers.items()}
    records = records_of(server, list(ids.values()))
    for person, decision_id in ids.items():
        assert records[decision_id]["canary"] == {POLICY: expected[person]}

    figures = status(server)
    assert figures["mode"] == "canary" and figures["canary_percent"] == 50
    cohorts = figures["cohorts"]
    assert cohorts["enforced"]["would_denies"] == enforced
    assert cohorts["observed"]["would_denies"] == 16 + n - enforced
    assert figures["verdict"] == "pass"
    metrics = server.client.get("/metrics").text
    gauge = "trustplane_rollout_cohort_would_denies"
    assert f'{gauge}{{cohort="enforced",policy="{POLICY}"}} {float(enforced)}' in metrics

    # False positives among the enforced cohort's denials fail the gate on that cohort.
    denied = [ids[p] for p in PEOPLE if expected[p] == ENFORCED][:8]  # min_labels: judged
    labelled = run_cli(
        "rollout", "label", *denied, "--policy", POLICY, "--verdict", "false-positive",
        "--note", "agents may refund large orders during the sale", env=env,
    )  # fmt: skip
    assert labelled.returncode == 0, labelled.stderr
    figures = status(server)
    assert figures["verdict"] == "fail"
    assert any(r.startswith("enforced cohort: false-positive rate") for r in figures["failing"])

    refused = promote(server)
    assert refused.returncode == 1 and "enforced cohort" in refused.stderr
    done = promote(
        server, "--override", "--reason", "sale ends tonight; finance accepts the risk",
        "--commit", "--branch", "enforce-large-refunds", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["from"], result["to"], result["override"]) == ("canary", "enforce", True)
    assert result["committed"]["branch"] == "enforce-large-refunds"
    assert git(directory, "rev-parse", "--abbrev-ref", "HEAD") == "enforce-large-refunds"
    assert git(directory, "log", "-1", "--format=%s").startswith(f"policy {POLICY}: canary →")
    assert git(directory, "status", "--porcelain") == ""
    text = source.read_text()
    assert '@mode("enforce")' in text and "@canary" not in text
    wait_for(lambda: active_mode(server) == ("enforce", None), timeout=30)
    assert refund(server, PEOPLE[0], 95000)["decision"] is False

    override = admin_records(server, "rollout:promote")[-1]
    assert override["reason"] == "sale ends tonight; finance accepts the risk"
    assert override["details"]["override"] is True and override["details"]["gate"] == "fail"
    assert override["target"] == f"policy:{POLICY}"

    # The ledger, evidence rows included, still verifies.
    verify = run_cli("audit", "verify", env=server.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_promotion_errors_are_one_line(server: Server, tmp_path: Path) -> None:
    env = {**server.env, **GIT}
    unknown = run_cli("policy", "promote", "no-such-policy", "--url", server.url, env=env)
    assert unknown.returncode == 2 and "no policy no-such-policy in" in unknown.stderr
    plain = tmp_path / "plain"
    shutil.copytree(bundle_dir(server), plain, ignore=shutil.ignore_patterns(".git"))
    guardrails = plain / "guardrails.cedar"
    guardrails.write_text(guardrails.read_text().replace('@mode("enforce")', '@mode("observe")', 1))
    not_git = run_cli(
        "policy", "promote", POLICY, "--bundle", str(plain), "--override", "--reason", "r",
        "--commit", "--url", server.url, env=env,
    )  # fmt: skip
    assert not_git.returncode == 2, not_git.stderr
    assert f"{plain} is not in a git working tree: --commit needs one" in not_git.stderr
    bad = run_cli(
        "policy", "promote", POLICY, "--bundle", str(plain), "--canary", "150",
        "--url", server.url, env=env,
    )  # fmt: skip
    assert bad.returncode == 2 and "percentage above 0 and below 100" in bad.stderr
