"""Impact replay and drift through a real server (SQLite and PostgreSQL): traffic on the example
estate is recorded, then replayed by the CLI from the store and through `--url` against the
bundle that decided it (nothing flips) and a crafted candidate (exactly the expected flips, and
`--fail-on` gives CI its exit code); an edit of the served bundle whose tests fail is refused,
so the active revision and the directory part: the periodic check exports the drift gauge,
records the incident once (store and ledger), `policy drift` names the file, and the incident
clears when the edit is undone."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import SHOP
from tests.support import Server, run_cli, running_server, wait_for
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions

pytestmark = pytest.mark.slow

CTX = {"mfa": True, "auth_age_seconds": 120}


@pytest.fixture(scope="module")
def estate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example estate in a git working tree (committed), as bundles are kept."""
    target = tmp_path_factory.mktemp("bundle") / "shop"
    shutil.copytree(SHOP, target)
    for args in (("init", "-q"), ("add", "."), ("commit", "-qm", "shop")):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@x", "-C", str(target), *args],
            check=True,
            capture_output=True,
        )
    return target


@pytest.fixture(scope="module")
def server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, estate: Path
) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        estate,
        ledger__durability="sync",
        policy__drift_check_seconds="0.3",
    ) as srv:
        yield srv


def ask(server: Server, user: str, action: str, resource: tuple[str, str], **ctx: Any) -> bool:
    body = {
        "subject": {"type": "User", "id": user},
        "action": {"name": action},
        "resource": {"type": resource[0], "id": resource[1]},
        "context": {**CTX, **ctx},
    }
    answer = server.client.post("/access/v1/evaluation", json=body)
    assert answer.status_code == 200, answer.text
    return bool(answer.json()["decision"])


def cli(server: Server, *args: str, code: int = 0) -> Any:
    done = run_cli(*args, env=server.env)
    assert done.returncode == code, done.stdout + done.stderr
    return json.loads(done.stdout) if "--json" in args else done.stdout


def candidate(directory: Path) -> Path:
    """The shop with forbid-large-refunds enforced and bob allowed to refund."""
    shutil.copytree(SHOP, directory)
    (directory / "tests" / "observe.yaml").unlink()  # its tests expect the policy observed
    guardrails = directory / "guardrails.cedar"
    guardrails.write_text(
        guardrails.read_text().replace('@mode("observe")\n', "", 1)
        + '\n@id("bob-refunds")\n@owner("payments")\npermit (principal == User::"bob", '
        'action == Action::"payments:refund", resource == Api::"payments.refund");\n'
    )
    return directory


REFUND = ("Api", "payments.refund")


def test_replay_flips_exactly_and_gives_ci_an_exit_code(server: Server, tmp_path: Path) -> None:
    big = [
        ask(server, "erin", "payments:refund", REFUND, amount_cents=60_000 + i) for i in range(5)
    ]
    small = [ask(server, "erin", "payments:refund", REFUND, amount_cents=100) for _ in range(3)]
    bob = [ask(server, "bob", "payments:refund", REFUND, amount_cents=100) for _ in range(2)]
    logs = ask(server, "alice", "ops:read-logs", ("Service", "payments"))
    assert all(big + small) and not any(bob) and logs
    served = Path(server.env["TRUSTPLANE_POLICY__BUNDLE_DIR"])

    same = cli(server, "policy", "impact", "--bundle", str(served), "--since", "1h", "--json")
    assert (same["records"], same["replayed"], same["flips"]) == (11, 11, 0)

    new = candidate(tmp_path / "candidate")
    report = cli(server, "policy", "impact", "--bundle", str(new), "--json")
    assert (report["replayed"], report["allow_to_deny"], report["deny_to_allow"]) == (11, 5, 2)
    policies = {g["policy"]: g for g in report["by_policy"]}
    assert policies["forbid-large-refunds"]["allow_to_deny"] == 5
    assert policies["bob-refunds"]["deny_to_allow"] == 2
    assert {g["principal"]: g["flips"] for g in report["by_principal"]} == {
        'User::"erin"': 5,
        'User::"bob"': 2,
    }
    assert report["by_resource"][0]["resource"] == 'Api::"payments.refund"'
    example = policies["forbid-large-refunds"]["examples"][0]
    assert (example["from"], example["to"], example["action"]) == (
        "allow",
        "deny",
        'Action::"payments:refund"',
    )

    remote = cli(server, "policy", "impact", "--bundle", str(new), "--url", server.url, "--json")
    assert (remote["replayed"], remote["allow_to_deny"], remote["deny_to_allow"]) == (11, 5, 2)

    failing = cli(
        server, "policy", "impact", "--bundle", str(new), "--fail-on", "new-denies", code=1
    )
    assert "5 allow→deny" in failing and "forbid-large-refunds" in failing
    cli(server, "policy", "impact", "--bundle", str(served), "--fail-on", "any-flip")
    refused = run_cli("policy", "impact", "--bundle", str(new), "--fail-on", "x", env=server.env)
    assert refused.returncode == 2 and "--fail-on must be one of" in refused.stderr


def drift_records(server: Server) -> list[dict[str, Any]]:
    engine = create_store_engine(server.env["TRUSTPLANE_STORE__URL"])
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(decisions.c.record).where(decisions.c.kind == "admin")
            ).all()
    finally:
        engine.dispose()
    records = [json.loads(bytes(row.record)) for row in rows]
    return [r for r in records if r["action"].startswith("bundle:drift")]


def drift_gauge(server: Server) -> float:
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith("trustplane_policy_drift "):
            return float(line.split()[1])
    return -1.0


def test_an_unactivated_edit_is_drift_until_undone(server: Server) -> None:
    served = Path(server.env["TRUSTPLANE_POLICY__BUNDLE_DIR"])
    assert cli(server, "policy", "drift", "--json")["in_sync"] is True
    wait_for(lambda: drift_gauge(server) == 0.0)
    humans = served / "humans.cedar"
    original = humans.read_text()
    # Support may no longer refund: valid Cedar, but the bundle's own tests now fail.
    humans.write_text(
        original.replace(
            'action == Action::"payments:refund"', 'action == Action::"payments:read"', 1
        )
    )
    wait_for(lambda: "refused" in server.log(), timeout=20)
    wait_for(lambda: drift_gauge(server) == 1.0, timeout=20)

    found = cli(server, "policy", "drift", "--json", code=1)
    assert (found["in_sync"], found["changed"], found["added"], found["removed"]) == (
        False,
        ["humans.cedar"],
        [],
        [],
    )
    people = cli(server, "policy", "drift", code=1)
    assert "~ humans.cedar (changed)" in people
    # The edit is not committed: git's HEAD still says what is active.
    committed = cli(server, "policy", "drift", "--source", "HEAD", "--json")
    assert (committed["in_sync"], committed["source"]) == (True, "git:HEAD")
    remote = cli(server, "policy", "drift", "--url", server.url, "--json", code=1)
    assert remote["changed"] == ["humans.cedar"]
    remote_history = cli(server, "policy", "drift", "--history", "--url", server.url, "--json")
    assert remote_history["incidents"][0]["cleared_at"] is None
    records = wait_for(lambda: drift_records(server))
    assert [r["action"] for r in records] == ["bundle:drift"]  # recorded once, not per check
    assert records[0]["details"]["changed"] == ["humans.cedar"]

    humans.write_text(original)
    wait_for(lambda: drift_gauge(server) == 0.0, timeout=20)
    wait_for(lambda: len(drift_records(server)) == 2)
    assert [r["action"] for r in drift_records(server)] == ["bundle:drift", "bundle:drift-cleared"]
    assert cli(server, "policy", "drift", "--json")["in_sync"] is True

    history = cli(server, "policy", "drift", "--history", "--json")
    month = datetime.now(UTC).strftime("%Y-%m")
    assert history["months"] == [{"month": month, "incidents": 1}]
    (incident,) = history["incidents"]
    assert incident["changed"] == ["humans.cedar"] and incident["cleared_at"] is not None
    assert f"{month}: 1 incident(s)" in cli(server, "policy", "drift", "--history")


def test_suggestions_validate_and_would_allow_what_was_observed(
    server: Server, tmp_path: Path
) -> None:
    invoices = ("Api", "billing.invoices")
    denied = [ask(server, "dave", "billing:read", invoices) for _ in range(3)]
    bob = ask(server, "bob", "payments:read", ("Api", "payments.transactions"))
    assert not any(denied) and not bob
    written = tmp_path / "suggested.cedar"
    doc = cli(server, "policy", "suggest", "--since", "1h", "--out", str(written), "--json")
    assert doc["written"] == str(written) and all(c["valid"] for c in doc["candidates"])
    dave = next(c for c in doc["candidates"] if c["principals"] == ['User::"dave"'])
    assert (dave["decisions"], dave["denied_by_default"]) == (3, 3)
    assert dave["actions"] == ['Action::"billing:read"']
    assert dave["first_seen"] <= dave["last_seen"]
    text = written.read_text()
    assert f'@id("{dave["id"]}")' in text and '@mode("observe")' in text
    coverage = doc["coverage"]
    assert coverage["default_deny"] >= 2 and 0 < coverage["share"] < 1
    assert {"action": 'Action::"billing:read"', "resource": 'Api::"billing.invoices"'} in (
        coverage["uncovered"]
    )
    served = Path(server.env["TRUSTPLANE_POLICY__BUNDLE_DIR"])
    inside = run_cli("policy", "suggest", "--out", str(served / "s.cedar"), env=server.env)
    assert inside.returncode == 2 and "it would be activated" in inside.stderr
    assert not (served / "s.cedar").exists()
    people = cli(server, "policy", "suggest", "--since", "1h", "--principal-type", "User")
    assert "entitlement coverage:" in people and "permit (" in people

    # Added to the bundle, the candidates validate, pass the bundle's tests (observe mode
    # changes no answer) and would allow every decision they came from.
    trial = tmp_path / "trial"
    shutil.copytree(served, trial)
    shutil.copy(written, trial / "suggested.cedar")
    cli(server, "policy", "test", str(trial))
    checked = run_cli(
        "check",
        "--bundle",
        str(trial),
        "--principal",
        'User::"dave"',
        "--action",
        "billing:read",
        "--resource",
        'Api::"billing.invoices"',
        "--context",
        json.dumps(CTX),
        "--json",
    )
    answer = json.loads(checked.stdout)
    assert answer["decision"] == "deny" and answer["shadow"]["decision"] == "allow"

    remote = cli(
        server, "policy", "suggest", "--url", server.url, "--bundle", str(served), "--json"
    )
    assert dave["id"] in {c["id"] for c in remote["candidates"]}
