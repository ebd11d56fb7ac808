"""A PostgreSQL outage while serving, on a throwaway cluster this test starts itself (initdb in a
temporary directory) and stops with `pg_ctl stop -m immediate`, as a crash or a pulled plug would.

batch: decisions are still answered, spooled to disk; readiness and the metrics say the ledger is
degraded; admin calls answer 503 problem documents (never 500); once the cluster is back the spool
is replayed and every answered decision is in the ledger. sync: decisions answered 503 during the
outage are never in the ledger as delivered ones.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import SHOP
from tests.support import free_port, run_cli, running_server, wait_for
from trustplane.store.database import create_store_engine
from trustplane.store.tables import decisions

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BODY = {
    "subject": {"type": "User", "id": "erin"},
    "action": {"name": "payments:refund"},
    "resource": {"type": "Api", "id": "payments.refund"},
    "context": {"mfa": True, "auth_age_seconds": 120, "risk_score": 10},
}


@dataclass
class Cluster:
    """A PostgreSQL cluster of our own, to stop and start at will."""

    bin_dir: Path
    data: Path
    port: int
    user: str | None  # initdb refuses to run as root: run it as this user then

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, command, done.stdout, done.stderr + self._log()
            )

    def _log(self) -> str:
        path = self.data / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.data}"
        log = self.data / "server.log"
        self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start")

    def crash(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("initdb not found under /usr/lib/postgresql: install postgresql")
        pytest.skip("initdb not found under /usr/lib/postgresql")
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        try:
            owner = pwd.getpwnam(user)
        except KeyError:
            pytest.skip("running as root without a postgres user to run initdb as")
    # Outside pytest's own (0700) temporary tree, so that user can reach it.
    base = Path(tempfile.mkdtemp(prefix="trustplane-pg-"))
    data = base / "data"
    data.mkdir(mode=0o700)
    if user is not None:
        os.chmod(base, 0o755)
        os.chown(data, owner.pw_uid, owner.pw_gid)
    node = Cluster(Path(found[-1]).parent, data, free_port(), user)
    try:
        node.run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        node.start()
        yield node
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            node.crash()
        shutil.rmtree(base, ignore_errors=True)


def test_batch_serving_through_a_postgresql_outage(tmp_path: Path, cluster: Cluster) -> None:
    answered: list[str] = []
    with running_server(tmp_path / "state", cluster.url, SHOP, policy__watch="false") as server:
        client = server.client

        def ask(count: int) -> None:
            for _ in range(count):
                response = client.post("/access/v1/evaluation", json=BODY)
                assert response.status_code == 200, response.text  # answers never degrade
                answered.append(response.json()["context"]["decision_id"])

        ask(10)
        assert client.get("/v1/bundle/revisions", headers=server.admin).status_code == 200
        cluster.crash()
        ask(50)
        wait_for(lambda: client.get("/readyz").status_code == 503, timeout=20)
        metrics = client.get("/metrics").text
        wait_for(lambda: "trustplane_ledger_degraded 1.0" in client.get("/metrics").text, 20)
        # Admin calls that need the store: a 503 problem document, never a 500.
        for method, path, body in (
            ("GET", "/v1/bundle/revisions", None),
            ("GET", "/v1/decisions", None),
            (
                "POST",
                "/v1/revocations",
                {"kind": "principal", "target": 'User::"mallory"', "reason": "test"},
            ),
        ):
            response = client.request(method, path, json=body, headers=server.admin, timeout=30)
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        ask(20)
        cluster.start()
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
        assert "trustplane_ledger_degraded 0.0" in client.get("/metrics").text
        env = server.env
    assert "trustplane_ledger_spooled" in metrics
    engine = create_store_engine(cluster.url)
    try:
        with engine.connect() as connection:
            stored = set(connection.execute(select(decisions.c.decision_id)).scalars())
    finally:
        engine.dispose()
    missing = set(answered) - stored
    assert not missing, f"{len(missing)} of {len(answered)} answered decisions were lost"
    verify = run_cli("audit", "verify", "--json", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sync_decisions_answered_503_are_never_recorded_as_delivered(
    tmp_path: Path, cluster: Cluster
) -> None:
    answered: list[str] = []
    refused = [0]
    with running_server(
        tmp_path / "state", cluster.url, SHOP, policy__watch="false", ledger__durability="sync"
    ) as server:
        for _ in range(5):
            response = server.client.post("/access/v1/evaluation", json=BODY)
            assert response.status_code == 200, response.text
            answered.append(response.json()["context"]["decision_id"])
        cluster.crash()

        def ask() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                response = client.post("/access/v1/evaluation", json=BODY)
                if response.status_code == 200:
                    answered.append(response.json()["context"]["decision_id"])
                else:
                    assert response.status_code == 503, response.text
                    assert response.json()["type"].endswith("ledger-unavailable")
                    refused[0] += 1

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert refused[0] == 4, "no decision is answered without its record"
        cluster.start()
        wait_for(lambda: server.client.get("/readyz").status_code == 200, timeout=60)
        for _ in range(3):
            response = server.client.post("/access/v1/evaluation", json=BODY)
            assert response.status_code == 200, response.text
            answered.append(response.json()["context"]["decision_id"])
    engine = create_store_engine(cluster.url)
    try:
        with engine.connect() as connection:
            delivered = set(
                connection.execute(
                    select(decisions.c.decision_id).where(
                        decisions.c.kind == "decision", decisions.c.undelivered.is_(False)
                    )
                ).scalars()
            )
            total = connection.execute(
                select(func.count()).select_from(decisions).where(decisions.c.kind == "decision")
            ).scalar_one()
    finally:
        engine.dispose()
    assert delivered == set(answered), "the ledger holds exactly the decisions clients received"
    assert total >= len(answered)
