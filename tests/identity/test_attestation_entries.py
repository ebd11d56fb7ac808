"""Attestation from the kernel and /proc, registration entries and the inventory."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine

from tests.identity.conftest import TRUST_DOMAIN
from trustplane.config import ExchangeRuleSettings
from trustplane.identity.entries import EntryError, EntryStore, parse_selector
from trustplane.identity.inventory import Inventory, inventory_report
from trustplane.identity.workload_attestation import (
    AttestationError,
    Attestor,
    PeerCred,
    peer_credentials,
    process_start_time,
)


def test_peer_credentials_and_selectors_of_this_process() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        peer = peer_credentials(left)
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    selectors = Attestor().attest(peer)
    exe = os.readlink(f"/proc/{os.getpid()}/exe")
    with open(exe, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    assert selectors == {
        f"unix:uid:{os.getuid()}",
        f"unix:gid:{os.getgid()}",
        f"unix:path:{exe}",
        f"unix:sha256:{digest}",
    }


def test_a_reused_pid_is_not_attested_as_the_old_process() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        peer = peer_credentials(left)
    older = replace(peer, start_time=peer.start_time - 1)  # what a reused pid looks like
    with pytest.raises(AttestationError, match="another process"):
        Attestor().attest(older)


def test_a_process_that_is_gone_is_not_attested() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start_time(child.pid)
    child.wait()
    with pytest.raises(AttestationError, match="gone"):
        Attestor().attest(PeerCred(child.pid, 0, 0, started))


@pytest.mark.parametrize(
    ("selector", "problem"),
    [
        ("unix:uid:abc", "must be a number"),
        ("unix:path:relative/bin", "absolute"),
        ("unix:sha256:ABC", "64 lowercase hex"),
        ("k8s:ns:default", "expected unix"),
        ("unix:pid:1", "expected unix"),
    ],
)
def test_bad_selectors_are_named(selector: str, problem: str) -> None:
    with pytest.raises(EntryError, match=problem):
        parse_selector(selector)


def test_entries_round_trip_and_refuse_bad_fields(engine: Engine) -> None:
    store = EntryStore(engine, TRUST_DOMAIN, max_ttl_seconds=3600)
    entry = store.create(
        f"spiffe://{TRUST_DOMAIN}/db",
        ["unix:uid:1000", "unix:gid:50", "unix:uid:1000"],
        owner="team-db",
        x509_ttl_seconds=600,
    )
    assert entry.selectors == ("unix:gid:50", "unix:uid:1000")  # sorted, deduplicated
    assert [e.id for e in store.list()] == [entry.id]
    assert entry.matches(frozenset({"unix:uid:1000", "unix:gid:50", "unix:path:/x"}))
    assert not entry.matches(frozenset({"unix:uid:1000"}))
    for kwargs, problem in [
        ({"spiffe_id": "spiffe://other.test/db"}, "not in this trust domain"),
        ({"spiffe_id": f"spiffe://{TRUST_DOMAIN}"}, "needs a path"),
        ({"spiffe_id": "not-an-id"}, "spiffe_id"),
        ({"selectors": []}, "at least one selector"),
        ({"x509_ttl_seconds": 7200}, "x509_ttl_seconds: must be within"),
    ]:
        arguments = {"spiffe_id": f"spiffe://{TRUST_DOMAIN}/x", "selectors": ["unix:uid:1"]}
        arguments.update(kwargs)  # type: ignore[arg-type]
        with pytest.raises(EntryError, match=problem):
            store.create(**arguments)  # type: ignore[arg-type]
    assert store.delete(entry.id).id == entry.id
    assert store.list() == []
    with pytest.raises(EntryError, match="no registration entry"):
        store.delete(entry.id)


def test_inventory_sums_sightings_and_flags(engine: Engine) -> None:
    inventory = Inventory(engine)
    inventory.seen("spiffe://t/a", "workload", "", 3600)
    inventory.seen("spiffe://t/a", "workload", "team-a", 300)
    inventory.seen("spiffe://t/ci", "ci", "team-ci", 600)
    assert inventory.flush() == 2
    inventory.seen("spiffe://t/a", "workload", "", 100_000)
    inventory.flush()
    report = {i.principal: i for i in inventory_report(engine, long_lived_seconds=86_400)}
    assert report["spiffe://t/a"].issued == 3
    assert report["spiffe://t/a"].owner == "team-a"
    assert report["spiffe://t/a"].flags == ("long_lived",)
    assert report["spiffe://t/ci"].flags == ()
    later = inventory_report(engine, unused_days=1, now=time.time() + 2 * 86_400)
    assert all("unused" in i.flags for i in later)


def test_inventory_keeps_sightings_when_the_store_fails(engine: Engine) -> None:
    inventory = Inventory(engine)
    inventory.seen("spiffe://t/a", "workload", "x", 60)
    inventory._engine = _Failing()  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        inventory.flush()
    inventory._engine = engine
    assert inventory.flush() == 1  # the same sighting, written once the store is back
    assert inventory_report(engine)[0].issued == 1


class _Failing:
    def begin(self) -> object:
        raise RuntimeError("store down")


def test_exchange_rules_cap_lifetime_at_15_minutes() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 900"):
        ExchangeRuleSettings(
            name="r",
            issuer="https://ci",
            claims={"a": "b"},
            spiffe_id="spiffe://t/x",
            ttl_seconds=901,
        )
