"""Benchmark the decision plane against its baselines in one run.

    python bench/run.py [--quick] [--json out.json] [--no-docs] [--no-profile] [--no-http]

1. raw cedarpy.is_authorized over the example estate (the floor);
2. trustplane's Evaluator.evaluate() and PolicyDecisionPoint.decide_blocking() with the ledger on;
3. the AuthZEN HTTP endpoint under wrk and an open-loop generator, against a no-op ASGI server;
4. ledger append and `audit verify`, against sqlite3 and hashlib.

Prints a results table with medians, percentiles, ratios and each floor (information, never an
assertion) and replaces the results section of docs/benchmarks.md. About 3-4 minutes; about
one minute with --quick. All traffic goes to 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpbench
import inproc
import spyprofile
from common import ROOT, load_shop, replace_section, request_mix, write_bodies

DOCS = ROOT / "docs" / "benchmarks.md"
START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"

FLOOR_DECIDE_RATIO = 1.8
FLOOR_SERVED_CPU_RATIO = 3.0  # server CPU per answer over the no-op's, cached path, 4 conns
FLOOR_RPS = 5000
FLOOR_P99_MS = 5.0
FLOOR_VERIFY = 100_000


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    wrk = "-"
    if shutil.which("wrk"):
        probe = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        wrk = (probe.stdout or probe.stderr).split("[")[0].replace("wrk", "").strip()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": nproc,
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {
            n: version(n)
            for n in (
                "cedarpy",
                "uvicorn",
                "uvloop",
                "httptools",
                "starlette",
                "pydantic",
                "sqlalchemy",
            )
        },
        "wrk": wrk,
        "commit": commit,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# -- reporting -------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}×"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _ms(latency: dict[str, Any], key: str) -> str:
    value = latency.get(key)
    return "lost" if value is None else f"{value:.2f}"


def report(results: dict[str, Any]) -> str:
    out: list[str] = []
    info = results["machine"]
    out.append(
        f"Run: {results['date']} · `{results['command']}` · {results['mode']} mode · "
        f"{results['elapsed_s']:.0f} s"
    )
    out.append("")
    out.append(
        f"Machine: nproc {info['nproc']} · {info['cpu']} · Python {info['python']} · "
        f"cedarpy {info['packages']['cedarpy']} · uvicorn {info['packages']['uvicorn']} · "
        f"wrk {info['wrk']} · commit {info['commit']} · load average at start "
        f"{info['loadavg_start'][0]} (other work shares these cores: read ratios, not "
        "absolutes)"
    )
    out.append("")
    floors: list[list[str]] = []

    ip = results.get("inprocess")
    if ip:
        raw = ip["raw"]
        out.append("### 1-2. One decision in process (µs per decision)")
        out.append("")
        out.append(
            f"Request mix: the {ip['mix_requests']} present-time requests of the shop bundle's "
            f"tests ({raw['requests_with_properties']} carry caller properties). "
            "`median` is the median over runs of each run's mean cost; `p50`/`p99` are over "
            "single calls. Contenders run interleaved, round by round; `× raw` is the median "
            "over rounds of the ratio to raw Cedar in the same round. `CPU` is the median CPU "
            "per call (the calling thread, plus the ledger writer thread or appender process "
            "over the same run and its drain) and `× raw CPU` its ratio, per round: unlike wall "
            "time it does not count waiting for a core other work holds."
        )
        out.append("")
        rows = []

        def row(label: str, r: dict[str, Any], note: str = "") -> None:
            cpu_ratio = r.get("x_raw_cpu")
            rows.append(
                [
                    label,
                    _fmt(r["median_us"]),
                    _fmt(r["p50_call_us"]),
                    _fmt(r["p99_call_us"]),
                    _fmt(r["calls"]),
                    f"{r['x_raw']:.2f}×",
                    _fmt(r.get("median_cpu_us")),
                    "-" if cpu_ratio is None else f"{cpu_ratio:.2f}×",
                    note,
                ]
            )

        row(
            "raw `cedarpy.is_authorized` (floor)",
            raw,
            f"{raw['enforced_policies']} enforce policies, pre-parsed handles; "
            f"{raw['answer_mismatches_vs_trustplane']} answers differ from trustplane",
        )
        row(
            "`evaluate()`, evaluator as loaded",
            ip["evaluate_as_loaded"],
            "generation covers now: " + _fmt(ip["generation_covers_now_after_load"]),
        )
        if "evaluate_fresh" in ip:
            row(
                "`evaluate()`, fresh Evaluator (what-if)",
                ip["evaluate_fresh"],
                "generation cached for now",
            )
        labels = {
            "decide_as_served": "`decide_blocking()` + ledger, decision cache off",
            "decide_appender_process": "`decide_blocking()` + ledger, cache off, "
            "`ledger.appender = process`",
            "decide_cached": "`decide_blocking()` + ledger, decision cache on (repeated mix)",
            "decide_what_if": "`decide_blocking()` + ledger (what-if)",
        }
        for key, label in labels.items():
            if key in ip:
                d = ip[key]
                row(
                    label,
                    d,
                    f"incl. commit; caller-only {_fmt(d['caller_median_us'])} µs; "
                    f"{d['ledger_records']:,}/{d['decisions']:,} recorded",
                )
        out += _table(
            ["path", "median", "p50", "p99", "calls", "× raw", "CPU", "× raw CPU", "notes"], rows
        )
        out.append("")
        for key, label in (
            ("decide_as_served", "cache off"),
            ("decide_appender_process", "cache off, appender process"),
            ("decide_what_if", "what-if fix"),
        ):
            if key in ip:
                ratio = ip[key].get("x_raw_cpu") or ip[key]["x_raw"]
                floors.append(
                    [
                        f"decide + ledger ≤ {FLOOR_DECIDE_RATIO:g}× raw Cedar, CPU ({label})",
                        f"{ratio:.2f}× (wall {ip[key]['x_raw']:.2f}×)",
                        _verdict(ratio <= FLOOR_DECIDE_RATIO),
                    ]
                )

    http = results.get("http")
    if http:
        servers = http["servers"]
        noop = servers.get("noop", {})
        out.append("### 3. AuthZEN over HTTP (`POST /access/v1/evaluation`)")
        out.append("")
        out.append(
            f"Server: {http['served_via']}, batch durability, watch off, fresh state dir; "
            "`-2w` runs `--workers 2` (two serving processes, one ledger), `-nocache` sets "
            "`TRUSTPLANE_POLICY__DECISION_CACHE_SIZE=0` (every request evaluated), `-process` sets "
            "`TRUSTPLANE_LEDGER__APPENDER=process`. "
            f"Max throughput: {http['load_tool']} (closed loop). Fixed rate: "
            f"{http['fixed_rate_tool']}, latency from each request's scheduled send time. "
            f"{http['bodies']} AuthZEN bodies from the shop tests, cycled. Server CPU µs/answer: "
            "the server process's CPU time (all threads, /proc) during that load over the "
            "answers given — unlike answers/s, it does not depend on how much CPU the load "
            "generator and other work left to the server."
        )
        out.append("")
        rows = []
        noop_rps = {t["connections"]: t["rps"] for t in noop.get("throughput", [])}
        for kind, s in servers.items():
            for t in s.get("throughput", []):
                lat = t["latency_ms"]
                rows.append(
                    [
                        kind,
                        f"max, {t['connections']} conns",
                        _fmt(t["rps"]),
                        _ms(lat, "p50"),
                        _ms(lat, "p99"),
                        _ms(lat, "p999"),
                        _fmt(
                            t["non_2xx"] + t.get("socket_errors", 0)
                            if "non_2xx" in t
                            else t.get("errors")
                        ),
                        _ratio(t["rps"], noop_rps.get(t["connections"])) if kind != "noop" else "1",
                        _fmt(t.get("server_cpu_us_per_answer")),
                    ]
                )
            f = s.get("fixed_rate")
            if f:
                lat = f["latency_ms"]
                rows.append(
                    [
                        kind,
                        f"{f['rate']:.0f}/s offered, {f['connections']} conns",
                        _fmt(f["achieved_rps"]),
                        _ms(lat, "p50"),
                        _ms(lat, "p99"),
                        _ms(lat, "p999"),
                        f"{f['lost']:,} lost / {f['errors']} err",
                        "-",
                        _fmt(f.get("server_cpu_us_per_answer")),
                    ]
                )
        out += _table(
            [
                "server",
                "load",
                "answers/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "errors",
                "× no-op",
                "server CPU µs/answer",
            ],
            rows,
        )
        out.append("")
        details = []
        for kind, s in servers.items():
            loop = s.get("event_loop", {})
            line = (
                f"- `{kind}`: {s['command']}; uvloop {_fmt(loop.get('uvloop'))}, httptools "
                f"{_fmt(loop.get('httptools'))}; server CPU {_fmt(s.get('cpu_seconds'), 1)} s"
            )
            ledger = s.get("ledger")
            if ledger:
                line += (
                    f"; ledger: {ledger.get('store_rows_after_shutdown', 0):,} rows in the store "
                    f"after shutdown, {ledger['server_decisions']:,} decisions answered by the "
                    f"server (metrics), {ledger['answered_by_clients']:,} answers received by "
                    f"the load generators, newest checkpoint (admin API) tree size "
                    f"{_fmt(ledger['admin_checkpoint_tree_size'])} → every decision recorded: "
                    f"{_fmt(ledger.get('every_decision_recorded'))}"
                )
            details.append(line)
        out += details
        out.append("")
        noop_cpu = {
            t["connections"]: t.get("server_cpu_us_per_answer") for t in noop.get("throughput", [])
        }
        for kind, label in (
            ("trustplane", "1 worker"),
            ("trustplane-2w", "`--workers 2`"),
        ):
            run4 = next(
                (t for t in servers.get(kind, {}).get("throughput", []) if t["connections"] == 4),
                None,
            )
            cpu, base = (run4 or {}).get("server_cpu_us_per_answer"), noop_cpu.get(4)
            if cpu and base:
                floors.append(
                    [
                        f"server CPU per answer ≤ {FLOOR_SERVED_CPU_RATIO:g}× the no-op's "
                        f"(cached path, {label}, 4 conns)",
                        f"{cpu:,.1f} / {base:,.1f} µs = {cpu / base:.2f}×",
                        _verdict(cpu / base <= FLOOR_SERVED_CPU_RATIO),
                    ]
                )
        for kind, label in (
            ("trustplane-2w", "`--workers 2`, decision cache on (default)"),
            ("trustplane", "1 worker, decision cache on (default)"),
            ("trustplane-what-if", "what-if fix"),
        ):
            s = servers.get(kind)
            if not s:
                continue
            best = max(t["rps"] for t in s["throughput"])
            floors.append(
                [
                    f"HTTP max throughput ≥ 5,000/s ({label})",
                    f"{best:,.0f}/s",
                    _verdict(best >= FLOOR_RPS),
                ]
            )
            p99 = s["fixed_rate"]["latency_ms"]["p99"]
            floors.append(
                [
                    f"HTTP p99 at 1,000/s ≤ 5 ms ({label})",
                    "lost" if p99 is None else f"{p99:.2f} ms",
                    _verdict(p99 is not None and p99 <= FLOOR_P99_MS),
                ]
            )
            floors.append(
                [
                    f"ledger has every HTTP decision ({label})",
                    _fmt(s.get("ledger", {}).get("store_rows_after_shutdown")),
                    _verdict(s.get("ledger", {}).get("every_decision_recorded")),
                ]
            )

    layers = (http or {}).get("layers")
    if layers:
        servers = http["servers"]

        def cpu_c4(entry: dict[str, Any] | None) -> tuple[float | None, float | None]:
            if not entry:
                return None, None
            run4 = next((t for t in entry["throughput"] if t["connections"] == 4), None)
            if run4 is None:
                return None, None
            return run4.get("server_cpu_us_per_answer"), run4["rps"]

        steps = [
            ("uvicorn + a bare ASGI app (no-op server)", "noop", cpu_c4(servers.get("noop"))),
            (
                "+ Starlette app: routing, body, pydantic validation, metrics, response JSON",
                "trustplane-http-only",
                (
                    layers["trustplane-http-only"].get("server_cpu_us_per_answer"),
                    layers["trustplane-http-only"]["rps"],
                ),
            ),
            (
                "+ policy evaluation (`Evaluator.evaluate`: Cedar, entities, reasons)",
                "trustplane-no-ledger",
                (
                    layers["trustplane-no-ledger"].get("server_cpu_us_per_answer"),
                    layers["trustplane-no-ledger"]["rps"],
                ),
            ),
        ]
        if "trustplane-what-if" in servers:
            steps.append(
                (
                    "+ recording (ledger writer thread: records, SQLite) = what-if fix",
                    "trustplane-what-if",
                    cpu_c4(servers["trustplane-what-if"]),
                )
            )
            steps.append(
                (
                    "+ policy sets recompiled per request = as served",
                    "trustplane",
                    cpu_c4(servers["trustplane"]),
                )
            )
        else:
            steps.append(
                (
                    "+ recording (ledger writer thread) = served, decision cache off",
                    "trustplane-nocache",
                    cpu_c4(servers["trustplane-nocache"]),
                )
            )
            steps.append(
                (
                    "decision cache on (default): repeated requests skip evaluation",
                    "trustplane",
                    cpu_c4(servers["trustplane"]),
                )
            )
        out.append("### Where a served decision's CPU goes (layer by layer, wrk -c4)")
        out.append("")
        out.append(
            "Server CPU µs per answer of servers that add one layer at a time. The two middle "
            "rows are experiments (`bench/servers.py trustplane-http-only`: recording off and "
            "one cached decision; `trustplane-no-ledger`: recording off) over the same code; "
            "each layer's cost is the difference to the row above. Each row is a separate "
            "run, so small differences are noise."
        )
        out.append("")
        rows = []
        previous = None
        for label, kind, (cpu, rps) in steps:
            delta = "-" if previous is None or cpu is None else _fmt(cpu - previous)
            rows.append([label, f"`{kind}`", _fmt(rps), _fmt(cpu), delta])
            previous = cpu if cpu is not None else previous
        out += _table(
            ["layer", "server", "answers/s", "server CPU µs/answer", "this layer, µs"], rows
        )
        out.append("")

    prof = results.get("profile")
    if prof:
        out.append("### Inside the served path (py-spy, wrk -c4)")
        out.append("")
        out.append(
            "Share of py-spy samples of the server's busy threads (main thread and ledger "
            "writer) by part of the request path. Samples are wall-clock while a thread is "
            "not idle, so a thread that is runnable but waiting for a core or in SQLite with "
            "the GIL released still counts: read shares, not costs."
        )
        out.append("")
        for kind, p in prof.items():
            if "parts" not in p:
                out.append(f"- `{kind}`: {p.get('error')}")
                continue
            out.append(f"`{kind}` ({p['rps']:,.0f} answers/s while profiled):")
            out.append("")
            out += _table(
                ["part", "share of samples"],
                [[x["part"], f"{x['share'] * 100:.1f}%"] for x in p["parts"]],
            )
            out.append("")

    led = results.get("ledger")
    if led:
        out.append(f"### 4. Ledger append and `audit verify` ({led['records']:,} records)")
        out.append("")
        rows = [
            [
                "append via DecisionRecorder → Ledger → SQLite",
                _fmt(led["append_records_per_s"]),
                "sqlite3 executemany, same rows, 5,000/commit",
                _fmt(led["sqlite_executemany_records_per_s"]),
                _ratio(led["append_records_per_s"], led["sqlite_executemany_records_per_s"]),
            ],
            [
                "`verify_ledger` (audit verify)",
                _fmt(led["verify_records_per_s"]),
                "hashlib sha256(0x00‖record), in memory",
                _fmt(led["hashlib_records_per_s"]),
                _ratio(led["verify_records_per_s"], led["hashlib_records_per_s"]),
            ],
            [
                "",
                "",
                "sqlite3 stream + sha256",
                _fmt(led["sqlite_stream_hash_records_per_s"]),
                _ratio(led["verify_records_per_s"], led["sqlite_stream_hash_records_per_s"]),
            ],
        ]
        if "cli_verify_seconds" in led:
            rows.append(
                [
                    "`trustplane audit verify --json` (CLI, wall incl. start-up)",
                    _fmt(round(led["verify_records"] / led["cli_verify_seconds"])),
                    f"ok: {_fmt(led.get('cli_verify_ok'))}",
                    "",
                    "",
                ]
            )
        out += _table(["operation", "records/s", "baseline", "baseline records/s", "ratio"], rows)
        out.append("")
        out.append(
            f"Building one record (mask, canonical JSON, leaf hash): {led['entry_build_us']} µs. "
            f"Mean record {led['record_bytes_mean']} bytes; database {led['db_mib']} MiB. "
            f"Append complete: {_fmt(led['append_complete'])}; verify ok: "
            f"{_fmt(led['verify_ok'])} ({led['verify_records']:,} records, "
            f"{led['verify_checkpoints']} checkpoints)."
        )
        out.append("")
        floors.append(
            [
                "audit verify ≥ 100,000 records/s",
                f"{led['verify_records_per_s']:,}/s",
                _verdict(led["verify_records_per_s"] >= FLOOR_VERIFY),
            ]
        )

    out.append("### Floors (information, not assertions)")
    out.append("")
    out += _table(["floor", "measured", "verdict"], floors)
    return "\n".join(out)


def write_docs(text: str, path: Path) -> None:
    replace_section(path, "results", text, "Results")


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (about a minute)")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON here")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP benchmark")
    args = parser.parse_args(argv)

    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    command = "python bench/run.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
    }
    sizes = inproc.QUICK if args.quick else inproc.FULL
    ip = inproc.run_inprocess(sizes, log)
    results["ledger"] = ip.pop("ledger")
    results["inprocess"] = ip
    stale = ip.get("generation_covers_now_after_load") is False

    if not args.no_http:
        http_sizes = httpbench.QUICK if args.quick else httpbench.FULL
        results["http"] = httpbench.run_http(http_sizes, what_if=stale, log=log)
        if not args.no_profile and not args.quick and spyprofile.available():
            log("profiling the served path ...")
            use_cli = results["http"]["served_via"] == "trustplane serve"
            with tempfile.TemporaryDirectory(prefix="tp-bench-prof-") as tmp:
                bodies = write_bodies(request_mix(load_shop()), Path(tmp) / "bodies.jsonl")
                results["profile"] = {
                    kind: spyprofile.profile_server(kind, Path(tmp), bodies, 6, use_cli, log)
                    for kind in (["trustplane-what-if"] if stale else ["trustplane"])
                }
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["elapsed_s"] = round(time.monotonic() - started, 1)

    text = report(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    if not args.no_docs:
        write_docs(text, DOCS)
        log(f"wrote the results section of {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
