"""Measure the CLI's start-up against the interpreter's own, in one run.

    python bench/cli.py [--runs N] [--no-docs]

Times, N times each and interleaved (so a change in the machine's load touches all three alike):
`python -c pass` (the floor), `trustplane --help`, and one local `trustplane check` against
examples/shop. Prints medians and the ratio to the floor and replaces the section between the
`bench:cli` markers of docs/benchmarks.md unless `--no-docs` is given. Wall-clock time of a
fresh process each run; the targets (issue 14) are --help <= 0.3 s and check <= 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, replace_section

DOCS = ROOT / "docs" / "benchmarks.md"
TRUSTPLANE = str(Path(sys.executable).with_name("trustplane"))
CHECK = [
    TRUSTPLANE,
    "check",
    "--bundle",
    "examples/shop",
    "--principal",
    'User::"erin"',
    "--action",
    "payments:refund",
    "--resource",
    'Api::"payments.refund"',
    "--context",
    '{"mfa": true, "auth_age_seconds": 120, "risk_score": 10}',
]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "trustplane --help": [TRUSTPLANE, "--help"],
    "trustplane check …": CHECK,
}
TARGETS = {"trustplane --help": 0.3, "trustplane check …": 0.5}


def run_once(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):  # check exits 1 on deny; anything else is a broken run
        raise SystemExit(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.decode()}")
    return elapsed


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command (default 15)")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args()

    for argv in COMMANDS.values():  # warm the page cache and the .pyc files
        run_once(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, argv in COMMANDS.items():
            times[name].append(run_once(argv))

    floor = statistics.median(times["python -c pass"])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "src") else ""
    lines = [
        f"`python bench/cli.py --runs {args.runs}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"commit `{git('rev-parse', '--short', 'HEAD')}`{dirty}; {os.cpu_count()} CPUs "
        f"(nproc {len(os.sched_getaffinity(0))}), load average {load} (1/5/15 min).",
        "",
        "| command | median | min | max | × `python -c pass` | target |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, samples in times.items():
        median = statistics.median(samples)
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"≤ {target:.1f} s " + ("✓" if median <= target else "✗")
        lines.append(
            f"| `{name}` | {median:.3f} s | {min(samples):.3f} s | {max(samples):.3f} s "
            f"| {median / floor:.1f}× | {verdict} |"
        )
    lines += ["", f"`trustplane check …` is `{shlex.join(['trustplane', *CHECK[1:]])}`."]
    text = "\n".join(lines)
    print(text)
    if not args.no_docs:
        replace_section(DOCS, "cli", text, "CLI start-up")


if __name__ == "__main__":
    main()
