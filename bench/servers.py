"""Server processes for the HTTP benchmark (run as `python bench/servers.py KIND ...`).

trustplane  the real server: trustplane.server.serve.serve(settings), unchanged.
noop        the baseline: a bare ASGI app under the same uvicorn settings as serve.py, which
            reads the body and answers {"decision": true}.
trustplane-what-if
            the real server with one bench-side change, to size a suggested fix: after the
            bundle's tests run, the evaluator's policy generation is cached for the present
            time (see decision/engine.py `_generation_at`). Labelled what-if in every report.
trustplane-no-ledger, trustplane-http-only
            experiments that split the served cost into layers (never reported as trustplane's
            figures): the what-if server with recording switched off (DecisionRecorder.submit
            does nothing), and additionally with evaluation replaced by one cached Decision
            (metrics, validation, routing and the response are still real).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

NOOP_BODY = b'{"decision":true}'
NOOP_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(NOOP_BODY)).encode()),
]


async def noop_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": NOOP_HEADERS})
    await send({"type": "http.response.body", "body": NOOP_BODY})


def serve_noop(port: int) -> None:
    import uvicorn

    # The keyword arguments trustplane.server.serve.serve passes, nothing else.
    config = uvicorn.Config(
        noop_app,
        host="127.0.0.1",
        port=port,
        log_level="info",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    uvicorn.Server(config).run()


def apply_what_if() -> None:
    """After the bundle's tests run, cache the policy generation for the present time (a no-op
    on engines that cache one generation per expiry interval, as since de7ddd7)."""
    import trustplane.decision.loader as loader
    from common import reset_generation

    original = loader.run_tests

    def run_tests_then_cache_now(evaluator: Any, tests: Any) -> Any:
        results = original(evaluator, tests)
        reset_generation(evaluator)
        return results

    loader.run_tests = run_tests_then_cache_now


def apply_no_ledger() -> None:
    from trustplane.telemetry.recorder import DecisionRecorder

    DecisionRecorder.submit = lambda self, *args, **kwargs: None  # type: ignore[method-assign]


def apply_cached_decision() -> None:
    from trustplane.decision.point import PolicyDecisionPoint

    cached: dict[str, Any] = {}

    def evaluate(self: Any, request: Any) -> Any:
        decision = cached.get("decision")
        if decision is None:
            decision = cached["decision"] = self._bundles.active.evaluator.evaluate(request)
        self._observe(decision)
        return decision

    PolicyDecisionPoint.evaluate = evaluate  # type: ignore[method-assign]


KINDS = ["trustplane", "trustplane-what-if", "trustplane-no-ledger", "trustplane-http-only", "noop"]


def serve_trustplane(state_dir: Path, bundle_dir: Path, port: int) -> None:
    from trustplane.config import load_settings
    from trustplane.server.serve import serve

    settings = load_settings(
        overrides={
            "state_dir": state_dir,
            "policy": {"bundle_dir": bundle_dir, "watch": False},
            "server": {"port": port, "host": "127.0.0.1"},
            "ledger": {"durability": "batch"},
        }
    )
    serve(settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--bundle-dir", type=Path)
    args = parser.parse_args(argv)
    if args.kind == "noop":
        serve_noop(args.port)
        return
    if args.kind != "trustplane":
        apply_what_if()
    if args.kind in ("trustplane-no-ledger", "trustplane-http-only"):
        apply_no_ledger()
    if args.kind == "trustplane-http-only":
        apply_cached_decision()
    serve_trustplane(args.state_dir, args.bundle_dir, args.port)


if __name__ == "__main__":
    sys.exit(main())
