"""Helpers shared by the benchmark modules: the request mix, timing loops, statistics."""

from __future__ import annotations

import bisect
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
SHOP = ROOT / "examples" / "shop"


# -- statistics ------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(p / 100 * len(sorted_values) - 1e-9)))
    return sorted_values[rank - 1]


@dataclass
class LoopResult:
    """Several bounded runs of one operation: per-run mean cost and per-call latencies."""

    name: str
    run_means_us: list[float] = field(default_factory=list)
    # CPU per call: the calling thread's, plus `Contender.cpu_elsewhere` (a ledger writer
    # thread, an appender process) over the same run.
    run_cpu_us: list[float] = field(default_factory=list)
    calls: int = 0
    call_ns: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_us(self) -> float:
        return statistics.median(self.run_means_us) if self.run_means_us else float("nan")

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.call_ns)
        return {
            "name": self.name,
            "runs": len(self.run_means_us),
            "calls": self.calls,
            "median_us": round(self.median_us, 2),
            "median_cpu_us": round(statistics.median(self.run_cpu_us), 2)
            if self.run_cpu_us
            else None,
            "min_run_us": round(min(self.run_means_us), 2) if self.run_means_us else None,
            "max_run_us": round(max(self.run_means_us), 2) if self.run_means_us else None,
            "p50_call_us": round(percentile(ordered, 50) / 1000, 2) if ordered else None,
            "p99_call_us": round(percentile(ordered, 99) / 1000, 2) if ordered else None,
            **self.extra,
        }


@dataclass
class Contender:
    """One operation to time: `fn(item)` over `items` (cycled).

    `after_run(calls, elapsed_s)`, if given, runs after each timed run and may return extra
    seconds to charge to it (for example the time to drain work that the calls queued).
    `cpu_elsewhere()`, if given, returns the CPU seconds used so far by the threads and
    processes that do the calls' deferred work; each run is charged their CPU too."""

    name: str
    fn: Callable[[Any], Any]
    items: Sequence[Any]
    after_run: Callable[[int, float], float] | None = None
    cpu_elsewhere: Callable[[], float] | None = None
    result: LoopResult = field(init=False)

    def __post_init__(self) -> None:
        self.result = LoopResult(self.name)

    def run_once(self, max_calls: int, max_seconds: float) -> float:
        """One run bounded by `max_calls` and `max_seconds`; returns its mean µs per call."""
        fn, items, n_items = self.fn, self.items, len(self.items)
        samples: list[int] = []
        calls = 0
        perf_ns = time.perf_counter_ns
        deadline = perf_ns() + int(max_seconds * 1e9)
        elsewhere = self.cpu_elsewhere
        cpu_started = time.thread_time() + (elsewhere() if elsewhere else 0.0)
        started = perf_ns()
        while calls < max_calls:
            t0 = perf_ns()
            fn(items[calls % n_items])
            t1 = perf_ns()
            samples.append(t1 - t0)
            calls += 1
            if t1 > deadline:
                break
        elapsed = (perf_ns() - started) / 1e9
        cpu = time.thread_time()
        if self.after_run is not None:
            elapsed += self.after_run(calls, elapsed)
        cpu += elsewhere() if elsewhere else 0.0
        mean_us = elapsed / calls * 1e6
        self.result.run_means_us.append(mean_us)
        self.result.run_cpu_us.append((cpu - cpu_started) / calls * 1e6)
        self.result.calls += calls
        self.result.call_ns.extend(samples)
        return mean_us


def interleaved(
    contenders: Sequence[Contender], *, rounds: int, max_calls: int, max_seconds: float
) -> list[dict[str, float]]:
    """`rounds` rounds; each round runs every contender once, in order. Interleaving spreads
    the machine's background noise over all contenders alike, so per-round ratios are fair.
    Returns each round's mean µs per call by contender name."""
    per_round = []
    for _ in range(rounds):
        per_round.append({c.name: c.run_once(max_calls, max_seconds) for c in contenders})
    return per_round


def median_ratio(per_round: list[dict[str, float]], name: str, base: str) -> float:
    """The median over rounds of `name`'s cost over `base`'s cost in the same round."""
    return statistics.median(r[name] / r[base] for r in per_round)


def median_cpu_ratio(contenders: Sequence[Contender], name: str, base: str) -> float | None:
    """`median_ratio` of CPU per call: round i is each contender's i-th run."""
    runs = {c.name: c.result.run_cpu_us for c in contenders}
    pairs = [(a, b) for a, b in zip(runs[name], runs[base], strict=False) if b]
    return statistics.median(a / b for a, b in pairs) if pairs else None


def thread_cpu_seconds(thread: Any) -> float:
    """CPU seconds a live thread of this process has used (0 once it is gone)."""
    ident = getattr(thread, "ident", None)
    if ident is None or not thread.is_alive():
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except OSError:
        return 0.0


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc (0 once it is gone)."""
    return _proc_cpu(Path(f"/proc/{pid}/stat"))


def _proc_cpu(stat: Path) -> float:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the request mix -------------------------------------------------------------------------


def load_shop() -> Any:
    """The example estate, loaded the way the server loads it (compiled and tested)."""
    from trustplane.decision.loader import load_bundle
    from trustplane.decision.policy_bundle import BundleSource

    return load_bundle(BundleSource.from_dir(SHOP))


def request_mix(loaded: Any, seed: int = 7) -> list[Any]:
    """The bundle's own test requests (those asked at the present time), shuffled with a fixed
    seed: a mix of people, services and CI jobs, allows and denies, with and without caller-
    supplied properties. Tests pinned to another time (`at:`), and HTTP tests no route maps
    (they never reach Cedar), are left out."""
    requests = [t.request for t in loaded.bundle.tests if t.at is None and t.unmapped is None]
    random.Random(seed).shuffle(requests)
    return requests


def authzen_body(request: Any) -> dict[str, Any]:
    """The AuthZEN evaluation body that maps to `request` (see server/authzen.py)."""
    subject: dict[str, Any] = {"type": request.principal.type, "id": request.principal.id}
    if request.principal.properties:
        subject["properties"] = request.principal.properties
    resource: dict[str, Any] = {"type": request.resource.type, "id": request.resource.id}
    if request.resource.properties:
        resource["properties"] = request.resource.properties
    return {
        "subject": subject,
        "action": {"name": request.action.id},
        "resource": resource,
        "context": request.context,
    }


def write_bodies(requests: Sequence[Any], path: Path) -> Path:
    """One compact AuthZEN JSON body per line (read by the Lua script and the load generator)."""
    lines = [json.dumps(authzen_body(r), separators=(",", ":")) for r in requests]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the evaluator's cached policy generation ------------------------------------------------


def generation_covers_now(evaluator: Any) -> bool | None:
    """Whether the evaluator has the policy generation for the present cached (None: unknown).

    The engine keeps compiled policy sets per span between @expires boundaries. Before commit
    de7ddd7 it cached one generation, and a bundle test pinned to a later time (`at:`) could
    replace it, so every present-time evaluation compiled the policy sets again."""
    now = datetime.fromtimestamp(evaluator._clock(), UTC)
    generations = getattr(evaluator, "_generations", None)
    if isinstance(generations, dict):  # one cached generation per expiry interval
        boundaries = evaluator._boundaries
        at: Any = now.timestamp() if boundaries and isinstance(boundaries[0], float) else now
        return bisect.bisect_right(boundaries, at) in generations
    covers = getattr(getattr(evaluator, "_generation", None), "covers", None)
    if covers is None:
        return None
    return bool(covers(now))


def reset_generation(evaluator: Any) -> None:
    """What-if only: re-cache the single generation for the present time (what the fix in
    de7ddd7 does). A no-op on engines that cache per interval. Never used for as-served
    figures."""
    if hasattr(evaluator, "_generation") and hasattr(evaluator, "_compile"):
        evaluator._generation = evaluator._compile(datetime.fromtimestamp(evaluator._clock(), UTC))


def log(message: str) -> None:
    """A timestamped progress line on stderr (stdout carries the results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class CpuSteal:
    """The share of CPU time the hypervisor gave to other guests (`steal` in /proc/stat) while
    a benchmark ran: on a shared VM this, more than anything in the code, moves the latency
    tail. None where /proc/stat has no steal column."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        if len(fields) < 8:
            return None
        ticks = [int(f) for f in fields[:8]]
        return ticks[7], sum(ticks)

    def percent(self) -> float | None:
        end = self._read()
        if self._start is None or end is None or end[1] == self._start[1]:
            return None
        return round(100 * (end[0] - self._start[0]) / (end[1] - self._start[1]), 1)


def replace_section(path: Path, name: str, text: str, heading: str) -> None:
    """Put `text` between the `<!-- bench:NAME:start/end -->` markers of `path`, replacing what
    was there; the first time, append it under `## heading`."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    section = f"{start}\n{text}\n{end}"
    if path.exists():
        current = path.read_text()
        if start in current and end in current:
            head, rest = current.split(start, 1)
            _, tail = rest.split(end, 1)
            path.write_text(head + section + tail)
            return
        path.write_text(current.rstrip() + f"\n\n## {heading}\n\n" + section + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Benchmarks\n\n## {heading}\n\n" + section + "\n")
