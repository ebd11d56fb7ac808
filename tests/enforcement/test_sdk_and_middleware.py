"""The client SDK and the ASGI middleware against a real `trustplane serve` on loopback (and,
for `LocalPdp`, a Runtime in the test process). A real Starlette app is protected; a real
loopback HTTP server plays a flaky network in front of the PDP for the retry cases."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import SHOP
from tests.issuer import Jwks, Key, issuer_settings, user_token
from tests.support import Server, free_port
from trustplane.config import load_settings
from trustplane.enforcement.asgi import LocalPdp, RemotePdp, TrustplaneMiddleware
from trustplane.enforcement.credentials import Authenticator, ProxyTrust
from trustplane.enforcement.enforcer import HttpEnforcer
from trustplane.enforcement.sdk import AsyncClient, Client, SdkMetrics
from trustplane.server.runtime import Runtime, initialise

pytestmark = pytest.mark.slow

CTX = {"mfa": True, "auth_age_seconds": 60, "risk_score": 0}
LOGS = (("User", "alice"), "ops:read-logs", ("Service", "checkout"))


def bearer(key: Key, user: str = "alice", mfa: bool = True) -> dict[str, str]:
    return {"authorization": f"Bearer {user_token(key, user, mfa)}"}


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# -- the SDK -----------------------------------------------------------------------------------


def test_client_answers_and_reuses_an_answer_for_its_ttl(server: Server) -> None:
    with Client(server.url) as pdp:
        first = pdp.check(*LOGS, CTX)
        again = pdp.check(*LOGS, CTX)
        other = pdp.check(*LOGS, {**CTX, "mfa": False})
    assert first.allowed and not first.cached
    assert first.reasons == ("sre-operate-with-mfa",)
    assert first.ttl_seconds == 15, "a low-risk Tier 1 read: policy.read_ttl_seconds (default)"
    assert again.cached and again.decision_id == first.decision_id
    assert not other.allowed and not other.cached, "a different context is a different question"


def test_answers_with_errors_are_never_reused(server: Server) -> None:
    with Client(server.url) as pdp:
        broken = pdp.check(*LOGS, {**CTX, "risk_score": "high"})
        again = pdp.check(*LOGS, {**CTX, "risk_score": "high"})
    assert not broken.allowed and broken.errors and broken.ttl_seconds == 0
    assert not again.cached


def test_unreachable_pdp_fails_closed_unless_the_caller_chose_open() -> None:
    registry = CollectorRegistry()
    with Client(dead_url(), retries=1, metrics=SdkMetrics(registry)) as pdp:
        closed = pdp.check(*LOGS, CTX)
        opened = pdp.check(*LOGS, CTX, fail_open=True, route="logs")
    assert not closed.allowed and closed.error and not closed.failed_open
    assert opened.allowed and opened.failed_open and opened.error
    counted = registry.get_sample_value("trustplane_sdk_fail_open_total", {"route": "logs"})
    assert counted == 1.0


class FlakyFront:
    """A real HTTP server in front of the PDP: answers 503 `failures` times, or stalls the
    first request, then forwards to the PDP."""

    def __init__(self, target: str, failures: int = 0, stall: float = 0.0) -> None:
        self.requests = 0
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                front.requests += 1
                body = self.rfile.read(int(self.headers["content-length"]))
                if front.requests <= failures:
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if stall and front.requests == 1:
                    time.sleep(stall)
                answer = httpx.post(
                    target + self.path,
                    content=body,
                    headers={"content-type": "application/json"},
                )
                self.send_response(answer.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_503_is_retried_but_a_read_timeout_is_not(server: Server) -> None:
    flaky = FlakyFront(server.url, failures=2)
    slow = FlakyFront(server.url, stall=1.5)
    try:
        with Client(flaky.url, retries=2, cache_size=0) as pdp:
            answer = pdp.check(*LOGS, CTX)
        assert answer.allowed and flaky.requests == 3, "two 503s, then the answer"
        with Client(slow.url, retries=2, timeout=0.5, cache_size=0) as pdp:
            timed_out = pdp.check(*LOGS, CTX)
        assert not timed_out.allowed and timed_out.error
        assert slow.requests == 1, "the PDP may have answered (and recorded): never asked twice"
    finally:
        flaky.close()
        slow.close()


def test_async_client_answers_and_caches(server: Server) -> None:
    async def scenario() -> tuple[Any, Any]:
        async with AsyncClient(server.url) as pdp:
            return await pdp.check(*LOGS, CTX), await pdp.check(*LOGS, CTX)

    first, again = asyncio.run(scenario())
    assert first.allowed and again.cached and again.decision_id == first.decision_id


# -- the middleware ----------------------------------------------------------------------------


async def logs(request: Request) -> JSONResponse:
    seen = request.state.trustplane
    return JSONResponse(
        {"user": seen.user, "decision_id": seen.decision_id, "failed_open": seen.failed_open}
    )


def protected(pdp: Any, **options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/ops/services/{service}/logs", logs),
            Route("/admin/{rest:path}", logs),
            Route("/healthz", lambda r: JSONResponse({"ok": True})),
        ]
    )
    app.add_middleware(TrustplaneMiddleware, pdp=pdp, **options)
    return app


def requests(app: Starlette, *calls: tuple[str, dict[str, str]]) -> list[httpx.Response]:
    """GET each (path, headers) in one event loop, as a served app would see them."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.example") as c:
            return [await c.get(path, headers=headers) for path, headers in calls]

    return asyncio.run(go())


def test_middleware_with_a_remote_pdp_enforces_and_exposes_the_decision(
    server: Server, key: Key
) -> None:
    allowed, denied, anonymous, health = requests(
        protected(RemotePdp(server.url), exempt_paths=["/healthz"]),
        ("/ops/services/checkout/logs", bearer(key)),
        ("/admin/users", bearer(key, "erin", mfa=False)),
        ("/ops/services/checkout/logs", {}),
        ("/healthz", {}),
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["user"] == "alice"
    assert allowed.json()["decision_id"]
    assert denied.status_code == 403
    assert denied.json()["reasons"] == ["require-fresh-mfa-for-tier0-and-admin"]
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="trustplane"'
    assert health.status_code == 200, "exempt paths are not checked"


def test_middleware_fails_closed_and_opens_only_where_configured(key: Key) -> None:
    registry = CollectorRegistry()
    app = protected(
        RemotePdp(dead_url(), retries=0),
        fail_open_paths=["/ops/"],
        metrics=SdkMetrics(registry),
    )
    closed, opened = requests(
        app, ("/admin/users", bearer(key)), ("/ops/services/checkout/logs", bearer(key))
    )
    assert closed.status_code == 503
    assert closed.json()["reasons"] == ["pdp_unavailable"]
    assert opened.status_code == 200 and opened.json()["failed_open"] is True
    counted = registry.get_sample_value("trustplane_sdk_fail_open_total", {"route": "/ops/"})
    assert counted == 1.0


@pytest.fixture
def local_runtime(tmp_path: Path, issuer: Jwks) -> Iterator[Runtime]:
    settings = load_settings(
        overrides={
            "state_dir": tmp_path / "state",
            "policy": {"bundle_dir": SHOP, "watch": False},
            "pep": {"issuers": issuer_settings(issuer)},
        }
    )
    initialise(settings)
    runtime = Runtime(settings)
    runtime.start()
    yield runtime
    runtime.close()


def test_middleware_with_an_in_process_pdp(local_runtime: Runtime, key: Key) -> None:
    enforcer = HttpEnforcer(
        local_runtime.decision_point(),
        Authenticator.from_settings(
            local_runtime.settings.pep,
            ProxyTrust(local_runtime.settings.server.trusted_proxies),
        ),
    )
    allowed, denied = requests(
        protected(LocalPdp(enforcer)),
        ("/ops/services/checkout/logs", bearer(key)),
        ("/admin/users", bearer(key, "erin", mfa=False)),
    )
    assert allowed.status_code == 200 and allowed.json()["user"] == "alice"
    assert denied.status_code == 403
    local_runtime.recorder.stop()  # drains: the decisions are in the ledger
    assert local_runtime.ledger.size >= 2


def test_a_newer_revocation_epoch_empties_the_client_cache(server: Server) -> None:
    other = (("User", "bob"), "inventory:read", ("Api", "inventory.stock"))
    with Client(server.url) as pdp:
        first = pdp.check(*LOGS, CTX)
        assert pdp.check(*LOGS, CTX).cached
        revoked = server.client.post(
            "/v1/revocations",
            json={"kind": "credential", "target": "sdk-test-jti", "reason": "test"},
            headers=server.admin,
        )
        assert revoked.status_code in (200, 201)
        newer = pdp.check(*other, CTX)  # any answer carries the new epoch
        assert newer.revocation_epoch > first.revocation_epoch
        again = pdp.check(*LOGS, CTX)
    assert not again.cached, "answers cached before a revocation are not reused after it"
