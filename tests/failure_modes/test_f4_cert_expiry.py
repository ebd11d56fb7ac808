"""F4 certificate expiry: sixteen days of a trust domain's life under an accelerated clock. The
CA and JWT key rotate on schedule, the HTTPS serving certificate and a workload's X.509-SVID
(pushed over a real Workload API stream) are renewed before they expire and always chain to a
published CA, and `trustplane_certificate_expiry_timestamp_seconds{kind}` tells when each
expires. The clock is injected into the rotation code (IdentityService, IdentityKeys, the
Workload API stream, the serving certificate's renewal); nothing sleeps through the days."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from tests.failure_modes.identity_support import TRUST_DOMAIN, chains_to
from tests.identity.conftest import Clock
from tests.identity.workload import WorkloadThread
from tests.support import wait_for
from trustplane.config import Settings
from trustplane.identity.kek import new_kek
from trustplane.identity.service import IdentityService
from trustplane.identity.workload_api_pb import workload_pb2, workload_pb2_grpc
from trustplane.server.tls import CaServingCertificate
from trustplane.telemetry.metrics import Metrics

HOUR = 3600
STEP = 6 * HOUR
DAYS = 16
SVID_TTL = 12 * HOUR
HEADER = (("workload.spiffe.io", "true"),)


class HeldSvid:
    """A workload holding the X.509-SVID its Workload API stream last pushed."""

    def __init__(self, socket_path: Path) -> None:
        channel = grpc.insecure_channel(f"unix:{socket_path}")
        api = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        self._stream = api.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
        self.leaf: x509.Certificate | None = None
        self.pushes = 0
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        try:
            for response in self._stream:
                self.leaf = x509.load_der_x509_certificate(response.svids[0].x509_svid)
                self.pushes += 1
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    def close(self) -> None:
        self._stream.cancel()


@pytest.fixture
def clock() -> Clock:
    return Clock(time.time())


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        identity={
            "trust_domain": TRUST_DOMAIN,
            "kek": new_kek(),
            "ca_ttl_seconds": 7 * 86_400,
            "svid_max_ttl_seconds": 86_400,
        },
        store={"url": database_url},
        tls={
            "from_ca": True,
            "dns_names": ["trustplane.example.test", "127.0.0.1"],
            "cert_ttl_seconds": 86_400,
        },
    )


@pytest.fixture
def service(settings: Settings, engine: Engine, clock: Clock) -> Iterator[IdentityService]:
    service = IdentityService.from_settings(settings, engine, metrics=Metrics(), clock=clock)
    service.key_store.initialise()
    service.load()
    service.entry_store.create(
        f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout",
        [f"unix:uid:{os.getuid()}"],
        owner="team-shop",
        x509_ttl_seconds=SVID_TTL,
    )
    service.entries.refresh()
    yield service
    service.stop()


def gauges(service: IdentityService) -> dict[str, float]:
    assert service.metrics is not None
    text = generate_latest(service.metrics.registry).decode()
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "trustplane_certificate_expiry_timestamp_seconds"
        for sample in family.samples
    }


def not_after(certificate: x509.Certificate) -> float:
    return certificate.not_valid_after_utc.timestamp()


def valid_at(certificate: x509.Certificate, when: float) -> bool:
    return certificate.not_valid_before_utc.timestamp() <= when < not_after(certificate)


def test_days_of_rotation_never_let_a_certificate_lapse(
    service: IdentityService, settings: Settings, clock: Clock, tmp_path: Path
) -> None:
    serving = CaServingCertificate(settings)
    assert serving.renew_if_due(clock.now) == "there is none yet"
    active_cas: list[str] = []
    renewals = {"serving": 0}
    with WorkloadThread(service, tmp_path / "agent" / "public.sock") as agent:
        workload = HeldSvid(agent.server.socket_path)
        try:
            for _ in range(DAYS * 86_400 // STEP):
                clock.now += STEP
                service.tick()  # the minute-by-minute background pass, at this moment
                if serving.renew_if_due(clock.now) is not None:
                    renewals["serving"] += 1
                keys = service.keys
                assert keys.x509_signer is not None and keys.x509_signer.certificate is not None
                ca = keys.x509_signer.certificate
                if not active_cas or active_cas[-1] != keys.x509_signer.kid:
                    active_cas.append(keys.x509_signer.kid)
                authorities = [k.certificate for k in keys.x509_authorities if k.certificate]

                # the CA that signs has life left for every SVID it signs
                assert valid_at(ca, clock.now) and not_after(ca) > clock.now + SVID_TTL
                for record in service.key_store.records():
                    if record.superseded_at is not None:  # and keeps it once superseded
                        assert record.not_after - record.superseded_at > SVID_TTL, record
                # the workload's SVID is renewed before it expires, by a published CA
                leaf = wait_for(
                    lambda: (
                        workload.leaf is not None
                        and not_after(workload.leaf) > clock.now + STEP
                        and workload.leaf
                    ),
                    timeout=30,
                )
                assert valid_at(leaf, clock.now) and chains_to(leaf, authorities)
                # so is the HTTPS serving certificate
                served = x509.load_pem_x509_certificate(serving.path.read_bytes())
                assert valid_at(served, clock.now) and not_after(served) > clock.now + STEP
                assert chains_to(served, authorities)

                service.export_expiry()  # the gauges as of the renewals just made
                exported = gauges(service)
                assert exported["ca"] == not_after(ca)
                assert keys.jwt_signer is not None
                assert exported["jwt_key"] == keys.jwt_signer.record.not_after
                assert exported["serving"] == not_after(served)
                assert exported["x509_svid"] <= not_after(leaf)
                assert exported["x509_svid"] > clock.now
        finally:
            workload.close()
    # seven-day CAs, each active for half its life: four over sixteen days
    assert len(active_cas) == 4, active_cas
    assert workload.pushes >= DAYS * 86_400 // STEP
    assert renewals["serving"] >= DAYS * 86_400 // (12 * HOUR) - 1
    states = sorted(r.state.value for r in service.key_store.records(include_retired=True))
    assert states.count("retired") >= 2, states


def test_expiry_gauges_in_a_real_server(tmp_path: Path, database_url: str) -> None:
    from tests.failure_modes.identity_support import identity_server, metric_samples

    with identity_server(tmp_path / "state", database_url) as server:
        samples = metric_samples(server, "trustplane_certificate_expiry_timestamp_seconds")
        bundle = server.client.get("/v1/identity/bundle").json()
    ca = next(k for k in bundle["keys"] if k["use"] == "x509-svid")
    certificate = x509.load_der_x509_certificate(base64.b64decode(ca["x5c"][0]))
    assert samples['{kind="ca"}'] == not_after(certificate)
    assert samples['{kind="jwt_key"}'] > time.time() + 86_400


def test_a_superseded_ca_outlives_every_svid_it_may_have_signed(
    engine: Engine, clock: Clock
) -> None:
    """Generation after generation, a CA keeps at least `svid_max_ttl_seconds` of life when it
    is superseded, so no SVID is cut short by its CA (a schedule counted from activation let
    that margin shrink towards an eighth of a lifetime: 21 hours of a 7-day CA)."""
    from trustplane.identity.kek import Kek
    from trustplane.identity.keys import IdentityKeys, KeyKind

    raw = new_kek()
    kek = Kek(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    keys = IdentityKeys(
        engine, kek, TRUST_DOMAIN, ca_ttl_seconds=7 * 86_400, svid_max_ttl_seconds=86_400,
        clock=clock,
    )  # fmt: skip
    keys.initialise()
    for _ in range(60 * 24):  # sixty days, hour by hour
        clock.now += HOUR
        keys.advance()
    superseded = [
        r
        for r in keys.records(include_retired=True)
        if r.kind is KeyKind.X509 and r.superseded_at is not None
    ]
    assert len(superseded) >= 7
    for record in superseded:
        assert record.not_after - record.superseded_at >= 86_400, record
