"""Automatic rollback: from the activation of a bad bundle to the previous revision serving
again, on the traffic of tests/rollout/test_rollback_server.py.

    python bench/rollback.py [--trials 5] [--no-docs]

One `trustplane serve` (SQLite, batch durability) on a copy of the shop with its tests removed,
`governance.auto_rollback` on, `deny_jump_min_denies` 10 and `deny_jump_ratio` 3. Each trial
sends 40 allowed refunds (the preceding window), activates a valid bundle that forbids the
refunds route (`POST /v1/bundle/reload` after adding the forbid), then asks for refunds one
after another until one is allowed again. Reported per trial: the time from the reload's answer
to the first allowed refund (activation → rollback serving), the refunds denied meanwhile, and
when the guard judged the jump (seconds after the activation, from the bundle status). The
same-run baseline is an operator's rollback of the same bundle: `POST /v1/bundle/rollback`
from its call to its answer.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpbench
from common import replace_section

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop"
DOCS = ROOT / "docs" / "benchmarks.md"
MIN_DENIES = 10
FREEZE = """@id("freeze-refunds")
@owner("payments")
@description("misdeploy: meant for the staging refunds API, matches production's")
forbid (principal, action == Action::"payments:refund", resource);
"""
REFUND = {
    "subject": {"type": "User", "id": "erin"},
    "action": {"name": "payments:refund"},
    "resource": {"type": "Api", "id": "payments.refund"},
    "context": {"mfa": True, "auth_age_seconds": 120, "risk_score": 10, "amount_cents": 1000},
}


def refund(client: httpx.Client) -> bool:
    return bool(client.post("/access/v1/evaluation", json=REFUND).json()["decision"])


def trial(client: httpx.Client, admin: dict[str, str], bundle: Path) -> dict[str, float]:
    for _ in range(40):
        refund(client)
    (bundle / "freeze.cedar").write_text(FREEZE)
    reloaded = client.post("/v1/bundle/reload", headers=admin)
    activated = time.perf_counter()
    assert reloaded.status_code == 200, reloaded.text
    denied = 0
    while not refund(client):
        denied += 1
        if time.perf_counter() - activated > 60:
            raise RuntimeError("no rollback within 60 s")
    back = time.perf_counter() - activated
    jump = client.get("/v1/bundle", headers=admin).json()["deny_jumps"][-1]
    assert jump["outcome"] == "rolled_back", jump
    # The operator's rollback of the same bundle, for comparison.
    again = client.post("/v1/bundle/activate", headers=admin, json={"revision": jump["revision"]})
    assert again.status_code == 200, again.text
    started = time.perf_counter()
    manual = client.post("/v1/bundle/rollback", headers=admin)
    manual_s = time.perf_counter() - started
    assert manual.status_code == 200, manual.text
    (bundle / "freeze.cedar").unlink()
    return {
        "activation_to_rollback_s": back,
        "denied": denied,
        "judged_after_s": float(jump["seconds_after_activation"]),
        "manual_rollback_s": manual_s,
    }


def run(trials: int) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="tp-bench-rollback-") as tmp:
        work = Path(tmp)
        bundle = work / "shop"
        shutil.copytree(SHOP, bundle)
        shutil.rmtree(bundle / "tests")
        settings = {
            "TRUSTPLANE_GOVERNANCE__AUTO_ROLLBACK": "true",
            "TRUSTPLANE_GOVERNANCE__DENY_JUMP_MIN_DENIES": str(MIN_DENIES),
            "TRUSTPLANE_GOVERNANCE__DENY_JUMP_RATIO": "3",
        }
        server = httpbench.start_server("trustplane", work / "server", True, settings, bundle)
        assert server.admin_token
        admin = {"authorization": f"Bearer {server.admin_token}"}
        try:
            with httpx.Client(base_url=server.base, timeout=30) as client:
                return [trial(client, admin, bundle) for _ in range(trials)]
        finally:
            httpbench.stop_server(server)


def report(results: list[dict[str, float]], trials: int) -> str:
    def median(key: str) -> float:
        return statistics.median(r[key] for r in results)

    def spread(key: str, scale: float = 1000.0) -> str:
        values = [r[key] * scale for r in results]
        return f"{statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f})"

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    return "\n".join(
        [
            f"Run {now} on {platform.node()} ({os.cpu_count()} cores, Python "
            f"{platform.python_version()}, load average {load:.1f}: a shared machine); "
            f"command: `python bench/rollback.py --trials {trials}`.",
            "",
            "| figure (median of trials, ms) | value |",
            "|---|---|",
            f"| activation → first allowed refund (rollback serving) | "
            f"{spread('activation_to_rollback_s')} |",
            f"| jump judged after the activation | {spread('judged_after_s')} |",
            f"| operator's `POST /v1/bundle/rollback` (same-run baseline) | "
            f"{spread('manual_rollback_s')} |",
            f"| refunds denied before the rollback served | {median('denied'):.0f} "
            f"(deny_jump_min_denies {MIN_DENIES}) |",
            "",
            f"Ratio of the automatic rollback to the operator's call: "
            f"{median('activation_to_rollback_s') / median('manual_rollback_s'):.1f}x (it "
            "includes the denied requests that make the evidence).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    results = run(args.trials)
    text = report(results, args.trials)
    print(text)
    if not args.no_docs:
        replace_section(DOCS, "rollback", text, "Automatic rollback results")


if __name__ == "__main__":
    main()
