"""The HTTP benchmark: the real AuthZEN endpoint and a no-op ASGI baseline, each in its own
server process, loaded by wrk (max throughput) and by bench/loadgen.py (fixed offered rate)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from common import BENCH_DIR, SHOP, load_shop, request_mix, write_bodies

EVALUATION = "/access/v1/evaluation"


@dataclass(frozen=True)
class HttpSizes:
    warmup_s: float
    wrk_s: float
    wrk_connections: tuple[int, ...]
    rate: int
    rate_s: float
    rate_connections: int
    grace_s: float
    layers_s: float  # 0: skip the layer split


FULL = HttpSizes(
    warmup_s=2,
    wrk_s=10,
    wrk_connections=(4, 8),
    rate=1000,
    rate_s=15,
    rate_connections=16,
    grace_s=5,
    layers_s=8,
)
QUICK = HttpSizes(
    warmup_s=1,
    wrk_s=2,
    wrk_connections=(4,),
    rate=1000,
    rate_s=3,
    rate_connections=16,
    grace_s=1.5,
    layers_s=0,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- server processes ------------------------------------------------------------------------


def trustplane_exe() -> str | None:
    exe = shutil.which("trustplane") or str(Path(sys.executable).with_name("trustplane"))
    return exe if Path(exe).exists() else None


def _cli_serve_available() -> bool:
    """Whether `trustplane serve` exists in this checkout, with the flags used here."""
    exe = trustplane_exe()
    if exe is None:
        return False
    try:
        probe = subprocess.run(
            [exe, "serve", "--help"],
            capture_output=True,
            timeout=30,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and all(
        flag in probe.stdout for flag in ("--bundle", "--port", "--durability", "--no-watch")
    )


def init_state(state_dir: Path, use_cli: bool) -> str | None:
    """A fresh state directory (`trustplane init`, or `initialise` without the CLI); returns
    the bootstrap admin token."""
    exe = trustplane_exe()
    if use_cli and exe is not None:
        subprocess.run(
            [exe, "--state-dir", str(state_dir), "init", "--json"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    else:
        from trustplane.config import load_settings
        from trustplane.server.runtime import initialise

        initialise(load_settings(overrides={"state_dir": state_dir}))
    token_file = state_dir / "admin.token"
    return token_file.read_text().strip() if token_file.exists() else None


@dataclass
class Server:
    kind: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    command: str
    state_dir: Path | None = None
    admin_token: str | None = None
    grpc_port: int | None = None  # trustplane's ext_authz gRPC server

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def loaded_modules(self) -> dict[str, bool]:
        """uvloop / httptools in use: their extension modules are mapped into the serving
        process (the workers, when there are several)."""
        # The process itself too: a single server may have children that do not serve (the
        # ledger appender), and reading only those reported uvloop and httptools missing.
        pids = [self.process.pid, *_children(self.process.pid)]
        maps = ""
        for pid in pids:
            try:
                maps += Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
        if not maps:
            return {}
        return {
            "uvloop": "uvloop/loop." in maps,
            "httptools": "httptools/parser/parser." in maps,
        }


# Served configurations of the real server: extra `trustplane serve` flags and settings.
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "trustplane": ([], {}),
    "trustplane-nocache": ([], {"TRUSTPLANE_POLICY__DECISION_CACHE_SIZE": "0"}),
    "trustplane-2w": (["--workers", "2"], {}),
    "trustplane-2w-nocache": (["--workers", "2"], {"TRUSTPLANE_POLICY__DECISION_CACHE_SIZE": "0"}),
    "trustplane-process": ([], {"TRUSTPLANE_LEDGER__APPENDER": "process"}),
    "trustplane-2w-process": (["--workers", "2"], {"TRUSTPLANE_LEDGER__APPENDER": "process"}),
    "trustplane-grpcio": ([], {"TRUSTPLANE_GRPC__TRANSPORT": "python"}),
}


def start_server(
    kind: str,
    workdir: Path,
    use_cli: bool,
    extra_env: dict[str, str] | None = None,
    bundle: Path = SHOP,
) -> Server:
    """`extra_env`: more TRUSTPLANE_* settings for this run (the enforcement benchmark);
    `bundle`: the bundle served (the CLI variants)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    grpc_port = free_port()
    log_path = workdir / f"{kind}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRUSTPLANE_GRPC__PORT": str(grpc_port)}
    flags, settings_env = VARIANTS.get(kind, ([], {}))
    env.update(settings_env)
    env.update(extra_env or {})
    if kind in ("trustplane-no-ledger", "trustplane-what-if"):
        env["TRUSTPLANE_POLICY__DECISION_CACHE_SIZE"] = (
            "0"  # layer experiments evaluate every request
        )
    state_dir = None
    token = None
    if kind == "noop":
        argv = [sys.executable, str(BENCH_DIR / "servers.py"), "noop", "--port", str(port)]
        command = "python bench/servers.py noop"
    else:
        state_dir = workdir / f"{kind}-state"
        token = init_state(state_dir, use_cli)
        exe = trustplane_exe()
        if kind in VARIANTS and use_cli and exe is not None:
            argv = [
                exe,
                "--state-dir",
                str(state_dir),
                "serve",
                "--bundle",
                str(bundle),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--durability",
                "batch",
                "--no-watch",
                *flags,
            ]
            command = " ".join(
                [
                    *(f"{k}={v}" for k, v in settings_env.items()),
                    "trustplane serve --bundle examples/shop --durability batch --no-watch",
                    *flags,
                ]
            )
        else:
            argv = [
                sys.executable,
                str(BENCH_DIR / "servers.py"),
                kind,
                "--port",
                str(port),
                "--state-dir",
                str(state_dir),
                "--bundle-dir",
                str(SHOP),
            ]
            command = f"python bench/servers.py {kind} (trustplane.server.serve.serve)"
    log = log_path.open("wb")
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    server = Server(kind, port, process, log_path, command, state_dir, token, grpc_port)
    ready = "/readyz" if kind != "noop" else "/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} server exited: see {log_path}\n{log_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base + ready, timeout=2).status_code == 200:
                return server
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"{kind} server not ready within 60 s: see {log_path}")


def stop_server(server: Server) -> int | None:
    """SIGINT (uvicorn's graceful shutdown: the ledger drains), then SIGKILL after 30 s."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


# -- load ------------------------------------------------------------------------------------


def run_wrk(server: Server, bodies: Path, connections: int, seconds: float) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(BENCH_DIR / "authzen.lua"),
        server.base + EVALUATION,
        "--",
        str(bodies),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"^WRK_JSON (\{.*\})$", done.stdout, re.M)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    data = json.loads(match.group(1))
    duration = data["duration_us"] / 1e6
    errors = data["errors"]
    return {
        "tool": "wrk",
        "connections": connections,
        "duration_s": round(duration, 3),
        "answered": data["requests"],
        "rps": round(data["requests"] / duration, 1),
        "non_2xx": errors["status"],
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "latency_ms": {k: round(v / 1000, 3) for k, v in data["latency_us"].items()},
    }


def run_loadgen(
    server: Server, bodies: Path, *, rate: float, seconds: float, connections: int, grace: float
) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(BENCH_DIR / "loadgen.py"),
        "--port",
        str(server.port),
        "--bodies",
        str(bodies),
        "--rate",
        str(rate),
        "--duration",
        str(seconds),
        "--connections",
        str(connections),
        "--grace",
        str(grace),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + grace + 60)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if rate <= 0:  # closed loop: shape it like a wrk result
        result["tool"] = "loadgen (closed loop)"
        result["rps"] = result["achieved_rps"]
    return result


def throughput(
    server: Server, bodies: Path, connections: int, seconds: float, have_wrk: bool
) -> dict[str, Any]:
    if have_wrk:
        return run_wrk(server, bodies, connections, seconds)
    return run_loadgen(server, bodies, rate=0, seconds=seconds, connections=connections, grace=5)


# -- ledger accounting -----------------------------------------------------------------------


def scrape(server: Server) -> dict[str, float]:
    text = httpx.get(server.base + "/metrics", timeout=10).text
    values: dict[str, float] = {"decisions": 0.0}
    for line in text.splitlines():
        if line.startswith("trustplane_decisions_total{") and 'mode="enforced"' in line:
            values["decisions"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith(("trustplane_ledger_records ", "trustplane_ledger_pending ")):
            name, value = line.split(" ", 1)
            values[name.removeprefix("trustplane_")] = float(value)
    return values


def ledger_accounting(server: Server, answered_by_clients: int) -> dict[str, Any]:
    """After the load: every decision the server answered is in the ledger."""
    deadline = time.monotonic() + 20
    metrics = scrape(server)
    while metrics.get("ledger_records", -1) < metrics["decisions"] and time.monotonic() < deadline:
        time.sleep(0.2)
        metrics = scrape(server)
    checkpoint = None
    if server.admin_token:
        time.sleep(1.2)  # one checkpoint interval, so the newest checkpoint covers everything
        reply = httpx.get(
            server.base + "/v1/ledger/checkpoint",
            headers={"Authorization": f"Bearer {server.admin_token}"},
            timeout=10,
        )
        if reply.status_code == 200:
            checkpoint = reply.json().get("tree_size")
    return {
        "server_decisions": int(metrics["decisions"]),
        "ledger_records_metric": int(metrics.get("ledger_records", -1)),
        "ledger_pending_metric": int(metrics.get("ledger_pending", -1)),
        "admin_checkpoint_tree_size": checkpoint,
        "answered_by_clients": answered_by_clients,
    }


def count_store_rows(db: Path) -> int:
    """Decision records in the store: admin calls (the bench's own checkpoint read) are
    recorded in the same table and are not decisions."""
    connection = sqlite3.connect(db)
    try:
        query = "SELECT count(*) FROM decisions WHERE kind = 'decision'"
        return int(connection.execute(query).fetchone()[0])
    finally:
        connection.close()


# -- one server, the whole suite -------------------------------------------------------------


def bench_server(
    kind: str,
    workdir: Path,
    bodies: Path,
    sizes: HttpSizes,
    have_wrk: bool,
    use_cli: bool,
    log: Any,
) -> dict[str, Any]:
    server = start_server(kind, workdir, use_cli)
    out: dict[str, Any] = {"kind": kind, "command": server.command}
    answered = 0
    pid = server.process.pid

    def with_cpu(result: dict[str, Any], cpu_before: float | None) -> dict[str, Any]:
        cpu_after = _cpu_seconds(pid)
        if cpu_before is not None and cpu_after is not None and result["answered"]:
            result["server_cpu_us_per_answer"] = round(
                (cpu_after - cpu_before) / result["answered"] * 1e6, 1
            )
        return result

    try:
        out["event_loop"] = server.loaded_modules()
        warm = throughput(server, bodies, 4, sizes.warmup_s, have_wrk)
        answered += warm["answered"]
        out["throughput"] = []
        for connections in sizes.wrk_connections:
            log(f"   {kind}: max throughput, {connections} connections, {sizes.wrk_s:g} s")
            before = _cpu_seconds(pid)
            result = throughput(server, bodies, connections, sizes.wrk_s, have_wrk)
            result = with_cpu(result, before)
            answered += result["answered"]
            out["throughput"].append(result)
        log(f"   {kind}: open loop at {sizes.rate}/s for {sizes.rate_s:g} s")
        before = _cpu_seconds(pid)
        fixed = run_loadgen(
            server,
            bodies,
            rate=sizes.rate,
            seconds=sizes.rate_s,
            connections=sizes.rate_connections,
            grace=sizes.grace_s,
        )
        fixed = with_cpu(fixed, before)
        answered += fixed["answered"]
        out["fixed_rate"] = fixed
        if kind != "noop":
            out["ledger"] = ledger_accounting(server, answered)
        out["cpu_seconds"] = _cpu_seconds(pid)
    finally:
        out["exit_code"] = stop_server(server)
    if kind != "noop" and server.state_dir is not None:
        ledger = out.get("ledger", {})
        rows = count_store_rows(server.state_dir / "trustplane.db")
        ledger["store_rows_after_shutdown"] = rows
        ledger["every_decision_recorded"] = (
            rows == ledger.get("server_decisions") and rows >= answered
        )
        out["ledger"] = ledger
    return out


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of the process and its live descendants (worker processes), all
    threads, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
    for child in _children(pid):
        total += _cpu_seconds(child) or 0.0
    return total


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def run_http(sizes: HttpSizes, *, what_if: bool, log: Any) -> dict[str, Any]:
    have_wrk = shutil.which("wrk") is not None
    use_cli = _cli_serve_available()
    loaded = load_shop()
    requests = request_mix(loaded)
    results: dict[str, Any] = {
        "load_tool": "wrk -t1" if have_wrk else "bench/loadgen.py closed loop (wrk not found)",
        "fixed_rate_tool": "bench/loadgen.py open loop (asyncio + uvloop, keep-alive sockets)",
        "served_via": "trustplane serve" if use_cli else "trustplane.server.serve.serve()",
        "bodies": len(requests),
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="tp-bench-http-") as tmp:
        workdir = Path(tmp)
        bodies = write_bodies(requests, workdir / "bodies.jsonl")
        kinds = [*VARIANTS, "noop"] + (["trustplane-what-if"] if what_if else [])
        for kind in kinds:
            log(f"3. HTTP: {kind} ...")
            results["servers"][kind] = bench_server(
                kind, workdir, bodies, sizes, have_wrk, use_cli, log
            )
        if sizes.layers_s > 0:
            results["layers"] = {}
            for kind in ("trustplane-http-only", "trustplane-no-ledger"):
                log(f"3. HTTP layers: {kind}, wrk -c4 for {sizes.layers_s:g} s ...")
                results["layers"][kind] = layer_run(kind, workdir, bodies, sizes, have_wrk)
    return results


def layer_run(
    kind: str, workdir: Path, bodies: Path, sizes: HttpSizes, have_wrk: bool
) -> dict[str, Any]:
    """One closed-loop run of an experiment server (see servers.py), for its CPU per answer."""
    server = start_server(kind, workdir, use_cli=False)
    try:
        throughput(server, bodies, 4, sizes.warmup_s, have_wrk)
        before = _cpu_seconds(server.process.pid)
        result = throughput(server, bodies, 4, sizes.layers_s, have_wrk)
        after = _cpu_seconds(server.process.pid)
    finally:
        stop_server(server)
    if before is not None and after is not None and result["answered"]:
        result["server_cpu_us_per_answer"] = round((after - before) / result["answered"] * 1e6, 1)
    return result
