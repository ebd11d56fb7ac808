"""The compiled ext_authz front (`trustplane-extauthz`) in front of a real `trustplane serve`:
what only this transport can get wrong. Answers themselves are covered for both transports in
test_envoy.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
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
from trustplane.enforcement.native import MAX_FRAME

pytestmark = pytest.mark.slow

FRONT = "trustplane-extauthz"


@pytest.fixture(scope="module")
def front_binary() -> str:
    return extauthz_front()


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(
    front_binary: str, tmp_path_factory: pytest.TempPathFactory, grpc_port: int
) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("state")
    database = f"sqlite:///{state / 'store.db'}"
    with running_server(
        state, database, SHOP, policy__watch="false", grpc__port=grpc_port, grpc__transport="native"
    ) as srv:
        yield srv


@pytest.fixture()
def channel(server: Server, grpc_port: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


def _front_pids(server: Server) -> list[int]:
    """The front processes that are children of this server."""
    found = subprocess.run(
        ["pgrep", "-P", str(server.process.pid), "-f", FRONT], capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


def test_a_check_is_answered_and_recorded_in_the_ledger(
    server: Server, channel: grpc.Channel
) -> None:
    stub: Any = external_auth_pb2_grpc.AuthorizationStub(channel)
    answer = stub.Check(check("POST", "/payments/v1/charges", principal=CHECKOUT))
    assert answer.status.code == code_pb2.OK
    decision_id = {h.header.key: h.header.value for h in answer.ok_response.headers}[
        "x-trustplane-decision-id"
    ]

    def recorded() -> bool:
        found = server.client.get(f"/v1/decisions/{decision_id}", headers=server.admin)
        return found.status_code == 200

    wait_for(recorded, timeout=5)


def test_an_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/envoy.service.auth.v2.Authorization/Check")
    with pytest.raises(grpc.RpcError) as raised:
        call(b"", timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_bytes_that_are_not_a_check_request_are_refused_by_name(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
    with pytest.raises(grpc.RpcError) as raised:
        call(b"\xff\xff\xff\xff not protobuf", timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed CheckRequest" in (raised.value.details() or "")


def test_a_killed_front_fails_closed_then_is_restarted(server: Server, grpc_port: int) -> None:
    (pid,) = _front_pids(server)
    os.kill(pid, signal.SIGKILL)
    request = check("POST", "/payments/v1/charges", principal=CHECKOUT)
    # While it is gone nothing is allowed: Envoy gets no answer, which it turns into a deny.
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub: Any = external_auth_pb2_grpc.AuthorizationStub(channel)
        try:
            answer = stub.Check(request, timeout=0.2)
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        else:  # the restart was faster than this call
            assert _front_pids(server) != [pid]
            assert answer.status.code == code_pb2.OK
    restarted = wait_for(lambda: [p for p in _front_pids(server) if p != pid], timeout=10)
    assert len(restarted) == 1
    wait_for(lambda: "restarted on" in server.log(), timeout=10)
    assert "exited (status -9)" in server.log()
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        assert stub.Check(request, timeout=5).status.code == code_pb2.OK


def test_serve_stops_its_front_with_it(front_binary: str, tmp_path: Path) -> None:
    port = free_port()
    with running_server(
        tmp_path,
        f"sqlite:///{tmp_path / 'store.db'}",
        SHOP,
        policy__watch="false",
        grpc__port=port,
        grpc__transport="native",
    ) as srv:
        (pid,) = _front_pids(srv)
        assert Path(f"/proc/{pid}").exists()
        srv.stop(signal.SIGTERM)
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=10)


def test_native_without_the_binary_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-front"
    env = server_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'store.db'}",
        policy__bundle_dir=SHOP,
        grpc__transport="native",
        grpc__native_binary=missing,
    )
    done = subprocess.run(
        [*TRUSTPLANE, "serve", "--init"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{missing} does not exist" in done.stderr
    assert "scripts/bootstrap.sh" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_front_exits_when_its_parent_goes(front_binary: str) -> None:
    """No orphan keeps the port: closing the front's stdin (its parent exiting) stops it."""
    ours, theirs = socket.socketpair()
    port = free_port()
    front = subprocess.Popen(
        [
            front_binary,
            *("--listen", f"127.0.0.1:{port}", "--backend-fd", str(theirs.fileno())),
            *("--max-frame", str(MAX_FRAME)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    try:
        assert front.stdout is not None
        assert front.stdout.readline().split() == [b"ready", str(port).encode()]
        assert front.stdin is not None
        front.stdin.close()
        assert front.wait(10) == 0
    finally:
        ours.close()
        if front.poll() is None:
            front.kill()
        front.wait()


def _listening_inode(port: int) -> str:
    """The inode of the TCP socket listening on `port` (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def test_with_workers_each_has_a_front_on_the_port_holding_nothing_else(
    front_binary: str, tmp_path: Path
) -> None:
    port = free_port()
    with running_server(
        tmp_path,
        f"sqlite:///{tmp_path / 'store.db'}",
        SHOP,
        policy__watch="false",
        grpc__port=port,
        grpc__transport="native",
        server__workers=2,
    ) as srv:
        workers = subprocess.run(
            ["pgrep", "-P", str(srv.process.pid)], capture_output=True, text=True
        ).stdout.split()
        fronts = wait_for(
            lambda: (
                [
                    pid
                    for worker in workers
                    for pid in subprocess.run(
                        ["pgrep", "-P", worker, "-f", FRONT], capture_output=True, text=True
                    ).stdout.split()
                ]
                if len(srv.log().split("(native transport)")) == 3
                else None
            ),
            timeout=20,
        )
        assert len(fronts) == 2
        http_socket = f"socket:[{_listening_inode(int(srv.url.rsplit(':', 1)[1]))}]"
        for front in fronts:
            held = {os.readlink(fd) for fd in Path(f"/proc/{front}/fd").iterdir()}
            assert http_socket not in held  # the HTTP port dies with the workers, not later
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            stub: Any = external_auth_pb2_grpc.AuthorizationStub(channel)
            request = check("POST", "/payments/v1/charges", principal=CHECKOUT)
            assert stub.Check(request, timeout=5).status.code == code_pb2.OK


def test_a_stalled_serving_process_fails_calls_closed_without_stalling_the_front(
    front_binary: str, tmp_path: Path
) -> None:
    """While the serving process does not read (stopped here), calls end UNAVAILABLE within
    the answer timeout and the front keeps serving gRPC; once it reads again, calls are
    answered."""
    port = free_port()
    with running_server(
        tmp_path,
        f"sqlite:///{tmp_path / 'store.db'}",
        SHOP,
        policy__watch="false",
        grpc__port=port,
        grpc__transport="native",
        grpc__answer_timeout_ms=500,
    ) as srv:
        request = check("POST", "/payments/v1/charges", principal=CHECKOUT)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            stub: Any = external_auth_pb2_grpc.AuthorizationStub(channel)
            assert stub.Check(request, timeout=5).status.code == code_pb2.OK
            os.kill(srv.process.pid, signal.SIGSTOP)
            try:
                # Big enough together (800 KB) to fill the socket's buffer several times over.
                padded = check(
                    "POST", "/payments/v1/charges", {"x-padding": "p" * 4096}, principal=CHECKOUT
                )
                calls = [stub.Check.future(padded) for _ in range(200)]  # no deadline
                unknown = channel.unary_unary("/envoy.service.auth.v2.Authorization/Check")
                with pytest.raises(grpc.RpcError) as raised:
                    unknown(b"", timeout=2)
                assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
                for call in calls:
                    with pytest.raises(grpc.RpcError) as failed:
                        call.result(timeout=5)
                    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                os.kill(srv.process.pid, signal.SIGCONT)
            assert stub.Check(request, timeout=5).status.code == code_pb2.OK
