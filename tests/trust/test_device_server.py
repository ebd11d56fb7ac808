"""Device posture through a real server, on each backend: reports posted and read through the
admin API (and recorded in the ledger), the request's device named by a trusted proxy's header,
a device turning non-compliant refused at the next request, stale and unknown devices scored
as signals, not errors, and `trustplane trust explain` / `trust signals` reading it back."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SHOP
from tests.issuer import Jwks, Key, user_token
from tests.issuer import issuer_settings as issuers
from tests.support import Server, authzen, run_cli, running_server
from tests.trust.test_trust_server import LOGS, PROXY, record, signals

pytestmark = pytest.mark.slow

COMPLIANT = {
    "disk_encrypted": True,
    "os_patch_age_days": 3,
    "edr_running": True,
    "screen_lock": True,
    "managed": True,
}


def shop_with_strict_devices(where: Path) -> Path:
    """The shop, with a failing device worth 80 (critical: denied) and an unknown one 20."""
    bundle = where / "shop"
    shutil.copytree(SHOP, bundle)
    trust = (bundle / "trust.yaml").read_text()
    trust = trust.replace("    weight: 50\n", "    weight: 80\n").replace(
        "    unknown: 0\n", "    unknown: 0.25\n"
    )
    (bundle / "trust.yaml").write_text(trust)
    return bundle


@pytest.fixture(scope="module")
def server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory, issuer: Jwks
) -> Iterator[Server]:
    bundle = shop_with_strict_devices(tmp_path_factory.mktemp("bundle"))
    with running_server(
        tmp_path_factory.mktemp("state"),
        module_database_url,
        bundle,
        policy__watch="false",
        pep__issuers=issuers(issuer),
        server__trusted_proxies=[f"{PROXY}/32"],
        # pep.auth is off in tests: every caller is the PEP `anonymous`, trusted here so that
        # an AuthZEN call may name its device.
        trust=json.dumps({"geoip": False, "trusted_peps": ["anonymous"]}),
    ) as srv:
        yield srv


def report(server: Server, device: str, **posture: Any) -> httpx.Response:
    return server.client.post(
        f"/v1/trust/devices/{device}/posture", headers=server.admin, json=COMPLIANT | posture
    )


def from_device(server: Server, token: str, device: str | None) -> Any:
    transport = httpx.HTTPTransport(local_address=PROXY)
    headers = {
        "X-Original-URI": LOGS,
        "X-Original-Method": "GET",
        "authorization": f"Bearer {token}",
    }
    if device is not None:
        headers["X-Device-Id"] = device
    with httpx.Client(base_url=server.url, transport=transport, timeout=10) as proxy:
        return proxy.get("/v1/forward-auth", headers=headers)


def test_a_report_is_stored_read_back_and_recorded(server: Server) -> None:
    made = report(server, "laptop-1", owner='User::"alice"', certificate_serial="0x1f")
    assert made.status_code == 201, made.text
    assert made.json()["reported_by"] == "bootstrap"
    again = report(server, "laptop-1", os_patch_age_days=4)
    assert again.status_code == 200, again.text
    read = server.client.get("/v1/trust/devices/laptop-1/posture", headers=server.admin)
    assert read.status_code == 200
    assert read.json()["os_patch_age_days"] == 4 and read.json()["certificate_serial"] is None
    admin = server.client.get(
        "/v1/decisions", params={"kind": "admin", "limit": 50}, headers=server.admin
    ).json()["decisions"]
    reports = [r for r in admin if r["action"] == "trust:device-report"]
    assert len(reports) >= 2 and reports[0]["target"].endswith("laptop-1"), reports[:1]
    assert reports[0]["details"]["posture"]["os_patch_age_days"] == 4


@pytest.mark.parametrize(
    ("device", "body", "status", "field"),
    [
        ("laptop-2", COMPLIANT | {"edr_running": "yes"}, 422, "edr_running"),
        ("laptop-2", COMPLIANT | {"battery": 80}, 422, "battery"),
        ("laptop-2", COMPLIANT | {"reported_at": time.time() + 86400}, 422, "reported_at"),
        ("laptop-2", COMPLIANT | {"certificate_serial": "zz"}, 422, "certificate_serial"),
        ("-bad id", COMPLIANT, 422, "device id"),
    ],
)
def test_a_bad_report_is_a_clear_4xx(
    server: Server, device: str, body: dict[str, Any], status: int, field: str
) -> None:
    answer = server.client.post(
        f"/v1/trust/devices/{device}/posture", headers=server.admin, json=body
    )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert field in answer.text
    missing = server.client.get("/v1/trust/devices/nobody-here/posture", headers=server.admin)
    assert missing.status_code == 404


def test_a_report_without_the_admin_token_is_refused(server: Server) -> None:
    answer = server.client.post("/v1/trust/devices/laptop-3/posture", json=COMPLIANT)
    assert answer.status_code == 401


def test_a_device_turning_non_compliant_is_refused_at_the_next_request(
    server: Server, key: Key
) -> None:
    token = user_token(key, "alice")
    assert report(server, "laptop-4").status_code == 201
    fine = from_device(server, token, "laptop-4")
    assert fine.status_code == 200, fine.text
    trust = record(server, fine)["trust"]
    assert "device" in trust["quiet"] and trust["score"] == 0

    assert report(server, "laptop-4", edr_running=False).status_code == 200
    refused = from_device(server, token, "laptop-4")  # the same replica: no waiting
    assert refused.status_code == 403, refused.text
    assert refused.json()["reasons"] == ["forbid-high-risk"]
    decision = record(server, refused)
    device = signals(decision["trust"])["device"]
    assert device["points"] == 80 and device["source"] == "proxy"
    assert device["observed"]["failing"] == ["edr"]
    assert "laptop-4 fails edr" in device["explanation"]

    explained = run_cli(
        "trust", "explain", decision["decision_id"][:13], "--url", server.url, "--json",
        env=server.env,
    )  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    shown = json.loads(explained.stdout)
    assert shown["trust"]["score"] == 80 and shown["decision"] == "deny"
    first = shown["trust"]["signals"][0]
    assert first["name"] == "device" and first["contribution"] == 80
    assert first["mode"] == "enforced" and first["source"] == "proxy"
    assert first["weight"] == 80 and first["value"] == 1.0
    local = run_cli("trust", "explain", decision["decision_id"][:13], env=server.env)
    assert local.returncode == 0, local.stderr  # the local store, as a table
    assert "risk 80 (critical)" in local.stdout and "laptop-4 fails edr" in local.stdout


def test_unknown_and_stale_devices_are_signals_not_errors(server: Server, key: Key) -> None:
    token = user_token(key, "bob")
    unknown = from_device(server, token, "never-reported")
    assert unknown.status_code in (200, 403), unknown.text  # a decision, whatever it is
    device = signals(record(server, unknown)["trust"])["device"]
    assert (
        device["points"] == 20 and "no posture report for never-reported" in (device["explanation"])
    )
    named_none = from_device(server, token, None)
    device = signals(record(server, named_none)["trust"])["device"]
    assert device["explanation"] == "the request names no device"

    old = time.time() - 3 * 86400
    assert report(server, "laptop-5", reported_at=old).status_code == 201
    stale = from_device(server, token, "laptop-5")
    device = signals(record(server, stale)["trust"])["device"]
    assert device["points"] == 40 and "stale after 86400 s" in device["explanation"]  # stale: 0.5


def test_the_device_header_is_ignored_from_an_untrusted_peer(server: Server, key: Key) -> None:
    """127.0.0.3 is not a trusted proxy: its X-Device-Id names nothing."""
    assert report(server, "laptop-6", managed=False).status_code == 201
    transport = httpx.HTTPTransport(local_address="127.0.0.3")
    with httpx.Client(base_url=server.url, transport=transport, timeout=10) as envoy:
        answer = envoy.get(
            f"/v1/envoy/http{LOGS}",
            headers={
                "X-Device-Id": "laptop-6",
                "authorization": f"Bearer {user_token(key, 'carol')}",
            },
        )
    trust = record(server, answer)["trust"]
    device = signals(trust)["device"]
    assert device["explanation"] == "the request names no device"


def test_trust_signals_summarises_what_fired(server: Server, key: Key) -> None:
    token = user_token(key, "dave")
    assert report(server, "laptop-7", disk_encrypted=False).status_code == 201
    from_device(server, token, "laptop-7")
    from_device(server, token, "laptop-7")
    deadline = time.monotonic() + 10
    while True:
        result = run_cli("trust", "signals", "--since", "1h", "--json", env=server.env)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        rows = {row["signal"]: row for row in summary["signals"]}
        dave = [t for t in rows.get("device", {}).get("top", []) if "dave" in t["principal"]]
        if (dave and dave[0]["count"] >= 2) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert dave and dave[0]["count"] >= 2, summary
    assert rows["device"]["enforced"] >= 2 and rows["device"]["denied"] >= 2
    remote = run_cli("trust", "signals", "--url", server.url, "--json", env=server.env)
    assert remote.returncode == 0, remote.stderr
    assert "device" in {row["signal"] for row in json.loads(remote.stdout)["signals"]}
    bad = run_cli("trust", "signals", "--since", "yesterday-ish", env=server.env)
    assert bad.returncode != 0 and "--since" in bad.stderr
    unknown = run_cli("trust", "explain", "ffffffff", env=server.env)
    assert unknown.returncode != 0 and "no decision ffffffff" in unknown.stderr


def test_a_trusted_pep_names_the_device_in_authzen_context(server: Server) -> None:
    assert report(server, "laptop-8", os_patch_age_days=90).status_code == 201
    body = authzen(
        ("User", "alice"),
        "ops:read-logs",
        ("Service", "checkout"),
        {"mfa": True, "auth_age_seconds": 60, "trust": {"inputs": {"device_id": "laptop-8"}}},
    )
    answer = server.client.post("/access/v1/evaluation", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["decision"] is False
    trust = answer.json()["context"]["trust"]
    device = signals(trust)["device"]
    assert device["source"] == "pep:anonymous" and device["points"] == 80
    assert "patches 90 days old, limit 30" in device["explanation"]
