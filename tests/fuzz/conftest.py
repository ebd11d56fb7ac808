"""Fixtures for the fuzz suite: a real server per backend over loopback, with the compiled
ext_authz front when it is built, and a second one on grpcio's transport for the gRPC Check."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SHOP, store_url
from tests.fuzz.harness import Target
from tests.support import REPO, free_port, running_server

# Cases per endpoint (and per generation mode, auth variant, gRPC strategy): small by default so
# the bounded run fits the suite; bench/fuzz.py runs the long one.
EXAMPLES = int(os.environ.get("TRUSTPLANE_FUZZ_EXAMPLES", "6"))


def native_front() -> bool:
    return (
        bool(shutil.which("trustplane-extauthz"))
        or (REPO / ".venv/bin/trustplane-extauthz").exists()
    )


def backend_of(url: str) -> str:
    return "postgres" if url.startswith("postgresql") else "sqlite"


@pytest.fixture(scope="module")
def target(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The server every HTTP case goes to; its gRPC front is the compiled one when built."""
    transport = "native" if native_front() else "python"
    port = free_port()
    state: Path = tmp_path_factory.mktemp("fuzz-state")
    with running_server(
        state,
        module_database_url,
        SHOP,
        ready_timeout=120,
        policy__watch="false",
        grpc__port=port,
        grpc__transport=transport,
        server__trusted_proxies=["127.0.0.1/32"],
    ) as srv:
        yield Target(
            srv.url,
            srv.token,
            backend_of(module_database_url),
            module_database_url,
            {transport: port},
        )


@pytest.fixture(scope="module")
def python_target(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """grpcio's transport, for the gRPC Check on both transports: its own server and its own
    store of the same backend (so each server's counts can be held against its own ledger)."""
    if "python" in target.grpc_ports:
        yield target
        return
    port = free_port()
    state = tmp_path_factory.mktemp("fuzz-state-python")
    kind = "postgresql" if target.backend == "postgres" else "sqlite"
    with (
        store_url(kind, state) as url,
        running_server(
            state,
            url,
            SHOP,
            ready_timeout=120,
            policy__watch="false",
            grpc__port=port,
            grpc__transport="python",
        ) as srv,
    ):
        yield Target(srv.url, srv.token, target.backend, url, {"python": port})
