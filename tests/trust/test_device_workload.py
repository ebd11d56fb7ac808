"""The device and workload-integrity signals in process, on each backend with an injected clock:
how a request's device is found (certificate URI or serial, trusted proxy header, trusted PEP),
the device index's epoch that tells caches a posture changed, reports kept in order in the
store, and the workload signal against fakes of the identity and posture planes."""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine

from tests.trust.test_network_travel import T0, Bundle, Clock
from trustplane.enforcement.credentials import ProxyTrust
from trustplane.enforcement.devices import DeviceFinder
from trustplane.model import CALLING_PEP, AccessRequest, EntityRef, Evidence
from trustplane.trust.assessor import TrustAssessor
from trustplane.trust.device import DeviceIndex, DeviceSignals, Posture
from trustplane.trust.device_store import all_postures, forget_device, save_posture
from trustplane.trust.workload import WorkloadSignals, selector_digests

PROXY = "127.0.0.2"
DIGEST = "sha256:" + "ab" * 32


def certificate(serial: int, uri: str | None = None) -> str:
    """A URL-encoded PEM client certificate, as Envoy and XFCC forward one."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if uri:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return quote(pem.decode())


def finder(prefix: str | None = "spiffe://example.org/device/") -> DeviceFinder:
    from ipaddress import ip_network

    return DeviceFinder(ProxyTrust([ip_network(f"{PROXY}/32")]), "X-Device-Id", prefix)


def test_the_device_is_found_only_from_what_this_pdp_can_vouch_for() -> None:
    with_uri = certificate(4242, "spiffe://example.org/device/LAPTOP-7")
    assert finder().find({}, "10.0.0.9", None, with_uri) == ("LAPTOP-7", "mtls")
    assert finder(None).find({}, "10.0.0.9", None, with_uri) == ("serial:4242", "mtls")
    xfcc = {"x-forwarded-client-cert": f'By=spiffe://x;Cert="{certificate(77)}"'}
    assert finder().find(xfcc, PROXY) == ("serial:77", "mtls")
    assert finder().find(xfcc, "127.0.0.9") == (None, None), "XFCC from a stranger"
    assert finder().find({"x-device-id": "tab-3"}, PROXY) == ("tab-3", "proxy")
    assert finder().find({"x-device-id": "tab-3"}, "127.0.0.9") == (None, None)
    assert finder().find({"x-device-id": "../etc"}, PROXY) == (None, None), "not a device id"
    spiffe = "spiffe://example.org/device/kiosk-1"
    assert finder().find({}, None, spiffe) == ("kiosk-1", "mtls")


def posture(device: str, reported_at: float, **changes: Any) -> Posture:
    values: dict[str, Any] = {
        "disk_encrypted": True,
        "os_patch_age_days": 2,
        "edr_running": True,
        "screen_lock": True,
        "managed": True,
    }
    values.update(changes)
    return Posture(device, reported_at=reported_at, received_at=reported_at,
                   reported_by="mdm", **values)  # fmt: skip


def ask(assessor: TrustAssessor, device: str | None, workload: bool = False) -> dict[str, Any]:
    request = AccessRequest(
        EntityRef("User", "alice"),
        EntityRef("Action", "read"),
        EntityRef("Doc", "d"),
        {},
        Evidence({"amr": ["hwk"]}, None, workload, "token", "alice", device, "proxy"),
    )
    _, record = assessor(request, Bundle(device=50))  # type: ignore[arg-type]
    return {s["name"]: s for s in record["signals"]} | {"_": record}


def test_reports_in_the_store_and_the_index_epoch(engine: Engine) -> None:
    index = DeviceIndex(lambda: all_postures(engine))
    epochs: list[int] = []
    index.on_change(epochs.append)
    index.refresh()
    assert len(index) == 0 and epochs == []
    clock = Clock()
    assessor = TrustAssessor([DeviceSignals(index)], clock=clock)
    assert save_posture(engine, posture("pc-1", T0, certificate_serial="4242"))
    index.refresh()
    assert epochs == [1]
    assert "device" in ask(assessor, "pc-1")["_"]["quiet"]
    assert "device" in ask(assessor, "serial:4242")["_"]["quiet"], "by certificate serial"
    index.refresh()
    assert epochs == [1], "nothing changed: no new epoch"

    assert not save_posture(engine, posture("pc-1", T0 + 60, screen_lock=False))
    index.refresh()
    assert epochs == [1, 2], "a posture change moves the epoch, and the hooks hear it"
    assert assessor.epoch == 2, "the assessor's epoch, for decision caches"
    failing = ask(assessor, "pc-1")["device"]
    assert failing["points"] == 50 and failing["observed"]["failing"] == ["screen_lock"]

    save_posture(engine, posture("pc-1", T0 - 3600))  # an older report, delivered late
    index.refresh()
    assert index.find("pc-1").screen_lock is False, "the newer report is kept"  # type: ignore[union-attr]

    clock.now += 2 * 86400  # the report ages past max_age_seconds (a day)
    stale = ask(assessor, "pc-1")["device"]
    assert stale["points"] == 50 and "stale after 86400 s" in stale["explanation"]
    assert forget_device(engine, "pc-1")
    index.refresh()
    assert "no posture report for pc-1" in ask(assessor, "pc-1")["device"]["explanation"]
    assert ask(assessor, "pc-1", workload=True)["_"]["quiet"] == ["device"]


def test_a_trusted_pep_may_name_the_device_and_others_may_not() -> None:
    index = DeviceIndex(lambda: (1, [posture("pad-9", T0, managed=False)]))
    index.refresh()
    assessor = TrustAssessor([DeviceSignals(index)], trusted_peps=["edge"], clock=Clock())
    request = AccessRequest(
        EntityRef("User", "alice"),
        EntityRef("Action", "read"),
        EntityRef("Doc", "d"),
        {"trust": {"inputs": {"device_id": "pad-9"}}},
    )
    for pep, expected in (("edge", 50), ("stranger", 50)):
        token = CALLING_PEP.set(pep)
        try:
            _, record = assessor(request, Bundle(device=50))  # type: ignore[arg-type]
        finally:
            CALLING_PEP.reset(token)
        device = {s["name"]: s for s in record["signals"]}["device"]
        assert device["points"] == expected
        if pep == "edge":
            assert device["source"] == "pep:edge" and "fails managed" in device["explanation"]
        else:  # unknown (1.0 by default): the stranger's word names no device
            assert device["explanation"] == "the request names no device"
            assert "not a PEP trusted" in record["ignored"]


class Planes:
    """Fakes of what the identity and posture planes answer."""

    def __init__(self) -> None:
        image = f"k8s:pod-image:shop/checkout@{DIGEST}"
        self.entries = {
            "spiffe://td/ns/shop/sa/checkout": ("k8s:ns:shop", image),
            "spiffe://td/ns/shop/sa/cart": ("k8s:ns:shop",),
        }
        self.attestations = {DIGEST: ("spiffe://td/ci/shop",)}

    def drift(self, spiffe_id: str) -> str | None:
        if not spiffe_id.startswith("spiffe://td/"):
            return "foreign_trust_domain"
        return None if spiffe_id in self.entries else "unregistered"

    def digests(self, spiffe_id: str) -> tuple[str, ...]:
        return selector_digests(self.entries.get(spiffe_id, ()))

    def attested(self, digest: str) -> tuple[str, ...]:
        return self.attestations.get(digest, ())


def workload(assessor: TrustAssessor, subject: str, *, bundle: Bundle | None = None) -> Any:
    request = AccessRequest(
        EntityRef("Service", subject),
        EntityRef("Action", "call"),
        EntityRef("Api", "x"),
        {},
        Evidence(None, None, True, "mtls", subject),
    )
    _, record = assessor(request, bundle or Bundle(workload_integrity=40))  # type: ignore[arg-type]
    found = {s["name"]: s for s in record["signals"]}
    return found.get("workload_integrity", {"points": 0, "quiet": True})


def test_workload_integrity_from_the_workload_api_and_image_attestations() -> None:
    planes = Planes()
    signals = WorkloadSignals(planes.drift, planes.digests, planes.attested)
    assessor = TrustAssessor([signals], clock=Clock())
    assert workload(assessor, "spiffe://td/ns/shop/sa/checkout")["points"] == 0
    cart = workload(assessor, "spiffe://td/ns/shop/sa/cart")
    assert cart["points"] == 20 and "no entry pins an image digest" in cart["explanation"]
    rogue = workload(assessor, "spiffe://td/ns/shop/sa/rogue")
    assert rogue["points"] == 40 and rogue["observed"]["drift"] == "unregistered"
    foreign = workload(assessor, "spiffe://other/ns/x")
    assert foreign["points"] == 40 and "another trust domain" in foreign["explanation"]

    from trustplane.trust.policy import SignalRule

    strict = Bundle(
        SignalRule("workload_integrity", 40, True, 1.0, {"signers": ["spiffe://td/ci/payments"]})
    )
    other_signer = workload(assessor, "spiffe://td/ns/shop/sa/checkout", bundle=strict)
    assert (
        other_signer["points"] == 20
        and "by spiffe://td/ci/payments" in (other_signer["explanation"])
    )
    relaxed = Bundle(SignalRule("workload_integrity", 40, True, 1.0, {"require_image": 0}))
    assert workload(assessor, "spiffe://td/ns/shop/sa/cart", bundle=relaxed)["points"] == 0

    alone = TrustAssessor([WorkloadSignals(None, None, None)], clock=Clock())
    unplanned = workload(alone, "spiffe://td/ns/shop/sa/checkout")
    assert unplanned["points"] == 40 and "no Workload API" in unplanned["explanation"]


def test_selector_digests() -> None:
    exe = "ef" * 32
    selectors = (
        f"k8s:pod-image:r/app@{DIGEST}",
        f"docker:image_id:{DIGEST}",
        f"unix:sha256:{exe}",
        "unix:uid:1000",
    )
    assert selector_digests(selectors) == (DIGEST, f"sha256:{exe}")
