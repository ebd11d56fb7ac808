"""`trustplane audit verify` covers what queries filter on and says what no checkpoint proves yet;
servers sign checkpoints on an interval and at a clean stop that cover every stored record."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from tests.conftest import SHOP
from tests.support import (
    authzen,
    newest_checkpoint_size,
    run_cli,
    running_server,
    server_env,
    wait_for,
)
from trustplane.config import Settings
from trustplane.model import AccessRequest, Decision, Effect, EntityRef, new_decision_id
from trustplane.server.runtime import load_signer
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions
from trustplane.telemetry.ledger import Ledger, decision_entry
from trustplane.telemetry.masking import Masker

pytestmark = pytest.mark.slow

FRESH = {"mfa": True, "auth_age_seconds": 120, "risk_score": 10}
ERIN_REFUND = (("User", "erin"), "payments:refund", ("Api", "payments.refund"))
TRAFFIC = [
    authzen(*ERIN_REFUND, FRESH),  # allow
    authzen(*ERIN_REFUND, {**FRESH, "amount_cents": 90000}),  # allow; shadow deny
    authzen(*ERIN_REFUND, {**FRESH, "mfa": False}),  # deny: require-fresh-mfa-…
    authzen(("User", "bob"), "inventory:read", ("Api", "inventory.stock"), FRESH),  # allow
    authzen(("User", "bob"), "db:query", ("Database", "payments-db-prod"), FRESH),  # deny
]


def verify(env: dict[str, str], *args: str, code: int = 0) -> Any:
    """`audit verify ARGS`: the exit code asserted; the parsed document with --json, else the
    output folded to one line."""
    result = run_cli("audit", "verify", *args, env=env)
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout) if "--json" in args else " ".join(result.stdout.split())


def found(env: dict[str, str], *filters: str) -> list[str]:
    """Decision ids `trustplane decisions FILTERS` lists."""
    result = run_cli("decisions", *filters, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["decision_id"] for line in result.stdout.splitlines() if line]


def tamper(database_url: str, seq: int, **values: Any) -> None:
    engine = create_store_engine(database_url)
    try:
        with engine.begin() as connection:
            changed = connection.execute(
                update(decisions).where(decisions.c.seq == seq).values(**values)
            ).rowcount
        assert changed == 1
    finally:
        engine.dispose()


def test_verify_names_each_query_column_its_signed_record_does_not_support(
    tmp_path: Path, database_url: str
) -> None:
    with running_server(tmp_path / "state", database_url, SHOP, policy__watch="false") as server:
        answers = [server.client.post("/access/v1/evaluation", json=b).json() for b in TRAFFIC]
        ids = [a["context"]["decision_id"] for a in answers]
        env = server.env
        server.stop()  # SIGTERM, a clean stop: drain, then sign a checkpoint of everything

    clean = verify(env, "--require-checkpointed", "--json")
    assert clean["ok"] is True and clean["intact"] is True and clean["problems"] == []
    assert clean["records"] == clean["proven_records"] == len(TRAFFIC)
    assert clean["newest_checkpoint"]["tree_size"] == len(TRAFFIC)
    assert clean["not_yet_proven"] == {"records": 0, "first_seq": None, "last_seq": None}
    assert ids[2] in found(env, "--decision", "deny")

    # Each query column of some row is edited in the store; the signed records are untouched.
    with_policy = "require-fresh-mfa-for-tier0-and-admin"
    assert ids[2] in found(env, "--policy", with_policy)
    edits: dict[int, dict[str, Any]] = {
        0: {"principal": 'User::"mallory"', "resource": 'Api::"elsewhere"'},
        1: {"shadow": "allow"},  # the shadow deny no longer shows as a mismatch
        2: {"decision": "allow", "policies": " "},  # erin's deny hidden from both filters
        3: {"action": 'Action::"inventory:write"', "revision": "0" * 64},
        4: {"kind": "admin", "decision_id": new_decision_id()},
    }
    for seq, values in edits.items():
        tamper(database_url, seq, **values)
    engine = create_store_engine(database_url)
    with engine.begin() as connection:  # and one timestamp moved a day back
        ts = connection.execute(select(decisions.c.ts).where(decisions.c.seq == 1)).scalar_one()
        connection.execute(update(decisions).where(decisions.c.seq == 1).values(ts=ts - 86400))
    engine.dispose()
    assert ids[2] not in found(env, "--decision", "deny")
    assert ids[2] not in found(env, "--policy", with_policy)
    assert ids[1] not in found(env, "--shadow-mismatch")

    text = verify(env, code=1)
    named = {(seq, column) for seq, values in edits.items() for column in values} | {(1, "ts")}
    for seq, column in sorted(named):
        assert f"record seq {seq} (decision {ids[seq]}): query column {column} holds" in text
    assert "but its signed record says 'deny'" in text  # the decision edited at seq 2
    assert "✗ ledger tampered" in text and "ledger intact" not in text
    report = verify(env, "--json", code=1)
    assert report["ok"] is False and report["intact"] is False
    assert {(m["seq"], m["column"]) for m in report["column_mismatches"]} == named
    assert {"seq": 2, "decision_id": ids[2], "column": "decision"} | {
        "stored": "allow",
        "record": "deny",
    } in report["column_mismatches"]


def test_records_after_the_last_checkpoint_are_reported_not_yet_proven(
    tmp_path: Path, database_url: str
) -> None:
    env = server_env(tmp_path / "state", database_url)
    init = run_cli("init", env=env)
    assert init.returncode == 0, init.stderr
    settings = Settings(state_dir=tmp_path / "state", store={"url": database_url})
    engine = create_store_engine(database_url)
    ledger = Ledger(engine, load_signer(settings), settings.ledger.origin)
    masker = Masker([])
    entries = [
        decision_entry(
            AccessRequest(
                EntityRef("User", f"u{n}"), EntityRef("Action", "read"), EntityRef("Doc", "d")
            ),
            Decision(new_decision_id(), Effect.ALLOW, (), Effect.ALLOW, (), (), (), "r", 1, n),
            masker,
        )
        for n in range(9)
    ]
    ledger.append(entries[:5])
    assert ledger.checkpoint() is not None
    ledger.append(entries[5:])

    tail = verify(env)
    assert "✓ ledger intact: 9 records" in tail
    assert "4 records not yet proven: seq 5..8; they come after the newest checkpoint" in tail
    assert "(size 5, signed 20" in tail

    # The two newest records are deleted: nothing signed covered them. Verify cannot see the
    # removal, but it says which records it could not prove, and can refuse to pass.
    with engine.begin() as connection:
        connection.execute(delete(decisions).where(decisions.c.seq >= 7))
    engine.dispose()
    assert "2 records not yet proven: seq 5..6" in verify(env)
    refused = verify(env, "--require-checkpointed", code=1)
    assert "2 records not yet proven: seq 5..6" in refused
    assert "✗ not every record is checkpointed (--require-checkpointed)" in refused
    report = verify(env, "--require-checkpointed", "--json", code=1)
    assert report["ok"] is False and report["intact"] is True
    assert report["proven_records"] == 5 and report["records"] == 7
    assert report["not_yet_proven"] == {"records": 2, "first_seq": 5, "last_seq": 6}
    assert verify(env, "--json")["ok"] is True  # not required: reported, not failed


def test_checkpoints_cover_every_stored_record_on_an_interval_and_at_a_clean_stop(
    tmp_path: Path, database_url: str
) -> None:
    """Server A signs every 100 ms; server B, on the same store and ledger key, would sign only
    once a minute and is killed after answering. A's interval checkpoint covers B's records
    while A runs (no stop involved), and A's clean stop covers its own last ones."""
    state_a, state_b = tmp_path / "a", tmp_path / "b"
    with running_server(
        state_a, database_url, SHOP, policy__watch="false", ledger__checkpoint_interval_ms=100
    ) as server_a:
        state_b.mkdir()
        for name in ("ledger.key", "ledger.pub"):
            shutil.copy2(state_a / name, state_b / name)
        with running_server(
            state_b,
            database_url,
            SHOP,
            policy__watch="false",
            ledger__durability="sync",
            ledger__checkpoint_interval_ms=60_000,
        ) as server_b:
            for body in TRAFFIC[:3]:
                assert server_b.client.post("/access/v1/evaluation", json=body).status_code == 200
            server_b.stop(signal.SIGKILL)  # answered under sync: stored, never signed by B

        # Read from the store: asking the admin API would add an admin record of its own.
        wait_for(lambda: newest_checkpoint_size(database_url) == 3, timeout=30)
        running = verify(server_a.env, "--require-checkpointed", "--json")
        assert running["ok"] is True and running["proven_records"] == running["records"] == 3

        for body in TRAFFIC[3:]:
            assert server_a.client.post("/access/v1/evaluation", json=body).status_code == 200
        env = server_a.env
        server_a.stop()  # SIGTERM: a clean stop

    stopped = verify(env, "--require-checkpointed", "--json")
    assert stopped["ok"] is True and stopped["not_yet_proven"]["records"] == 0
    assert stopped["records"] == stopped["proven_records"] == len(TRAFFIC)
