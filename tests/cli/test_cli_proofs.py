"""`trustplane audit proof|consistency`: proofs from the store, verified by the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.conftest import SHOP
from tests.support import newest_checkpoint_size, run_cli, running_server, wait_for
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions

pytestmark = pytest.mark.slow

BODY = {
    "subject": {"type": "Service", "id": "checkout"},
    "action": {"name": "payments:charge"},
    "resource": {"type": "Api", "id": "payments.charge"},
    "context": {"mfa": False, "auth_age_seconds": 30, "risk_score": 5},
}


def test_proofs_verify_and_a_forged_leaf_does_not(tmp_path: Path, database_url: str) -> None:
    with running_server(
        tmp_path / "state",
        database_url,
        SHOP,
        policy__watch="false",
        ledger__checkpoint_interval_ms=200,
    ) as server:
        ids = [
            server.client.post("/access/v1/evaluation", json=BODY).json()["context"]["decision_id"]
            for _ in range(3)
        ]
        # Watched in the store: every admin API read is itself a ledger record, which would
        # grow the tree this test counts.
        wait_for(lambda: newest_checkpoint_size(database_url) == 3)
        for _ in range(4):
            server.client.post("/access/v1/evaluation", json=BODY)
        env = server.env
    # A graceful stop signs a final checkpoint of size 7.
    proof = run_cli("audit", "proof", ids[1], "--json", env=env)
    assert proof.returncode == 0, proof.stderr
    document = json.loads(proof.stdout)
    assert document["verified"] is True and document["tree_size"] == 7
    assert document["leaf_index"] == 1

    # Any unique prefix of a decision id names it; a prefix several ids share, or none has,
    # is refused naming what it could be.
    short = run_cli("audit", "proof", ids[1][:-4], "--json", env=env)
    assert short.returncode == 0, short.stderr
    assert json.loads(short.stdout)["decision_id"] == ids[1]
    # UUIDv7: ids made together share their time, so their leading characters.
    shared = ids[0][
        : next(i for i, (a, b) in enumerate(zip(ids[0], ids[1], strict=True)) if a != b)
    ]
    assert len(shared) >= 8, ids
    ambiguous = run_cli("audit", "proof", shared, env=env)
    assert ambiguous.returncode == 2 and "is ambiguous" in ambiguous.stderr
    assert ids[0] in ambiguous.stderr and ids[1] in ambiguous.stderr
    unknown = run_cli("audit", "proof", "ffffffff-f", env=env)
    assert unknown.returncode == 2
    assert "no decision id starts with 'ffffffff-f'" in unknown.stderr

    older = run_cli("audit", "consistency", "3", "7", "--json", env=env)
    assert older.returncode == 0, older.stderr
    assert json.loads(older.stdout)["verified"] is True

    unsigned = run_cli("audit", "consistency", "2", env=env)
    assert unsigned.returncode == 2 and "no signed checkpoint at size 2" in unsigned.stderr

    engine = create_store_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            update(decisions).where(decisions.c.seq == 1).values(leaf_hash=b"\x00" * 32)
        )
    engine.dispose()
    forged = run_cli("audit", "proof", ids[1], env=env)
    assert forged.returncode == 1
    assert "does not verify" in forged.stdout
