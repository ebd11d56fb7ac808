"""Helpers for tests: a real `trustplane serve` process, bundle builders, PostgreSQL probe."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
PG_BASE_URL = "postgresql://127.0.0.1:5432/test"
TRUSTPLANE = [sys.executable, "-m", "trustplane"]


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_BASE_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRUSTPLANE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        input=input,
        timeout=timeout,
    )


def write_bundle(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


@dataclass
class Server:
    """A real server process on loopback, with the environment that configures it."""

    url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    token: str = ""
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=10)

    @property
    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def server_env(state_dir: Path, database_url: str, **settings: Any) -> dict[str, str]:
    """The environment of a server: each keyword names a setting as its variable does after
    `TRUSTPLANE_` (`ledger__durability="sync"` is `TRUSTPLANE_LEDGER__DURABILITY=sync`)."""
    settings.setdefault("grpc__port", free_port())  # never the default: servers run side by side
    env = {
        "TRUSTPLANE_STATE_DIR": str(state_dir),
        "TRUSTPLANE_STORE__URL": database_url,
        "TRUSTPLANE_LOG_LEVEL": "info",
    }
    for key, value in settings.items():
        env[f"TRUSTPLANE_{key.upper()}"] = (
            json.dumps(value) if isinstance(value, list) else str(value)
        )
    return env


@contextlib.contextmanager
def running_server(
    state_dir: Path,
    database_url: str,
    bundle: Path,
    *,
    wait_path: str = "/readyz",
    ready_timeout: float = 30,
    **settings: Any,
) -> Iterator[Server]:
    """`trustplane init` then `trustplane serve` as a subprocess; waits until `wait_path`
    answers 200 (/healthz for a server expected not to become ready)."""
    port = free_port()
    env = server_env(
        state_dir, database_url, server__port=port, policy__bundle_dir=bundle, **settings
    )
    init = run_cli("init", env=env)
    assert init.returncode == 0, init.stderr
    log_path = state_dir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*TRUSTPLANE, "serve"], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(
        f"http://127.0.0.1:{port}",
        env,
        process,
        log_path,
        token=(state_dir / "admin.token").read_text().strip(),
    )
    try:
        wait_ready(server, timeout=ready_timeout, path=wait_path)
        yield server
    finally:
        server.stop()


def wait_ready(server: Server, timeout: float = 90, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited early:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if server.client.get(path).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"server not ready in {timeout}s:\n{server.log()}")


def wait_for(predicate: Any, timeout: float = 10, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def authzen(
    principal: tuple[str, str],
    action: str,
    resource: tuple[str, str],
    context: dict[str, Any] | None = None,
    **props: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject": {"type": principal[0], "id": principal[1]},
        "action": {"name": action},
        "resource": {"type": resource[0], "id": resource[1]},
    }
    if "resource_properties" in props:
        body["resource"]["properties"] = props["resource_properties"]
    if context is not None:
        body["context"] = context
    return body


# -- real peers (proxies) ----------------------------------------------------------------------


def required_binary(name: str, *fallbacks: str) -> str:
    """The path of a program the test needs (installed by scripts/bootstrap.sh --test): skip
    without it, except under CI=true, where a missing peer fails the run."""
    found = shutil.which(name) or next((f for f in fallbacks if Path(f).exists()), None)
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed (scripts/bootstrap.sh --test installs it)")
        pytest.skip(f"{name} is not installed")
    return found


def extauthz_front() -> str:
    """The compiled ext_authz front bootstrap builds (skip without it; fail under CI=true)."""
    return required_binary("trustplane-extauthz", str(REPO / ".venv/bin/trustplane-extauthz"))


def start_listening(
    argv: list[str], url: str, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a server process and wait until `url` answers (any status); its log on failure."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{argv[0]} exited:\n{log_path.read_text(errors='replace')}")
        try:
            httpx.get(url, timeout=1)
            return True
        except httpx.HTTPError:
            return False

    wait_for(listening, timeout=15)
    return process


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def newest_checkpoint_size(database_url: str) -> int | None:
    """The size of the newest checkpoint in the store, read directly: asking the admin API
    would itself add an admin record to the ledger."""
    from sqlalchemy import func, select

    from trustplane.store.database import create_store_engine
    from trustplane.store.tables import checkpoints

    engine = create_store_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(func.max(checkpoints.c.size))).scalar_one()
    finally:
        engine.dispose()


def ledger_rows(database_url: str) -> int:
    """How many records the store holds (read directly, not through the recorded admin API)."""
    from sqlalchemy import func, select

    from trustplane.store.database import create_store_engine
    from trustplane.store.tables import decisions

    engine = create_store_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(decisions)).scalar_one())
    finally:
        engine.dispose()
