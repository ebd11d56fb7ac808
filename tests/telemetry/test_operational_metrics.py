"""The health signals behind the shipped alerts, unit by unit: the JWKS health the token
verifier reports (`trustplane_jwks_up`, `trustplane_jwks_age_seconds`), the change feed's
health callback (`trustplane_change_feed_up`, `_lag_seconds`) and the PEP label of the
decision counter."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from tests.issuer import Jwks, rsa_key
from tests.support import free_port, wait_for
from trustplane.identity.tokens import JwksCache, TokenRejected
from trustplane.store.feed import ChangeFeed
from trustplane.telemetry.metrics import Metrics


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_jwks_health_is_what_the_last_fetch_found() -> None:
    issuer = Jwks()
    issuer.keys = [rsa_key("k1").jwk()]
    client = httpx.Client(timeout=5)
    good = JwksCache(issuer.uri, client)
    unreachable = JwksCache(f"http://127.0.0.1:{free_port()}/jwks", client)
    try:
        assert good.status() is None  # nothing fetched yet: nothing to report
        good.key("k1")
        ok, age = good.status() or (False, None)
        assert ok and age is not None and age >= 0
        with pytest.raises(TokenRejected):  # refused, and remembered as a failed fetch
            unreachable.key("k1")
        assert unreachable.status() == (False, None)
        metrics = Metrics()
        metrics.observe_jwks({"https://idp": (True, 3.0), "https://down": (False, None)})
        up = samples(metrics, "trustplane_jwks_up")
        assert up == {(("issuer", "https://idp"),): 1.0, (("issuer", "https://down"),): 0.0}
        assert samples(metrics, "trustplane_jwks_age_seconds") == {
            (("issuer", "https://idp"),): 3.0
        }
    finally:
        client.close()
        issuer.close()


def test_the_change_feed_reports_its_health_after_each_read(engine: Engine) -> None:
    reports: list[tuple[bool, float]] = []
    feed = ChangeFeed(
        engine,
        poll_interval=0.05,
        safety_interval=0.1,
        on_health=lambda h, lag: reports.append((h, lag)),
    )
    feed.start()
    try:
        wait_for(lambda: len(reports) >= 2)
    finally:
        feed.stop()
    healthy, lag = reports[-1]
    assert healthy and 0 <= lag < 5
