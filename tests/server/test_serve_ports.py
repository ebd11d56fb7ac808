"""Who may listen on a server's ports: a port held by anyone else refuses start-up with one line
naming it; the ext_authz port is shared only among one server's own workers; the gRPC front
takes no call before the server's HTTP socket listens and its app has started."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from google.rpc import code_pb2

from tests.conftest import SHOP
from tests.enforcement.test_envoy import CHECKOUT, check
from tests.support import (
    TRUSTPLANE,
    Server,
    extauthz_front,
    free_port,
    running_server,
    server_env,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(params=["python", "native"])
def transport(request: pytest.FixtureRequest) -> str:
    if request.param == "native":
        extauthz_front()  # skips where the front is not built (fails under CI=true)
    return str(request.param)


def second_server(tmp_path: Path, **settings: Any) -> subprocess.CompletedProcess[str]:
    """`trustplane serve --init` of another state directory, expected to refuse to start."""
    state = tmp_path / "second"
    env = server_env(state, f"sqlite:///{state / 'store.db'}", policy__bundle_dir=SHOP, **settings)
    return subprocess.run(
        [*TRUSTPLANE, "serve", "--init"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a refused start (exit 2, no traceback)."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def answers_ok(grpc_port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub: Any = external_auth_pb2_grpc.AuthorizationStub(channel)
        answer = stub.Check(check("POST", "/payments/v1/charges", principal=CHECKOUT), timeout=10)
        return bool(answer.status.code == code_pb2.OK)


def test_a_second_server_on_the_same_grpc_port_refuses_to_start(
    tmp_path: Path, database_url: str, transport: str
) -> None:
    grpc_port = free_port()
    with running_server(
        tmp_path / "first",
        database_url,
        SHOP,
        policy__watch="false",
        grpc__port=grpc_port,
        grpc__transport=transport,
    ) as first:
        done = second_server(
            tmp_path, server__port=free_port(), grpc__port=grpc_port, grpc__transport=transport
        )
        line = refusal(done)
        assert f"port {grpc_port}" in line and "grpc.port" in line, line
        # Every call reaches the first server, and is recorded in its ledger.
        for _ in range(20):
            assert answers_ok(grpc_port)

        def recorded() -> int:
            page = first.client.get("/v1/decisions", headers=first.admin, params={"limit": 100})
            # Admin reads (this one included) are recorded too: count the decisions.
            return sum(1 for d in page.json()["decisions"] if d.get("kind") == "decision")

        wait_for(lambda: recorded() >= 20)
        assert recorded() == 20


def test_a_server_whose_http_port_is_held_never_takes_grpc_calls(
    tmp_path: Path, transport: str
) -> None:
    grpc_port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        http_port = holder.getsockname()[1]
        done = second_server(
            tmp_path, server__port=http_port, grpc__port=grpc_port, grpc__transport=transport
        )
    line = refusal(done)
    assert f"port {http_port}" in line, line
    assert "ext_authz gRPC on" not in done.stderr, done.stderr


def test_workers_share_the_grpc_port_and_no_one_else_does(tmp_path: Path, transport: str) -> None:
    grpc_port = free_port()
    state = tmp_path / "first"
    with running_server(
        state,
        f"sqlite:///{state / 'store.db'}",
        SHOP,
        policy__watch="false",
        server__workers=2,
        grpc__port=grpc_port,
        grpc__transport=transport,
    ) as first:
        wait_for(lambda: len(re.findall(r"ext_authz gRPC on", first.log())) == 2, timeout=30)
        done = second_server(
            tmp_path, server__port=free_port(), grpc__port=grpc_port, grpc__transport=transport
        )
        assert f"port {grpc_port}" in refusal(done)
        assert answers_ok(grpc_port)


def test_the_grpc_front_accepts_only_once_http_answers(tmp_path: Path, transport: str) -> None:
    """However early Envoy connects, the server it reaches already answers HTTP: the front
    starts after the HTTP socket listens and the app has started."""
    grpc_port = free_port()
    http_port = free_port()
    state = tmp_path / "state"
    env = server_env(
        state,
        f"sqlite:///{state / 'store.db'}",
        server__port=http_port,
        policy__bundle_dir=SHOP,
        policy__watch="false",
        grpc__port=grpc_port,
        grpc__transport=transport,
    )
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*TRUSTPLANE, "serve", "--init"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{http_port}", env, process, log_path)
    try:

        def grpc_accepts() -> bool:
            assert process.poll() is None, server.log()
            with socket.socket() as probe, contextlib.suppress(OSError):
                probe.connect(("127.0.0.1", grpc_port))
                return True
            return False

        wait_for(grpc_accepts, timeout=60, interval=0.005)
        try:
            health = httpx.get(server.url + "/healthz", timeout=10)
        except httpx.ConnectError as exc:
            raise AssertionError(f"gRPC accepted while HTTP refused: {exc}") from None
        assert health.status_code == 200
    finally:
        server.stop()
