"""The SDK's cache against a real `trustplane serve` of the shop, on each backend: it reuses an
allow for the TTL the PDP sends, stops serving it within a second of a revocation made through
the admin API (the long-polled cache epoch, checked with a deadline poll), and stops serving
cached answers at all while it cannot watch the epoch. A real loopback HTTP server in front of
the PDP plays a PDP whose epoch endpoint fails or does not exist."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.support import Server, wait_for
from trustplane.enforcement.sdk import AsyncClient, Client

pytestmark = pytest.mark.slow

CTX = {"mfa": True, "auth_age_seconds": 60}
STOCK = ("Api", "inventory.stock")  # Tier 2: a developer's low-risk read is reused 60 s
LOGS = (("User", "alice"), "ops:read-logs", ("Service", "checkout"))  # Tier 1 read: 15 s


def revoke(server: Server, kind: str, target: str) -> None:
    answer = server.client.post(
        "/v1/revocations",
        json={"kind": kind, "target": target, "reason": "sdk epoch test"},
        headers=server.admin,
    )
    assert answer.status_code in (200, 201), answer.text


def test_a_revoked_principal_loses_its_cached_allow_within_a_second(server: Server) -> None:
    with Client(server.url) as pdp:
        first = pdp.check(("User", "bob"), "inventory:read", STOCK, CTX)
        assert first.allowed and first.ttl_seconds == 60
        assert pdp.check(("User", "bob"), "inventory:read", STOCK, CTX).cached
        wait_for(lambda: pdp.watch_state == "live", timeout=5)
        revoke(server, "principal", 'User::"bob"')
        # A deadline poll: the cached allow must stop being served within one second.
        wait_for(
            lambda: not pdp.check(("User", "bob"), "inventory:read", STOCK, CTX).allowed,
            timeout=1.0,
            interval=0.02,
        )
        denied = pdp.check(("User", "bob"), "inventory:read", STOCK, CTX)
    assert not denied.allowed and "principal_revoked" in denied.errors[0]
    assert denied.cache_epoch > first.cache_epoch


def test_the_async_client_drops_its_cache_when_the_epoch_moves(server: Server) -> None:
    async def scenario() -> tuple[bool, int, int]:
        async with AsyncClient(server.url) as pdp:
            first = await pdp.check(*LOGS, CTX)
            assert first.allowed and (await pdp.check(*LOGS, CTX)).cached
            for _ in range(100):
                if pdp.watch_state == "live" and pdp.epoch:
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(revoke, server, "credential", "async-epoch-jti")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 1.0
            while pdp.epoch <= first.cache_epoch and loop.time() < deadline:
                await asyncio.sleep(0.02)
            again = await pdp.check(*LOGS, CTX)
            return again.cached, first.cache_epoch, pdp.epoch

    cached, before, after = asyncio.run(scenario())
    assert after > before, "the long-poll heard of the revocation within a second"
    assert not cached, "answers given before the revocation are not reused after it"


class EpochFront:
    """A real HTTP server in front of the PDP that forwards evaluations and answers the epoch
    endpoint with `epoch_status` itself (500: broken; 404: a PDP without it)."""

    def __init__(self, target: str, epoch_status: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                answer = httpx.post(
                    target + self.path, content=body, headers={"content-type": "application/json"}
                )
                self._send(answer.status_code, answer.content)

            def do_GET(self) -> None:
                self._send(epoch_status, b'{"title": "no epoch here"}')

            def _send(self, status: int, content: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def front(server: Server, request: pytest.FixtureRequest) -> Iterator[EpochFront]:
    proxy = EpochFront(server.url, request.param)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("front", [500], indirect=True)
def test_while_the_epoch_cannot_be_watched_nothing_cached_is_served(front: EpochFront) -> None:
    with Client(front.url) as pdp:
        first = pdp.check(*LOGS, CTX)
        assert first.allowed and first.ttl_seconds > 0
        wait_for(lambda: pdp.watch_state == "broken", timeout=5)
        again = pdp.check(*LOGS, CTX)
    assert again.allowed and not again.cached, "asked again: a revocation could be missed"
    assert again.decision_id != first.decision_id


@pytest.mark.parametrize("front", [404], indirect=True)
def test_a_pdp_without_the_epoch_endpoint_leaves_the_ttl(front: EpochFront) -> None:
    with Client(front.url) as pdp:
        first = pdp.check(*LOGS, CTX)
        wait_for(lambda: pdp.watch_state == "unsupported", timeout=5)
        again = pdp.check(*LOGS, CTX)
    assert again.cached and again.decision_id == first.decision_id
