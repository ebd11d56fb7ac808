"""F2, policy misdeploy, against a real server: a refused (broken) bundle keeps the last good
one serving; a bundle that is valid but denies what it should allow raises the deny-spike
alarm (log, `trustplane_deny_spike{revision}`, the bundle status) until the next activation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.decision.test_bundle_lifecycle import (
    REFUND,
    break_bundle,
    edit_description,
    revision,
    status,
)
from tests.support import Server, running_server, wait_for

pytestmark = pytest.mark.slow

DECISIONS = 20  # governance.deny_spike_decisions for these servers: each side of an activation

DENY_EVERYTHING = """@id("deny-everything")
@owner("platform")
@description("misdeploy: forbids every request")
forbid (principal, action, resource);
"""


def refunds(server: Server, count: int) -> list[bool]:
    answers = [
        server.client.post("/access/v1/evaluation", json=REFUND).json() for _ in range(count)
    ]
    return [bool(answer["decision"]) for answer in answers]


def spike_gauge(server: Server, revision: str) -> float | None:
    prefix = f'trustplane_deny_spike{{revision="{revision}"}} '
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def test_a_broken_bundle_is_refused_and_the_last_good_one_keeps_serving(
    tmp_path: Path, database_url: str, shop_copy: Path
) -> None:
    with running_server(
        tmp_path / "state", database_url, shop_copy, policy__watch="false"
    ) as server:
        good = revision(server)
        break_bundle(shop_copy)
        refused = server.client.post("/v1/bundle/reload", headers=server.admin)
        assert 400 <= refused.status_code < 500, refused.text
        assert status(server)["last_error"], "the refusal is visible in the bundle status"
        assert revision(server) == good
        assert refunds(server, 5) == [True] * 5
        answer = server.client.post("/access/v1/evaluation", json=REFUND).json()
        assert answer["context"]["revision"] == good


def test_a_deny_spike_after_an_activation_raises_the_alarm(
    tmp_path: Path, database_url: str, shop_copy: Path
) -> None:
    with running_server(
        tmp_path / "state",
        database_url,
        shop_copy,
        policy__watch="false",
        governance__deny_spike_decisions=DECISIONS,
        governance__deny_spike_threshold=0.5,
    ) as server:
        good = revision(server)
        assert refunds(server, DECISIONS) == [True] * DECISIONS  # the baseline: none denied

        # A valid bundle (it compiles; its tests went with the misdeploy) that denies all.
        shutil.rmtree(shop_copy / "tests")
        (shop_copy / "deny.cedar").write_text(DENY_EVERYTHING)
        reloaded = server.client.post("/v1/bundle/reload", headers=server.admin)
        assert reloaded.status_code == 200, reloaded.text
        bad = reloaded.json()["active"]["revision"]
        assert bad != good
        assert status(server)["deny_spike"] is None, "judged only once the decisions are in"

        assert refunds(server, DECISIONS) == [False] * DECISIONS
        alarm = status(server)["deny_spike"]
        assert alarm is not None
        assert alarm["revision"] == bad
        assert alarm["deny_rate_before"] == 0 and alarm["deny_rate_after"] == 1
        assert spike_gauge(server, bad) == 1
        wait_for(lambda: f"deny spike after activating revision {bad[:12]}" in server.log())

        # Rolling back clears it.
        rolled = server.client.post("/v1/bundle/rollback", headers=server.admin)
        assert rolled.status_code == 200, rolled.text
        assert revision(server) == good
        assert status(server)["deny_spike"] is None
        assert spike_gauge(server, bad) == 0
        assert refunds(server, 3) == [True] * 3


def test_an_activation_that_keeps_the_deny_rate_raises_no_alarm(
    tmp_path: Path, database_url: str, shop_copy: Path
) -> None:
    with running_server(
        tmp_path / "state",
        database_url,
        shop_copy,
        policy__watch="false",
        governance__deny_spike_decisions=DECISIONS,
    ) as server:
        refunds(server, DECISIONS)
        edit_description(shop_copy, "(harmless)")
        assert server.client.post("/v1/bundle/reload", headers=server.admin).status_code == 200
        assert refunds(server, DECISIONS) == [True] * DECISIONS
        assert status(server)["deny_spike"] is None
        assert "deny spike" not in server.log()
