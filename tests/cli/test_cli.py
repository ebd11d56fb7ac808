"""The `trustplane` command line, end to end: real processes, a real server on loopback, a real
store (SQLite and PostgreSQL where the command touches one).

Every CLI call starts a Python process (about a second of imports), so independent calls run
side by side (`run_all`) and each server is started once per test and used for several checks.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, update

from tests.conftest import SHOP
from tests.support import (
    Server,
    authzen,
    free_port,
    run_cli,
    running_server,
    server_env,
    wait_for,
)
from trustplane.decision.policy_bundle import BundleSource
from trustplane.model import AccessRequest, Decision, Effect, EntityRef, new_decision_id
from trustplane.store.database import create_store_engine, migrate
from trustplane.store.tables import checkpoints, decisions
from trustplane.telemetry.checkpoint import NoteSigner
from trustplane.telemetry.ledger import Ledger, decision_entry
from trustplane.telemetry.masking import Masker

pytestmark = pytest.mark.slow

Result = subprocess.CompletedProcess[str]

FRESH = {"mfa": True, "auth_age_seconds": 120, "risk_score": 10}
REFUND = ("--principal", "User:erin", "--action", "payments:refund")
REFUND_API = ("--resource", "Api:payments.refund")
LARGE_REFUND = (*REFUND, *REFUND_API, "--context", json.dumps({**FRESH, "amount_cents": 90000}))
NO_MFA_REFUND = (*REFUND, *REFUND_API, "--context", json.dumps({**FRESH, "mfa": False}))


def cli(*args: str, **kwargs: Any) -> Callable[[], Result]:
    return partial(run_cli, *args, **kwargs)


def run_all(*calls: Callable[[], Result]) -> list[Result]:
    """Run independent CLI processes side by side; results in the order given."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def ok(result: Result, code: int = 0) -> Result:
    assert result.returncode == code, (
        f"exit {result.returncode}, expected {code}\n{result.stdout}\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def usage_error(result: Result) -> str:
    """Exit 2 with a message and no traceback; returns stderr."""
    ok(result, 2)
    assert result.stderr.strip(), "a usage error must say what is wrong"
    return result.stderr


def flat(text: str) -> str:
    """Text with line breaks folded to spaces (long messages wrap at the terminal width)."""
    return " ".join(text.split())


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def policy_ids(reasons: list[dict[str, Any]]) -> list[str]:
    return [r["policy"] for r in reasons]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def bundle_test_count(bundle: Path) -> int:
    return sum(
        len(yaml.safe_load(path.read_text())["tests"]) for path in (bundle / "tests").glob("*.yaml")
    )


def edit_description(bundle: Path, marker: str) -> None:
    """A change every test still passes: one policy description in humans.cedar."""
    path = bundle / "humans.cedar"
    text = path.read_text()
    new = re.sub(
        r'@description\("([^"]*)"\)', lambda m: f'@description("{m[1]} {marker}")', text, count=1
    )
    assert new != text
    path.write_text(new)


# -- check ------------------------------------------------------------------------------------


def test_check_from_flags_allows_and_shows_the_shadow(tmp_path: Path) -> None:
    text, as_doc = run_all(
        cli("check", "--bundle", str(SHOP), *LARGE_REFUND, cwd=tmp_path),
        cli("check", "--bundle", str(SHOP), *LARGE_REFUND, "--json", cwd=tmp_path),
    )

    ok(text, 0)
    assert text.stdout.startswith("ALLOW")
    assert "support-refunds-with-mfa" in text.stdout
    assert "shadow: deny" in text.stdout
    assert "observe-mode policy forbid-large-refunds" in text.stdout
    assert "would change" in text.stdout

    doc = as_json(ok(as_doc, 0))
    assert doc["decision"] == "allow"
    assert policy_ids(doc["reasons"]) == ["support-refunds-with-mfa"]
    assert doc["reasons"][0]["owner"] == "payments"
    assert doc["shadow"]["decision"] == "deny"
    assert policy_ids(doc["shadow"]["would_change"]) == ["forbid-large-refunds"]
    assert doc["shadow"]["would_change"][0]["mode"] == "observe"
    assert doc["request"]["principal"] == {"type": "User", "id": "erin"}
    assert doc["request"]["context"]["amount_cents"] == 90000
    assert doc["revision"] == BundleSource.from_dir(SHOP).revision and doc["decision_id"]


def test_check_reads_the_request_from_a_file_and_from_stdin(tmp_path: Path) -> None:
    # The request shape of the bundle's own tests (tests/mfa.yaml, tests/humans.yaml).
    denied = {
        "principal": {"type": "User", "id": "erin"},
        "action": "payments:refund",
        "resource": {"type": "Api", "id": "payments.refund"},
        "context": {"mfa": False, "auth_age_seconds": 60, "risk_score": 10, "amount_cents": 4999},
    }
    allowed = {
        "principal": {"type": "User", "id": "bob"},
        "action": "inventory:read",
        "resource": {"type": "Api", "id": "inventory.stock"},
        "context": {"mfa": False, "auth_age_seconds": 3600, "risk_score": 10},
    }
    (tmp_path / "denied.json").write_text(json.dumps(denied))
    from_file, from_stdin = run_all(
        cli("check", "-b", str(SHOP), "--request", "@denied.json", cwd=tmp_path),
        cli("check", "-b", str(SHOP), "--request", "-", "--json", input=json.dumps(allowed)),
    )

    ok(from_file, 1)
    assert from_file.stdout.startswith("DENY")
    assert "ALLOW" not in from_file.stdout
    assert "require-fresh-mfa" in from_file.stdout

    doc = as_json(ok(from_stdin, 0))
    assert doc["decision"] == "allow"
    assert policy_ids(doc["reasons"]) == ["dev-read-low-tier-and-non-prod"]
    assert doc["request"]["principal"]["id"] == "bob"
    assert doc["request"]["context"] == allowed["context"]


def test_check_input_errors_are_one_line_usage_errors(tmp_path: Path) -> None:
    bad_json, missing, no_file = run_all(
        cli("check", "-b", str(SHOP), *REFUND, *REFUND_API, "--context", '{"mfa": tru'),
        cli("check", "-b", str(SHOP), *REFUND),
        cli("check", "-b", str(SHOP), "--request", "@nowhere.json", cwd=tmp_path),
    )

    message = usage_error(bad_json)
    assert len(message.strip().splitlines()) == 1, message
    assert message.startswith("error: --context is not valid JSON")

    message = flat(usage_error(missing))
    assert message.endswith("(missing --resource)")

    assert "nowhere.json" in flat(usage_error(no_file))


def test_a_long_context_error_stays_on_one_line() -> None:
    bad_context = '{"mfa": true, "auth_age_seconds": 120 "risk_score": 10}'
    result = run_cli(
        "check",
        "-b",
        str(SHOP),
        *REFUND,
        *REFUND_API,
        "--context",
        bad_context,
        env={"COLUMNS": "80"},
    )
    message = usage_error(result)
    assert "--context is not valid JSON" in message
    assert message.count("\n") == 1, f"a CLI error is one line:\n{message}"


def test_check_names_a_long_determining_policy_in_full(tmp_path: Path) -> None:
    result = ok(
        run_cli("check", "-b", str(SHOP), *NO_MFA_REFUND, env={"COLUMNS": "80"}, cwd=tmp_path), 1
    )
    assert result.stdout.startswith("DENY")
    assert "require-fresh-mfa-for-tier0-and-admin" in result.stdout


# -- policy: validate, test, fmt, sign ------------------------------------------------------


def test_policy_validate_accepts_shop_and_lists_every_problem_of_a_broken_copy(
    shop_copy: Path,
) -> None:
    ci = shop_copy / "ci.cedar"
    ci.write_text(ci.read_text().replace('@owner("platform")\n', "", 1))
    services = shop_copy / "services.cedar"
    services.write_text(services.read_text() + '\n@id("half")\npermit (principal, action\n')
    good, broken = run_all(
        cli("policy", "validate", str(SHOP)),
        cli("policy", "validate", str(shop_copy)),
    )

    policies = sum(p.read_text().count("@id(") for p in SHOP.glob("*.cedar"))
    assert f"shop: {policies} policies valid" in ok(good, 0).stdout

    ok(broken, 1)
    problems = broken.stderr
    assert "2 problem(s)" in problems
    owner = next(line for line in problems.splitlines() if "ci.cedar:" in line)
    assert re.search(r"ci\.cedar:\d+", owner) and "ci-deployer-releases-storefront" in owner
    assert "@owner" in owner
    syntax = next(line for line in problems.splitlines() if "services.cedar:" in line)
    assert re.search(r"services\.cedar:\d+", syntax) and "syntax" in syntax.lower()


def test_policy_test_counts_and_names_a_failing_expectation(shop_copy: Path) -> None:
    observe = shop_copy / "tests" / "observe.yaml"
    text = observe.read_text()
    # The 900.00 refund's shadow is deny; expecting allow must fail and be named.
    observe.write_text(text.replace("    shadow: deny\n", "    shadow: allow\n", 1))
    passing, failing = run_all(
        cli("policy", "test", str(SHOP), "--json"),
        cli("policy", "test", str(shop_copy)),
    )

    total = bundle_test_count(SHOP)
    assert total >= 73
    doc = as_json(ok(passing, 0))
    assert (doc["passed"], doc["failed"]) == (total, 0)
    assert len(doc["results"]) == total and all(r["passed"] for r in doc["results"])

    ok(failing, 1)
    fail_lines = [line for line in failing.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fail_lines) == 1, failing.stdout
    assert "tests/observe.yaml:" in fail_lines[0]
    assert "a 900.00 refund is allowed today" in fail_lines[0]
    assert "expected shadow allow, got deny" in fail_lines[0]
    assert f"{total - 1} passed, 1 failed" in failing.stdout


def test_policy_fmt_checks_reformats_and_keeps_the_bundle_valid(shop_copy: Path) -> None:
    ci = shop_copy / "ci.cedar"
    formatted = ci.read_text()
    messy = formatted.replace(
        'permit (\n  principal == CiJob::"ci-deployer",\n',
        'permit (   principal   ==   CiJob::"ci-deployer",\n',
    )
    assert messy != formatted
    ci.write_text(messy)

    clean, dirty = run_all(
        cli("policy", "fmt", "--check", str(SHOP)),
        cli("policy", "fmt", "--check", str(shop_copy)),
    )
    assert "0 file(s) would reformat" in ok(clean, 0).stdout
    ok(dirty, 1)
    assert f"would reformat {ci}" in dirty.stdout and "1 file(s)" in dirty.stdout
    assert ci.read_text() == messy, "--check must not change files"

    assert f"reformatted {ci}" in ok(run_cli("policy", "fmt", str(shop_copy))).stdout
    assert ci.read_text() == formatted
    validated = as_json(ok(run_cli("policy", "validate", str(shop_copy), "--json")))
    assert validated["valid"] is True
    assert validated["revision"] == BundleSource.from_dir(SHOP).revision


def test_policy_fmt_check_on_a_missing_directory_fails(tmp_path: Path) -> None:
    result = run_cli("policy", "fmt", "--check", str(tmp_path / "no-such-bundle"))
    assert result.returncode != 0, "a CI format gate must not pass on a mistyped path"
    assert "no-such-bundle" in result.stderr


def test_signed_bundle_is_served_and_an_edit_after_signing_is_refused(
    tmp_path: Path, shop_copy: Path
) -> None:
    prefix = tmp_path / "keys" / "release"
    prefix.parent.mkdir()
    ok(run_cli("policy", "keygen", "--out", str(prefix)))
    private, public = prefix.with_suffix(".key"), prefix.with_suffix(".pub")
    assert mode(private) == 0o600 and public.exists()
    ok(run_cli("policy", "sign", str(shop_copy), "--key", str(private)))
    assert (shop_copy / "bundle.sig").exists()

    edited = tmp_path / "edited"
    shutil.copytree(shop_copy, edited)
    humans = edited / "humans.cedar"
    humans.write_text(humans.read_text() + "\n// edited after signing\n")

    store = f"sqlite:///{tmp_path / 'state' / 'trustplane.db'}"
    with running_server(
        tmp_path / "state",
        store,
        shop_copy,
        policy__watch="false",
        policy__trusted_key_files=[str(public)],
    ) as server:
        served = server.client.get("/readyz").json()["revision"]
        # The same question to the server and to the local engine: the same answer.
        remote, local, refused = run_all(
            cli("check", "--url", server.url, *LARGE_REFUND, "--json"),
            cli("check", "--bundle", str(shop_copy), *LARGE_REFUND, "--json", env=server.env),
            cli("policy", "validate", str(edited), env=server.env),
        )
    remote_doc, local_doc = as_json(ok(remote)), as_json(ok(local))
    for doc in (remote_doc, local_doc):
        assert doc["decision"] == "allow"
        assert policy_ids(doc["reasons"]) == ["support-refunds-with-mfa"]
        assert doc["shadow"]["decision"] == "deny"
        assert policy_ids(doc["shadow"]["would_change"]) == ["forbid-large-refunds"]
        assert doc["revision"] == served
    assert remote_doc["decision_id"] != local_doc["decision_id"]
    assert server.env["TRUSTPLANE_POLICY__TRUSTED_KEY_FILES"] == json.dumps([str(public)])
    ok(refused, 1)
    assert "humans.cedar" in refused.stderr and "changed since signing" in refused.stderr


# -- errors -----------------------------------------------------------------------------------


def test_configuration_and_connection_errors_are_usage_errors(tmp_path: Path) -> None:
    env = server_env(tmp_path / "state", f"sqlite:///{tmp_path / 'db'}", server__port="notanumber")
    nowhere = f"http://127.0.0.1:{free_port()}"
    bad_port, bad_file, unreachable = run_all(
        cli("decisions", env=env),
        cli("--config", "missing.toml", "decisions", cwd=tmp_path),
        cli("policy", "rollback", "--url", nowhere, env={"TRUSTPLANE_CLI__ADMIN_TOKEN": "tpa_x"}),
    )
    message = flat(usage_error(bad_port))
    assert message.startswith("error: invalid configuration") and "port" in message
    assert "missing.toml" in flat(usage_error(bad_file))
    message = flat(usage_error(unreachable))
    assert f"cannot reach the server at {nowhere}" in message


def test_store_commands_on_an_uninitialised_store_say_to_run_init(
    tmp_path: Path, database_url: str
) -> None:
    result = run_cli("decisions", env=server_env(tmp_path / "state", database_url))
    message = flat(usage_error(result))
    assert "no trustplane store" in message and "run `trustplane init`" in message, message
    assert not result.stdout.strip()


def test_audit_verify_on_an_uninitialised_state_dir_says_to_run_init(tmp_path: Path) -> None:
    env = server_env(tmp_path / "state", f"sqlite:///{tmp_path / 'state' / 'trustplane.db'}")
    message = flat(usage_error(run_cli("audit", "verify", env=env)))
    assert "trustplane init" in message, message


def test_a_refused_store_command_leaves_no_state_behind(tmp_path: Path) -> None:
    state = tmp_path / "state"
    usage_error(run_cli("decisions", env={"TRUSTPLANE_STATE_DIR": str(state)}))
    assert not state.exists(), sorted(p.name for p in state.iterdir())


def test_audit_tail_n_0_prints_no_old_records(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store' / 'trustplane.db'}"
    engine = create_store_engine(url)
    try:
        migrate(engine)
        masker = Masker([])
        entries = [
            decision_entry(
                AccessRequest(
                    EntityRef("User", "erin"),
                    EntityRef("Action", "payments:refund"),
                    EntityRef("Api", "payments.refund"),
                    {},
                ),
                Decision(new_decision_id(), Effect.DENY, (), Effect.DENY, (), (), (), None, 1, 0.0),
                masker,
            )
            for _ in range(2)
        ]
        Ledger(engine, NoteSigner.generate("test.example/cli"), "test.example/cli").append(entries)
    finally:
        engine.dispose()
    env = server_env(tmp_path / "state", url)
    assert json_lines(ok(run_cli("audit", "tail", "-n", "0", "--json", env=env)).stdout) == []


# -- init -------------------------------------------------------------------------------------


def test_init_creates_private_state_and_is_idempotent(tmp_path: Path, database_url: str) -> None:
    state = tmp_path / "state"
    env = server_env(state, database_url)
    first = as_json(ok(run_cli("init", "--json", env=env)))
    assert mode(state) == 0o700
    assert mode(state / "ledger.key") == 0o600
    assert mode(state / "admin.token") == 0o600
    assert first["database_url"] == database_url
    assert first["admin_token_file"] == str(state / "admin.token")
    key = first["ledger_verifier_key"]
    assert key.startswith("trustplane.local/decisions+")
    assert (state / "ledger.pub").read_text().strip() == key
    signer_key = (state / "ledger.key").read_text()
    token = (state / "admin.token").read_text()

    second = ok(run_cli("init", env=env))
    assert key in second.stdout
    assert "admin token" not in second.stdout
    assert (state / "ledger.key").read_text() == signer_key
    assert (state / "admin.token").read_text() == token

    third = as_json(ok(run_cli("init", "--new-token", "--json", env=env)))
    assert third["ledger_verifier_key"] == key
    assert third["admin_token_file"] == str(state / "admin.token")
    new_token = (state / "admin.token").read_text()
    assert new_token != token and new_token.startswith("tpa_")
    assert mode(state / "admin.token") == 0o600


# -- against a running server -----------------------------------------------------------------


ERIN_REFUND = (("User", "erin"), "payments:refund", ("Api", "payments.refund"))
TRAFFIC = [
    authzen(*ERIN_REFUND, FRESH),  # allow
    authzen(*ERIN_REFUND, {**FRESH, "amount_cents": 90000}),  # allow; shadow deny
    authzen(*ERIN_REFUND, {**FRESH, "mfa": False}),  # deny: require-fresh-mfa-…
    authzen(("User", "bob"), "inventory:read", ("Api", "inventory.stock"), FRESH),  # allow
    authzen(("User", "bob"), "db:query", ("Database", "payments-db-prod"), FRESH),  # deny
    authzen(("User", "alice"), "ops:restart", ("Service", "checkout"), {**FRESH, "mfa": False}),
]


def test_server_bundle_commands_decisions_and_audit(
    tmp_path: Path, database_url: str, shop_copy: Path
) -> None:
    """One server per store: reload, status and rollback of its bundle; the decisions it
    answered, queried by filter; then, stopped, its ledger verified, exported, tailed, forged."""
    with running_server(
        tmp_path / "state", database_url, shop_copy, policy__watch="false"
    ) as server:
        first = server.client.get("/readyz").json()["revision"]
        answers = [
            server.client.post("/access/v1/evaluation", json=body).json() for body in TRAFFIC
        ]
        ids = [a["context"]["decision_id"] for a in answers]
        wait_for(lambda: all(recorded(server, i) for i in ids))  # batch mode: within ~50 ms
        seen = [
            Seen(i, body["subject"]["id"], answer["decision"], answer["context"])
            for i, body, answer in zip(ids, TRAFFIC, answers, strict=True)
        ]

        def expected(keep: Callable[[Seen], bool]) -> list[str]:
            """Decision ids a filter must return: the matching ones, newest first."""
            return [s.decision_id for s in reversed(seen) if keep(s)]

        fresh_mfa = "require-fresh-mfa-for-tier0-and-admin"
        edit_description(shop_copy, "(edited by test_cli)")
        erin, denied, mfa_policy, mismatch, reloaded = run_all(
            cli("decisions", "--principal", "User:erin", "--json", env=server.env),
            cli("decisions", "--decision", "deny", "--json", env=server.env),
            cli("decisions", "--policy", fresh_mfa, "--json", env=server.env),
            cli("decisions", "--shadow-mismatch", "--json", env=server.env),
            cli("policy", "reload", env=server.env),
        )
        assert found(erin) == expected(lambda s: s.principal == "erin") == ids[2::-1]
        assert found(denied) == expected(lambda s: not s.allowed) == [ids[5], ids[4], ids[2]]
        assert found(mfa_policy) == expected(lambda s: fresh_mfa in s.policies)
        assert found(mfa_policy) == [ids[5], ids[2]]
        assert found(mismatch) == expected(lambda s: s.shadow_differs) == [ids[1]]

        status = as_json(ok(run_cli("policy", "status", "--json", env=server.env)))
        second = status["active"]["revision"]
        assert second != first and f"active revision {second}" in ok(reloaded).stdout
        assert "(edited by test_cli)" in json.dumps(status["active"]["policies"])
        assert [a["revision"] for a in status["activations"][:2]] == [second, first]

        rolled = ok(run_cli("policy", "rollback", env=server.env))
        assert "rolled back: shop is active" in rolled.stdout and first in rolled.stdout
        # The ledger is complete (every answer was recorded): export and tail it meanwhile.
        export = tmp_path / "ledger.jsonl"
        status_text, exported, tail = run_all(
            cli("policy", "status", env=server.env),
            cli("audit", "export", "-o", str(export), env=server.env),
            cli("audit", "tail", "-n", "5", "--json", env=server.env),
        )
        shown = ok(status_text).stdout
        assert "active: shop" in shown and f"revision {first}" in shown and "rollback" in shown
        assert server.client.get("/readyz").json()["revision"] == first
        # Whole ids, and at 80 columns no line longer than that.
        narrow = ok(run_cli("policy", "status", env={**server.env, "COLUMNS": "80"})).stdout
        assert f"revision {second}" in narrow and max(map(len, narrow.splitlines())) <= 80
        nowhere = run_cli("policy", "rollback", "--to", "0000zz", env=server.env)
        assert nowhere.returncode == 2 and "0000zz" in nowhere.stderr

        env = server.env
        server.stop()  # SIGTERM: drain the queue and sign a final checkpoint

    report = as_json(ok(run_cli("audit", "verify", "--json", env=env)))
    assert report["ok"] is True and report["problems"] == []
    # Every decision, and every admin call (the reads included) with who and what.
    admin_count = count_admin_records(database_url)
    assert report["records"] == len(ids) + admin_count and report["checkpoints"] >= 1
    assert report["records_after_last_checkpoint"] == 0, "a graceful stop signs a checkpoint"
    everything = json_lines(export.read_text())
    assert f"exported {len(everything)} records" in flat(ok(exported).stderr)
    admin = [r for r in everything if r["kind"] == "admin"]
    assert {(r["actor"], r["decision"]) for r in admin} == {("bootstrap", "allow")}
    writes = [r for r in admin if r["action"] == "bundle:write"]
    assert [(r["actor"], r["action"], r["details"]["step"]) for r in writes] == [
        ("bootstrap", "bundle:write", "reload"),
        ("bootstrap", "bundle:write", "rollback"),
    ]
    assert {r["action"] for r in admin} == {"bundle:write", "bundle:read", "decisions:read"}, (
        "policy status reads the bundle, the test's polls read decisions"
    )
    records = [r for r in everything if r["kind"] == "decision"]
    assert [r["decision_id"] for r in records] == ids
    assert [r["decision"] for r in records] == ["allow" if s.allowed else "deny" for s in seen]
    newest = json_lines(ok(tail).stdout)
    first = newest[0]["seq"]
    assert [r["seq"] for r in newest] == list(range(first, first + 5)), "oldest first, in order"

    # Forge one record in the store (bob's denied query becomes an allow) and edit the newest
    # checkpoint's signed note: verification names both.
    seq = 4
    engine = create_store_engine(database_url)
    try:
        with engine.begin() as connection:
            original = bytes(
                connection.execute(
                    select(decisions.c.record).where(decisions.c.seq == seq)
                ).scalar_one()
            )
            forged = original.replace(b'"decision":"deny"', b'"decision":"allow"', 1)
            assert forged != original
            connection.execute(
                update(decisions).where(decisions.c.seq == seq).values(record=forged)
            )
            size = connection.execute(select(func.max(checkpoints.c.size))).scalar_one()
            note = connection.execute(
                select(checkpoints.c.note).where(checkpoints.c.size == size)
            ).scalar_one()
            forged_note = note.replace(f"\n{size}\n", f"\n{size - 1}\n", 1)
            assert forged_note != note
            connection.execute(
                update(checkpoints).where(checkpoints.c.size == size).values(note=forged_note)
            )
    finally:
        engine.dispose()
    tampered = ok(run_cli("audit", "verify", env=env), 1)
    assert f"record seq {seq} (decision {ids[seq]}) was altered" in tampered.stdout
    assert f"checkpoint at size {size}" in tampered.stdout
    assert "ledger tampered" in tampered.stdout
    assert "ledger intact" not in tampered.stdout


@dataclass
class Seen:
    """One AuthZEN answer, as the client saw it."""

    decision_id: str
    principal: str
    allowed: bool
    details: dict[str, Any]

    @property
    def policies(self) -> list[str]:
        return policy_ids(self.details["reasons"])

    @property
    def shadow_differs(self) -> bool:
        return self.details["shadow"]["decision"] != ("allow" if self.allowed else "deny")


def found(result: Result) -> list[str]:
    return [row["decision_id"] for row in json_lines(ok(result).stdout)]


def count_admin_records(database_url: str) -> int:
    engine = create_store_engine(database_url)
    try:
        with engine.connect() as connection:
            query = select(func.count()).where(decisions.c.kind == "admin")
            return int(connection.execute(query).scalar_one())
    finally:
        engine.dispose()


def recorded(server: Server, decision_id: str) -> bool:
    response = server.client.get(f"/v1/decisions/{decision_id}", headers=server.admin)
    return response.status_code == 200


def test_version_matches_the_package() -> None:
    import trustplane

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"trustplane {trustplane.__version__}"
