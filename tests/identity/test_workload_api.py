"""The SPIFFE Workload API over its unix socket, spoken to by the real py-spiffe client (and by a
raw gRPC stub for the refusals py-spiffe hides)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import spiffe
from sqlalchemy import Engine

from tests.identity.conftest import TRUST_DOMAIN
from tests.identity.workload import WorkloadThread
from trustplane.config import Settings
from trustplane.identity.kek import Kek, new_kek
from trustplane.identity.keys import KeyKind
from trustplane.identity.service import IdentityService
from trustplane.identity.workload_api_pb import workload_pb2, workload_pb2_grpc
from trustplane.store.database import create_store_engine, migrate

WORKLOAD_ID = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout"
HEADER = (("workload.spiffe.io", "true"),)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def service(sqlite_engine: Engine, kek: Kek) -> Iterator[IdentityService]:
    settings = Settings(identity={"trust_domain": TRUST_DOMAIN, "kek": new_kek()})
    service = IdentityService.from_settings(settings, sqlite_engine, kek)
    service.key_store.initialise()
    service.load()
    yield service
    service.stop()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "agent" / "public.sock"


@pytest.fixture
def agent(service: IdentityService, socket_path: Path) -> Iterator[WorkloadThread]:
    with WorkloadThread(service, socket_path) as running:
        yield running


def register_me(service: IdentityService, spiffe_id: str = WORKLOAD_ID, **ttl: int) -> None:
    """An entry matching this test process (uid, gid and its executable's path)."""
    exe = os.readlink(f"/proc/{os.getpid()}/exe")
    service.entry_store.create(
        spiffe_id,
        [f"unix:uid:{os.getuid()}", f"unix:gid:{os.getgid()}", f"unix:path:{exe}"],
        owner="team-shop",
        **ttl,
    )
    service.entries.refresh()


def stub(socket_path: Path) -> workload_pb2_grpc.SpiffeWorkloadAPIStub:
    return workload_pb2_grpc.SpiffeWorkloadAPIStub(grpc.insecure_channel(f"unix:{socket_path}"))


def test_py_spiffe_fetches_and_validates_svids_and_bundles(
    service: IdentityService, agent: WorkloadThread, socket_path: Path
) -> None:
    register_me(service)
    with spiffe.WorkloadApiClient(socket_path=f"unix:{socket_path}") as client:
        svid = client.fetch_x509_svid()
        assert str(svid.spiffe_id) == WORKLOAD_ID
        leaf = svid.leaf
        ttl = leaf.not_valid_after_utc.timestamp() - time.time()
        assert 3500 < ttl <= 3600  # the 1 h default
        bundles = client.fetch_x509_bundles()
        bundle = bundles.get_bundle_for_trust_domain(spiffe.TrustDomain(TRUST_DOMAIN))
        assert bundle is not None
        (ca,) = bundle.x509_authorities
        leaf.verify_directly_issued_by(ca)
        context = client.fetch_x509_context()
        assert str(context.default_svid.spiffe_id) == WORKLOAD_ID

        jwt_svid = client.fetch_jwt_svid(audience={"payments"})
        assert str(jwt_svid.spiffe_id) == WORKLOAD_ID
        assert 250 < jwt_svid.expiry - time.time() <= 300  # the 5 min default
        jwt_bundles = client.fetch_jwt_bundles()
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(spiffe.TrustDomain(TRUST_DOMAIN))
        checked = spiffe.JwtSvid.parse_and_validate(jwt_svid.token, jwt_bundle, {"payments"})
        assert str(checked.spiffe_id) == WORKLOAD_ID
        validated = client.validate_jwt_svid(jwt_svid.token, "payments")
        assert str(validated.spiffe_id) == WORKLOAD_ID
    assert service.inventory.flush() == 1


def test_missing_security_header_is_invalid_argument(
    service: IdentityService, agent: WorkloadThread, socket_path: Path
) -> None:
    register_me(service)
    with pytest.raises(grpc.RpcError) as caught:
        stub(socket_path).FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "security header" in caught.value.details()


def test_unregistered_caller_is_permission_denied(
    service: IdentityService, agent: WorkloadThread, socket_path: Path
) -> None:
    service.entry_store.create(WORKLOAD_ID, [f"unix:uid:{os.getuid() + 4242}"])
    service.entries.refresh()
    for call, request in (
        ("FetchJWTSVID", workload_pb2.JWTSVIDRequest(audience=["x"])),
        ("ValidateJWTSVID", workload_pb2.ValidateJWTSVIDRequest(audience="x", svid="y")),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub(socket_path), call)(request, metadata=HEADER)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "no registration entry matches" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        next(stub(socket_path).FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_every_selector_must_match(
    service: IdentityService, agent: WorkloadThread, socket_path: Path
) -> None:
    service.entry_store.create(WORKLOAD_ID, [f"unix:uid:{os.getuid()}", "unix:sha256:" + "0" * 64])
    service.entries.refresh()
    with pytest.raises(grpc.RpcError) as caught:
        stub(socket_path).FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]), metadata=HEADER)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_bad_requests_name_the_problem(
    service: IdentityService, agent: WorkloadThread, socket_path: Path
) -> None:
    register_me(service)
    api = stub(socket_path)
    cases = [
        ("FetchJWTSVID", workload_pb2.JWTSVIDRequest(), "audience must be specified"),
        (
            "FetchJWTSVID",
            workload_pb2.JWTSVIDRequest(audience=["x"], spiffe_id=f"spiffe://{TRUST_DOMAIN}/other"),
            "not entitled",
        ),
        ("ValidateJWTSVID", workload_pb2.ValidateJWTSVIDRequest(audience="x"), "svid must be"),
        (
            "ValidateJWTSVID",
            workload_pb2.ValidateJWTSVIDRequest(audience="x", svid="not.a.jwt"),
            "token_malformed",
        ),
    ]
    for call, request, detail in cases:
        with pytest.raises(grpc.RpcError) as caught:
            getattr(api, call)(request, metadata=HEADER)
        assert detail in caught.value.details(), caught.value.details()
        assert caught.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.PERMISSION_DENIED,
        )


def test_a_direct_connection_to_the_grpc_socket_is_not_attested(
    service: IdentityService, agent: WorkloadThread
) -> None:
    register_me(service)
    inner = agent.server._inner
    with pytest.raises(grpc.RpcError) as caught:
        stub(Path(inner)).FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]), metadata=HEADER)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert os.stat(os.path.dirname(inner)).st_mode & 0o077 == 0


def test_stream_pushes_a_new_svid_before_half_life_and_on_rotation(
    service: IdentityService, agent: WorkloadThread, socket_path: Path
) -> None:
    register_me(service)
    # an entry with a 4 s lifetime (below what the store accepts) to see the half-life push
    (entry,) = service.entries.snapshot()
    service.entries.replace([replace(entry, x509_ttl_seconds=4)])
    stream = stub(socket_path).FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
    started = time.monotonic()
    first = next(stream).svids[0].x509_svid
    second = next(stream).svids[0].x509_svid
    elapsed = time.monotonic() - started
    assert first != second
    assert 1.5 <= elapsed < 3.5  # at half-life (2 s), before expiry (4 s)
    # rotation: a new CA activated → the stream pushes an SVID signed by it, with both CAs
    service.entries.replace([replace(entry, x509_ttl_seconds=3600)])
    next(stream)
    service.key_store.prepare(KeyKind.X509)
    service.key_store.activate(KeyKind.X509)
    service.refresh_keys()
    pushed = next(stream).svids[0]
    from cryptography import x509

    leaf = x509.load_der_x509_certificate(pushed.x509_svid)
    new_ca = service.keys.x509_signer
    assert new_ca is not None and new_ca.certificate is not None
    leaf.verify_directly_issued_by(new_ca.certificate)
    assert len(service.keys.x509_authorities) == 2
    stream.cancel()


@pytest.mark.skipif(os.getuid() != 0, reason="starts workloads under other group ids (root)")
def test_two_registered_processes_establish_mtls_and_an_unregistered_one_is_refused(
    service: IdentityService, agent: WorkloadThread, socket_path: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from tests.support import REPO

    server_id, client_id = f"spiffe://{TRUST_DOMAIN}/server", f"spiffe://{TRUST_DOMAIN}/client"
    service.entry_store.create(server_id, ["unix:uid:0", "unix:gid:41001"])
    service.entry_store.create(client_id, ["unix:uid:0", "unix:gid:41002"])
    service.entries.refresh()
    peer = [sys.executable, str(REPO / "tests" / "identity" / "mtls_peer.py")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [*peer, "serve", str(socket_path), str(port_file), client_id],
        group=41001,
        extra_groups=[],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = port_file.read_text()
        # the unregistered workload gets no SVID, so it has nothing to present
        stranger = subprocess.run(
            [*peer, "dial", str(socket_path), port, server_id],
            group=41003,
            extra_groups=[],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stranger.returncode == 3, stranger.stderr
        assert "no registration entry matches" in stranger.stderr
        # and a TLS client without a certificate is refused by the server
        import ssl

        anonymous = ssl.create_default_context()
        anonymous.check_hostname, anonymous.verify_mode = False, ssl.CERT_NONE
        with (
            pytest.raises((ssl.SSLError, ConnectionError)),
            socket_connect(int(port)) as raw,
            anonymous.wrap_socket(raw) as conn,
        ):
            conn.sendall(b"x")
            conn.recv(10)
        client = subprocess.run(
            [*peer, "dial", str(socket_path), port, server_id],
            group=41002,
            extra_groups=[],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == "hello from dialer"
        assert server.wait(30) == 0
    finally:
        server.kill()
        server.wait()


def socket_connect(port: int):  # type: ignore[no-untyped-def]
    import socket

    return socket.create_connection(("127.0.0.1", port))


def test_jwt_svids_are_reused_until_half_life(
    service: IdentityService, agent: WorkloadThread, socket_path: Path
) -> None:
    register_me(service)
    api = stub(socket_path)

    def fetch(*audience: str) -> str:
        response = api.FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=list(audience)), metadata=HEADER
        )
        return str(response.svids[0].svid)

    first = fetch("db")
    assert fetch("db") == first  # the same audience: the cached SVID
    assert fetch("db", "cache") != first
    service.key_store.prepare(KeyKind.JWT)
    service.key_store.activate(KeyKind.JWT)
    service.refresh_keys()
    assert fetch("db") != first  # new keys: a new SVID
