"""Measure the CLI's start-up against the interpreter's own, in one run.

    python bench/cli.py [--runs N] [--no-docs]

Times, N times each and interleaved (so a change in the machine's load touches all three alike):
`python -c pass` (the floor), `trustplane --help`, and one local `trustplane check` against
examples/shop. Prints medians (wall clock and CPU) and the ratios to the floor and replaces the
section between the `bench:cli` markers of docs/benchmarks.md unless `--no-docs` is given.
Wall-clock and CPU time of a fresh process each run; the targets (issue 14) are --help <= 0.3 s
and check <= 0.5 s of wall-clock time on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
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
# Byte-compiled modules, as an installed trustplane has them: with PYTHONDONTWRITEBYTECODE set
# (as in some development shells) every run would compile every trustplane module again, about
# a third of `check`'s time. The warm-up run writes them.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
TARGETS = {"trustplane --help": 0.3, "trustplane check …": 0.5}


def run_once(argv: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one fresh process. On a loaded machine
    the CPU time moves much less than the wall time: it is what the process itself spent."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, env=ENV)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):  # check exits 1 on deny; anything else is a broken run
        raise SystemExit(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


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
    cpus: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, argv in COMMANDS.items():
            elapsed, cpu = run_once(argv)
            times[name].append(elapsed)
            cpus[name].append(cpu)

    floor = statistics.median(times["python -c pass"])
    cpu_floor = statistics.median(cpus["python -c pass"])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "src") else ""
    lines = [
        f"`python bench/cli.py --runs {args.runs}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"commit `{git('rev-parse', '--short', 'HEAD')}`{dirty}; {os.cpu_count()} CPUs "
        f"(nproc {len(os.sched_getaffinity(0))}), load average {load} (1/5/15 min).",
        "",
        "| command | median | min | max | × `python -c pass` | CPU median | CPU × | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, samples in times.items():
        median = statistics.median(samples)
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            verdict = f"≤ {target:.1f} s " + ("✓" if median <= target else "✗")
        lines.append(
            f"| `{name}` | {median:.3f} s | {min(samples):.3f} s | {max(samples):.3f} s "
            f"| {median / floor:.1f}× | {statistics.median(cpus[name]):.3f} s "
            f"| {statistics.median(cpus[name]) / cpu_floor:.1f}× | {verdict} |"
        )
    lines += ["", f"`trustplane check …` is `{shlex.join(['trustplane', *CHECK[1:]])}`."]
    text = "\n".join(lines)
    print(text)
    if not args.no_docs:
        replace_section(DOCS, "cli", text, "CLI start-up")


if __name__ == "__main__":
    main()
