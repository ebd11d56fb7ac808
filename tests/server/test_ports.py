"""The ports a server claims before it starts (server/ports.py), against real sockets."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support import free_port
from trustplane.config import Settings
from trustplane.server.ports import PortError, claim_ports


def settings(tmp_path: Path, port: int, grpc_port: int, grpc_enabled: bool = True) -> Settings:
    return Settings(
        state_dir=tmp_path,
        server={"port": port},
        grpc={"port": grpc_port, "enabled": grpc_enabled},
    )


def test_a_listening_port_is_refused_by_number_and_setting(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(PortError, match=rf"port {port} \(grpc.port\) on 127.0.0.1"):
            claim_ports(settings(tmp_path, port=free_port(), grpc_port=port))
        with pytest.raises(PortError, match=rf"port {port} \(server.port\) on 127.0.0.1"):
            claim_ports(settings(tmp_path, port=port, grpc_port=free_port()))


def test_a_claimed_grpc_port_admits_our_workers_and_no_other_claim(tmp_path: Path) -> None:
    grpc_port = free_port()
    first = claim_ports(settings(tmp_path, port=free_port(), grpc_port=grpc_port))
    try:
        # Not listening yet, the claim already keeps a second server off the port...
        with pytest.raises(PortError, match=f"port {grpc_port}"):
            claim_ports(settings(tmp_path, port=free_port(), grpc_port=grpc_port))
        # ...while a worker's SO_REUSEPORT socket binds and listens beside it.
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", grpc_port))
            worker.listen()
            with socket.create_connection(("127.0.0.1", grpc_port), timeout=5):
                accepted, _ = worker.accept()  # the claim itself is never given a connection
                accepted.close()
    finally:
        first.close()
    claim_ports(settings(tmp_path, port=free_port(), grpc_port=grpc_port)).close()


def test_a_disabled_grpc_server_claims_nothing(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        claimed = claim_ports(settings(tmp_path, port=0, grpc_port=port, grpc_enabled=False))
        assert claimed.grpc_claim is None
        claimed.close()
