"""In-process benchmarks: raw Cedar (the floor), the evaluator, the PDP with the ledger on,
ledger append and `audit verify`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cedarpy

from common import (
    SHOP,
    Contender,
    generation_covers_now,
    interleaved,
    load_shop,
    median_cpu_ratio,
    median_ratio,
    process_cpu_seconds,
    request_mix,
    reset_generation,
    thread_cpu_seconds,
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    rounds: int  # each round runs every in-process contender once
    max_calls: int  # per run
    max_seconds: float  # per run
    ledger_records: int
    verify_runs: int


FULL = Sizes(rounds=5, max_calls=20_000, max_seconds=2.0, ledger_records=200_000, verify_runs=3)
QUICK = Sizes(rounds=3, max_calls=5_000, max_seconds=0.5, ledger_records=50_000, verify_runs=2)


# -- 1. raw cedarpy ------------------------------------------------------------------------------


def raw_fixture(loaded: Any, requests: list[Any]) -> tuple[Any, Any, list[tuple[dict, Any]]]:
    """Pre-parsed handles for the raw baseline.

    Policies: every enforce-mode policy that applies now, parsed once into a PolicySet.
    Entities: the bundle's static entities, parsed once with the schema. A request whose
    principal or resource carries properties gets its own Entities handle, built once before
    timing (static entities with that entity's attributes merged, as the evaluator does): the
    floor charges nothing for entity building, while trustplane builds that delta per call."""
    bundle = loaded.bundle
    now = datetime.now(UTC)
    enforced = [p for p in bundle.policies if p.mode == "enforce" and p.applies_at(now)]
    policies = cedarpy.PolicySet.from_str("\n".join(p.text for p in enforced))
    schema = bundle.schema
    static = {(e["uid"]["type"], e["uid"]["id"]): e for e in bundle.entities}
    base = cedarpy.Entities.from_json_str(json.dumps(bundle.entities), schema=schema)
    prepared: list[tuple[dict, Any]] = []
    for request in requests:
        entities = base
        merged: dict[tuple[str, str], dict] = {}
        for ref in (request.principal, request.resource):
            if not ref.properties:
                continue
            known = static.get((ref.type, ref.id))
            merged[(ref.type, ref.id)] = {
                "uid": {"type": ref.type, "id": ref.id},
                "attrs": {**(known or {}).get("attrs", {}), **ref.properties},
                "parents": list((known or {}).get("parents", [])),
            }
        if merged:
            kept = [e for key, e in static.items() if key not in merged]
            entities = cedarpy.Entities.from_json_str(
                json.dumps(kept + list(merged.values())), schema=schema
            )
        cedar_request = {
            "principal": request.principal.uid(),
            "action": request.action.uid(),
            "resource": request.resource.uid(),
            "context": request.context,
        }
        prepared.append((cedar_request, entities))
    return policies, schema, prepared


# -- 2. trustplane in process --------------------------------------------------------------------


def make_runtime(
    state_dir: Path, bundle_dir: Path | None, cache_size: int = 0, appender: str = "thread"
) -> Any:
    from trustplane.config import load_settings
    from trustplane.server.runtime import Runtime, initialise

    overrides: dict[str, Any] = {
        "state_dir": state_dir,
        "log_level": "warning",
        "policy": {"watch": False, "decision_cache_size": cache_size, "bundle_dir": bundle_dir},
        "ledger": {"durability": "batch", "appender": appender},
    }
    settings = load_settings(overrides=overrides)
    initialise(settings)
    return Runtime(settings)


def _wait_ledger(runtime: Any, size: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while runtime.ledger.size < size:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


class PdpHarness:
    """A started Runtime over a fresh state directory (SQLite, batch durability, the shop
    bundle) and its PolicyDecisionPoint. Each timed run is charged until the ledger has
    committed that run's decisions, so work deferred to the writer thread counts."""

    def __init__(self, what_if_fix: bool, cache_size: int = 0, appender: str = "thread") -> None:

        self._tmp = tempfile.TemporaryDirectory(prefix="tp-bench-pdp-")
        self.runtime = make_runtime(Path(self._tmp.name) / "state", SHOP, cache_size, appender)
        self.runtime.start()
        evaluator = self.runtime.bundles.active.evaluator
        self.covered_at_start = generation_covers_now(evaluator)
        if what_if_fix:
            reset_generation(evaluator)
        self.pdp = self.runtime.decision_point()
        self.decided = 0
        self.caller_us: list[float] = []
        self.drain_timeouts = 0

    def decide(self, request: Any) -> Any:
        return self.pdp.decide_blocking(request)

    def cpu_elsewhere(self) -> float:
        """CPU of the ledger writer thread and, with `ledger.appender = process`, of the
        appender process: the deferred half of each decision's cost."""
        recorder = self.runtime.recorder
        total = thread_cpu_seconds(recorder._thread)
        process = getattr(recorder._sink, "_process", None)
        if process is not None:
            total += process_cpu_seconds(process.pid)
        return total

    def warm_up(self, requests: list[Any]) -> None:
        for request in requests:
            self.decide(request)
        self.decided += len(requests)

    def after_run(self, calls: int, elapsed: float) -> float:
        self.decided += calls
        self.caller_us.append(elapsed / calls * 1e6)
        t0 = time.perf_counter()
        if not _wait_ledger(self.runtime, self.decided, 60):
            self.drain_timeouts += 1
        return time.perf_counter() - t0

    def close(self) -> dict[str, Any]:
        self.runtime.close()  # drains the queue and signs a final checkpoint
        recorded = self.runtime.ledger.size
        self._tmp.cleanup()
        return {
            "decisions": self.decided,
            "ledger_records": recorded,
            "ledger_recorded_every_decision": recorded == self.decided,
            "caller_median_us": round(statistics.median(self.caller_us), 2),
            "generation_covered_now_at_start": self.covered_at_start,
            "drain_timeouts": self.drain_timeouts,
        }


def run_decisions(loaded: Any, requests: list[Any], sizes: Sizes, log: Any) -> dict[str, Any]:
    """Parts 1 and 2, interleaved round by round so background noise hits all alike."""
    from trustplane.decision.engine import Evaluator

    policies, schema, prepared = raw_fixture(loaded, requests)

    def raw(item: tuple[dict, Any]) -> Any:
        return cedarpy.is_authorized(item[0], policies, item[1], schema)

    fresh = Evaluator(loaded.bundle)
    mismatches = sum(
        1
        for item, request in zip(prepared, requests, strict=True)
        if (raw(item).decision == cedarpy.Decision.Allow) != fresh.evaluate(request).allowed
    )
    covered = generation_covers_now(loaded.evaluator)
    stale = covered is False

    # The floor is about evaluation overhead, so the main contender evaluates every request;
    # the cached one shows what the default configuration does with this repeated mix.
    harnesses = {
        "decide_as_served": PdpHarness(what_if_fix=False),
        "decide_appender_process": PdpHarness(what_if_fix=False, appender="process"),
        "decide_cached": PdpHarness(what_if_fix=False, cache_size=10_000),
    }
    if stale:
        harnesses["decide_what_if"] = PdpHarness(what_if_fix=True)
    contenders = [
        Contender("raw", raw, prepared),
        Contender("evaluate_as_loaded", loaded.evaluator.evaluate, requests),
    ]
    if stale:
        contenders.append(Contender("evaluate_fresh", fresh.evaluate, requests))
    for name, harness in harnesses.items():
        contenders.append(
            Contender(name, harness.decide, requests, harness.after_run, harness.cpu_elsewhere)
        )
    try:
        for item in prepared:
            raw(item)
        for request in requests[:8]:
            loaded.evaluator.evaluate(request)
            fresh.evaluate(request)
        for harness in harnesses.values():
            harness.warm_up(requests[:8])
        log(
            f"1-2. {sizes.rounds} rounds of {', '.join(c.name for c in contenders)}, "
            f"each run ≤ {sizes.max_seconds:g} s"
        )
        per_round = interleaved(
            contenders,
            rounds=sizes.rounds,
            max_calls=sizes.max_calls,
            max_seconds=sizes.max_seconds,
        )
    finally:
        ledgers = {name: harness.close() for name, harness in harnesses.items()}

    results: dict[str, Any] = {
        "mix_requests": len(requests),
        "generation_covers_now_after_load": covered,
    }
    for contender in contenders:
        summary = contender.result.summary()
        summary["x_raw"] = round(median_ratio(per_round, contender.name, "raw"), 2)
        cpu_ratio = median_cpu_ratio(contenders, contender.name, "raw")
        summary["x_raw_cpu"] = None if cpu_ratio is None else round(cpu_ratio, 2)
        summary.update(ledgers.get(contender.name, {}))
        results[contender.name] = summary
    results["raw"].update(
        {
            "enforced_policies": sum(1 for p in loaded.bundle.policies if p.mode == "enforce"),
            "requests_with_properties": sum(
                1 for r in requests if r.principal.properties or r.resource.properties
            ),
            "answer_mismatches_vs_trustplane": mismatches,
        }
    )
    return results


# -- 4. ledger append and verify -----------------------------------------------------------------


def _decisions_for_ledger(loaded: Any, requests: list[Any], n: int) -> list[tuple[Any, Any]]:
    from trustplane.decision.engine import Evaluator
    from trustplane.model import new_decision_id

    evaluator = Evaluator(loaded.bundle)
    answered = [(r, evaluator.evaluate(r)) for r in requests]
    now = time.time()
    out = []
    for i in range(n):
        request, decision = answered[i % len(answered)]
        out.append(
            (
                request,
                dataclasses.replace(
                    decision, decision_id=new_decision_id(), timestamp=now + i * 1e-4
                ),
            )
        )
    return out


def bench_ledger(loaded: Any, requests: list[Any], sizes: Sizes) -> dict[str, Any]:
    from trustplane.server.runtime import load_verifier
    from trustplane.store.database import create_store_engine, migrate
    from trustplane.telemetry.ledger import decision_entry, verify_ledger

    n = sizes.ledger_records
    out: dict[str, Any] = {"records": n}
    with tempfile.TemporaryDirectory(prefix="tp-bench-ledger-") as tmp:
        runtime = make_runtime(Path(tmp) / "state", None)
        pairs = _decisions_for_ledger(loaded, requests, n)

        # The cost of building one record (masking, canonical JSON, leaf hash), sampled.
        sample = pairs[: min(n, 20_000)]
        t0 = time.perf_counter()
        for request, decision in sample:
            decision_entry(request, decision, runtime.masker)
        out["entry_build_us"] = round((time.perf_counter() - t0) / len(sample) * 1e6, 2)

        runtime.start()
        recorder = runtime.recorder
        t0 = time.perf_counter()
        for request, decision in pairs:
            recorder.submit(request, decision)
        submitted = time.perf_counter() - t0
        complete = _wait_ledger(runtime, n, max(120.0, n / 1000))
        elapsed = time.perf_counter() - t0
        runtime.close()
        out.update(
            {
                "append_seconds": round(elapsed, 3),
                "append_records_per_s": round(n / elapsed),
                "submit_loop_seconds": round(submitted, 3),
                "append_complete": complete and runtime.ledger.size == n,
            }
        )

        settings = runtime.settings
        verifier = load_verifier(settings)
        db_path = settings.state_dir / "trustplane.db"
        out["db_mib"] = round(db_path.stat().st_size / 2**20, 1)

        # audit verify, as `trustplane audit verify` runs it: a fresh engine over the store.
        times = []
        report = None
        for _ in range(sizes.verify_runs):
            engine = create_store_engine(settings.effective_database_url)
            t0 = time.perf_counter()
            report = verify_ledger(engine, verifier)
            times.append(time.perf_counter() - t0)
            engine.dispose()
        assert report is not None
        verify_s = sorted(times)[len(times) // 2]
        out.update(
            {
                "verify_seconds": round(verify_s, 3),
                "verify_records_per_s": round(report.records / verify_s),
                "verify_ok": report.ok,
                "verify_records": report.records,
                "verify_checkpoints": report.checkpoints,
            }
        )

        # The same check through the CLI, wall time including interpreter start-up.
        exe = shutil.which("trustplane") or str(Path(sys.executable).with_name("trustplane"))
        if Path(exe).exists():
            t0 = time.perf_counter()
            done = subprocess.run(
                [exe, "--state-dir", str(settings.state_dir), "audit", "verify", "--json"],
                capture_output=True,
                text=True,
                timeout=600,
            )
            wall = time.perf_counter() - t0
            out["cli_verify_seconds"] = round(wall, 3)
            out["cli_verify_exit"] = done.returncode
            try:
                out["cli_verify_ok"] = bool(json.loads(done.stdout).get("ok"))
            except ValueError:
                out["cli_verify_ok"] = None

        # Baselines over the same record bytes.
        connection = sqlite3.connect(db_path)
        rows = connection.execute("SELECT record FROM decisions ORDER BY seq").fetchall()
        records = [bytes(r[0]) for r in rows]
        out["record_bytes_mean"] = round(sum(map(len, records)) / len(records))
        sha256 = hashlib.sha256
        times = []
        for _ in range(max(3, sizes.verify_runs)):
            t0 = time.perf_counter()
            for record in records:
                sha256(b"\x00" + record).digest()
            times.append(time.perf_counter() - t0)
        hash_s = sorted(times)[len(times) // 2]
        t0 = time.perf_counter()
        for (record,) in connection.execute("SELECT record FROM decisions ORDER BY seq"):
            sha256(b"\x00" + record).digest()
        stream_s = time.perf_counter() - t0
        out.update(
            {
                "hashlib_records_per_s": round(len(records) / hash_s),
                "sqlite_stream_hash_records_per_s": round(len(records) / stream_s),
            }
        )

        # Baseline for append: the same rows through sqlite3.executemany, 5,000 per commit.
        all_rows = connection.execute("SELECT * FROM decisions ORDER BY seq").fetchall()
        columns = [d[0] for d in connection.execute("SELECT * FROM decisions").description]
        connection.close()
        raw_db = Path(tmp) / "raw.db"
        engine = create_store_engine(f"sqlite:///{raw_db}")
        migrate(engine)
        engine.dispose()
        raw = sqlite3.connect(raw_db)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=NORMAL")
        insert = (
            f"INSERT INTO decisions ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        t0 = time.perf_counter()
        for start in range(0, len(all_rows), 5000):
            with raw:
                raw.executemany(insert, all_rows[start : start + 5000])
        raw_s = time.perf_counter() - t0
        raw.close()
        out["sqlite_executemany_records_per_s"] = round(len(all_rows) / raw_s)
    return out


# -- orchestration ---------------------------------------------------------------------------


def run_inprocess(sizes: Sizes, log: Any) -> dict[str, Any]:
    log("loading examples/shop ...")
    loaded = load_shop()
    requests = request_mix(loaded)
    results = run_decisions(loaded, requests, sizes, log)
    log(f"4. ledger append of {sizes.ledger_records:,} records and audit verify ...")
    results["ledger"] = bench_ledger(loaded, requests, sizes)
    return results
