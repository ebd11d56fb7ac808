"""Enforcement benchmarks: Envoy ext_authz over gRPC, and nginx `auth_request`, each against a
baseline measured in the same run.

    .venv/bin/python bench/enforcement.py            # about 2 minutes; updates docs/benchmarks.md
    .venv/bin/python bench/enforcement.py --quick --no-docs

1. gRPC `Authorization/Check` (the real `trustplane serve`, ledger on, batch durability):
   open loop at 1,000 calls/s offered from a second process, p50/p99 from each call's scheduled
   time; then a closed loop for the maximum sustainable throughput. Four servers, interleaved:
   trustplane with its compiled front (the default transport) and with grpcio's server
   (`grpc.transport = python`), and a no-op Authorization server answering OK on each of those
   two stacks (the front with a no-op answer in Python; grpc.aio). The load comes from
   bench/grpcload.cc (built here with g++ and Debian's libgrpc++-dev) when it can be built, so
   the generator's own pauses are not charged to the server; else from bench/grpcload.py.
2. nginx with `auth_request` (the real Debian nginx, one worker) in front of an upstream that
   nginx itself serves: pointed at trustplane's `/v1/forward-auth`, at the no-op ASGI app of the
   HTTP benchmark (same uvicorn settings), and without `auth_request`. Throughput from a closed
   loop, p99 at a fixed offered rate, ratios to the no-op.

Informational: no figure here is asserted. Results replace the enforcement section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import httpbench
from common import BENCH_DIR, ROOT, CpuSteal, log, replace_section

DOCS = ROOT / "docs" / "benchmarks.md"
EDGE_ENV = {
    "TRUSTPLANE_SERVER__TRUSTED_PROXIES": '["127.0.0.1/32"]',
    "TRUSTPLANE_PEP__IDENTITY_HEADER": "X-Forwarded-User",
}
NGINX_PATH = "/inventory/v1/stock/sku-1"  # bob (developer) may read it: an allow
NGINX_HEADERS = ["X-Forwarded-User: bob"]


@dataclass(frozen=True)
class Sizes:
    rounds: int  # open-loop runs per gRPC server, interleaved; medians are reported
    rate: int
    rate_s: float
    closed_s: float
    concurrency: int
    nginx_rate: int
    nginx_connections: int


FULL = Sizes(
    rounds=3,
    rate=1000,
    rate_s=10,
    closed_s=10,
    concurrency=16,
    nginx_rate=500,
    nginx_connections=8,
)
QUICK = Sizes(
    rounds=1,
    rate=1000,
    rate_s=3,
    closed_s=3,
    concurrency=16,
    nginx_rate=500,
    nginx_connections=8,
)


# -- the no-op gRPC baseline --------------------------------------------------------------------


def serve_noop_grpc(port: int) -> None:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
    from google.rpc import code_pb2, status_pb2

    ok = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK), ok_response=external_auth_pb2.OkHttpResponse()
    )

    class Noop(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
        async def Check(self, request: Any, context: Any) -> Any:
            return ok

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Noop(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def serve_noop_native(port: int) -> None:
    """The compiled front with a Python answer that does nothing: the cost of the transport."""
    from envoy.service.auth.v3 import external_auth_pb2
    from google.rpc import code_pb2, status_pb2

    from trustplane.enforcement.native import NativeFront, find_binary

    ok = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK), ok_response=external_auth_pb2.OkHttpResponse()
    )

    class Noop:
        async def answer(self, request: Any, peer: str) -> Any:
            return ok

    async def main() -> None:
        binary = find_binary(None)
        assert binary is not None, "trustplane-extauthz is not built (scripts/bootstrap.sh)"
        front = NativeFront(Noop(), binary, "127.0.0.1", port)  # type: ignore[arg-type]
        await front.start()
        await asyncio.Event().wait()

    asyncio.run(main())


def start_noop_grpc(workdir: Path, kind: str = "grpc") -> tuple[subprocess.Popen[bytes], int]:
    """A no-op Authorization server in its own process: `grpc` (grpc.aio) or `native`."""
    port = httpbench.free_port()
    log = (workdir / f"noop-{kind}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "enforcement.py"), f"--serve-noop-{kind}", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    time.sleep(1.0)
    return process, port


def native_front_installed() -> bool:
    from trustplane.enforcement.native import find_binary

    return find_binary(None) is not None


def run_tool(argv: list[str], seconds: float) -> dict[str, Any]:
    """Run a load generator in its own process; its last stdout line is its JSON result."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[1]).name} failed: {done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


BUILD_DIR = BENCH_DIR / "results" / "build"  # gitignored with bench/results/


def compiled_grpcload() -> tuple[Path | None, str]:
    """bench/grpcload.cc built with g++ and Debian's libgrpc++-dev (rebuilt when the source
    changes), or None with the reason it could not be."""
    source = BENCH_DIR / "grpcload.cc"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    binary = BUILD_DIR / f"grpcload-{digest}"
    if binary.exists():
        return binary, "built"
    compiler = shutil.which("g++")
    pkg_config = shutil.which("pkg-config")
    if compiler is None or pkg_config is None:
        return None, "g++ or pkg-config missing (apt-get install g++ pkg-config libgrpc++-dev)"
    flags = subprocess.run(
        [pkg_config, "--cflags", "--libs", "grpc++"], capture_output=True, text=True
    )
    if flags.returncode != 0:
        return None, "grpc++ not found by pkg-config (apt-get install libgrpc++-dev)"
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        [compiler, "-O2", "-std=c++17", str(source), "-o", str(binary), *flags.stdout.split()],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        return None, f"g++ failed: {built.stderr.strip()[:300]}"
    return binary, "built"


def grpcload(
    port: int,
    *,
    rate: float,
    seconds: float,
    concurrency: int = 16,
    binary: Path | None = None,
    requests: Path | None = None,
) -> dict[str, Any]:
    """One load run from its own process: the compiled generator when `binary` is given (with
    the serialized `requests` file), else bench/grpcload.py."""
    if binary is not None and requests is not None:
        argv = [str(binary), "--requests", str(requests)]
    else:
        argv = [sys.executable, str(BENCH_DIR / "grpcload.py")]
    argv += [
        "--target",
        f"127.0.0.1:{port}",
        "--rate",
        str(rate),
        "--duration",
        str(seconds),
        "--concurrency",
        str(concurrency),
    ]
    return run_tool(argv, seconds)


def dump_requests(path: Path) -> Path:
    subprocess.run(
        [sys.executable, str(BENCH_DIR / "grpcload.py"), "--dump-requests", str(path)], check=True
    )
    return path


# -- nginx --------------------------------------------------------------------------------------

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream pdp {{ server 127.0.0.1:{pdp_port}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{upstream_port};
    location / {{ return 200 "ok"; }}
  }}
  server {{
    listen 127.0.0.1:{port};
    location = /_auth {{
      internal;
      proxy_pass http://pdp{auth_path};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $host;
    }}
    location / {{
      {auth}
      proxy_pass http://127.0.0.1:{upstream_port};
    }}
  }}
}}
"""


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


def start_nginx(
    workdir: Path, name: str, pdp_port: int | None, auth_path: str
) -> tuple[subprocess.Popen[bytes], int]:
    binary = nginx_binary()
    assert binary is not None
    directory = workdir / f"nginx-{name}"
    directory.mkdir()
    port, upstream_port = httpbench.free_port(), httpbench.free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=directory,
            port=port,
            upstream_port=upstream_port,
            pdp_port=pdp_port or upstream_port,
            auth_path=auth_path,
            auth="auth_request /_auth;" if pdp_port else "",
        )
    )
    process = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return process, port
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"nginx {name} did not start: {(directory / 'error.log').read_text()}")


def httpload(port: int, *, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(BENCH_DIR / "loadgen.py"),
        "--port",
        str(port),
        "--path",
        NGINX_PATH,
        "--rate",
        str(rate),
        "--duration",
        str(seconds),
        "--connections",
        str(connections),
        *(x for h in NGINX_HEADERS for x in ("--header", h)),
    ]
    return run_tool(argv, seconds)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the run ------------------------------------------------------------------------------------


def run(sizes: Sizes, log: Any, python_client: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {"loadavg_start": round(os.getloadavg()[0], 2)}
    steal = CpuSteal()
    with tempfile.TemporaryDirectory(prefix="tp-bench-edge-") as tmp:
        workdir = Path(tmp)
        log("starting trustplane serve (shop bundle, batch ledger; both transports) and no-ops")
        server = httpbench.start_server("trustplane", workdir, True, EDGE_ENV)
        python_env = {**EDGE_ENV, "TRUSTPLANE_GRPC__TRANSPORT": "python"}
        on_grpcio = httpbench.start_server("trustplane-grpcio", workdir, True, python_env)
        noop, noop_port = start_noop_grpc(workdir)
        front = native_front_installed()
        noop_native, noop_native_port = start_noop_grpc(workdir, "native") if front else (None, 0)
        results["native_front"] = front
        binary, why = (None, "--python-client given") if python_client else compiled_grpcload()
        checks = dump_requests(workdir / "checks.hex") if binary is not None else None
        results["grpc_client"] = (
            "bench/grpcload.cc (grpc++ GenericStub, callback API)"
            if binary is not None
            else f"bench/grpcload.py (grpc C-core under Python; compiled client unavailable: {why})"
        )
        log(f"gRPC load generator: {results['grpc_client']}")
        load = {"binary": binary, "requests": checks}
        try:
            assert server.grpc_port is not None and on_grpcio.grpc_port is not None
            servers = [
                ("trustplane", server.grpc_port),
                ("trustplane_grpcio", on_grpcio.grpc_port),
                ("noop", noop_port),
            ]
            if noop_native is not None:
                servers.append(("noop_native", noop_native_port))
            for round_ in range(sizes.rounds):
                for name, port in servers:
                    log(f"gRPC Check, {name}: {sizes.rate}/s, run {round_ + 1}/{sizes.rounds}")
                    results.setdefault(f"grpc_open_{name}_runs", []).append(
                        grpcload(port, rate=sizes.rate, seconds=sizes.rate_s, **load)
                    )
            for name, port in servers:
                runs = results[f"grpc_open_{name}_runs"]
                results[f"grpc_open_{name}"] = median_run(runs)
                log(f"gRPC Check, {name}: closed loop x{sizes.concurrency}")
                results.setdefault("cpu_steal_grpc_open_percent", steal.percent())
                results[f"grpc_closed_{name}"] = grpcload(
                    port, rate=0, seconds=sizes.closed_s, concurrency=sizes.concurrency, **load
                )
            if nginx_binary() is None:
                log("nginx is not installed: skipping the nginx benchmark")
            else:
                results.update(nginx_runs(workdir, server.port, sizes, log))
            accounting = httpx.get(f"{server.base}/metrics", timeout=5).text
            results["trustplane_decisions_metric"] = sum(
                float(line.rsplit(" ", 1)[1])
                for line in accounting.splitlines()
                if line.startswith("trustplane_decisions_total{") and 'kind="enforced"' in line
            )
        finally:
            stop(noop)
            if noop_native is not None:
                stop(noop_native)
            httpbench.stop_server(on_grpcio)
            httpbench.stop_server(server)
    return results


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' totals, with each latency percentile the median over runs."""
    keys = runs[0]["latency_ms"].keys()
    latency = {}
    for key in keys:
        values = sorted(r["latency_ms"][key] for r in runs if r["latency_ms"][key] is not None)
        latency[key] = values[len(values) // 2] if values else None
    return {
        "offered": sum(r["offered"] for r in runs),
        "answered": sum(r["answered"] for r in runs),
        "runs": len(runs),
        "latency_ms": latency,
        "p99_each_run": [r["latency_ms"]["p99"] for r in runs],
    }


def nginx_runs(workdir: Path, pdp_port: int, sizes: Sizes, log: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    noop_asgi = httpbench.start_server("noop", workdir, True)
    try:
        setups = {
            "trustplane": (pdp_port, "/v1/forward-auth"),
            "noop": (noop_asgi.port, "/"),
            "no_auth": (None, "/"),
        }
        for name, (port, path) in setups.items():
            process, nginx_port = start_nginx(workdir, name, port, path)
            try:
                log(f"nginx auth_request -> {name}: closed loop x{sizes.nginx_connections}")
                out[f"nginx_closed_{name}"] = httpload(
                    nginx_port, rate=0, seconds=sizes.closed_s, connections=sizes.nginx_connections
                )
                log(f"nginx auth_request -> {name}: {sizes.nginx_rate}/s")
                out[f"nginx_open_{name}"] = httpload(
                    nginx_port,
                    rate=sizes.nginx_rate,
                    seconds=sizes.rate_s,
                    connections=sizes.nginx_connections,
                )
            finally:
                stop(process)
    finally:
        httpbench.stop_server(noop_asgi)
    return out


# -- report -------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "n/a"


def report(results: dict[str, Any], sizes: Sizes, quick: bool) -> str:
    lines = [
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node() or 'this machine'} "
        f"({platform.machine()}, {httpbench.os.cpu_count()} cores, Python "
        f"{platform.python_version()}); command: "
        f"`.venv/bin/python bench/enforcement.py{' --quick' if quick else ''}`. Load average "
        f"at start {results.get('loadavg_start')}; CPU steal (time the hypervisor gave other "
        f"guests) during the open-loop runs: {results.get('cpu_steal_grpc_open_percent')}%.",
        "",
        "### gRPC ext_authz `Authorization/Check` (ledger on, batch)",
        "",
        f"Load generator: {results.get('grpc_client', 'bench/grpcload.py')}, in its own process. "
        f"Open loop at {sizes.rate:,}/s for {sizes.rate_s:g} s (latency "
        f"from each call's scheduled time), {sizes.rounds} run(s) per server interleaved, "
        "percentiles are medians over runs; closed loop with "
        f"{sizes.concurrency} callers on one channel for the maximum throughput.",
        "",
        "| server | offered | answered | p50 ms | p99 ms | p99 each run | max ms "
        "| closed-loop calls/s | closed p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    front = "compiled front" if results.get("native_front") else "grpcio (front not built)"
    labels = (
        ("trustplane", f"trustplane serve ({front})"),
        ("noop_native", "no-op on the compiled front"),
        ("trustplane_grpcio", "trustplane serve (`grpc.transport = python`, grpcio)"),
        ("noop", "no-op grpc.aio server"),
    )
    for name, label in labels:
        if f"grpc_open_{name}" not in results:
            continue
        o, c = results[f"grpc_open_{name}"], results[f"grpc_closed_{name}"]
        lat = o["latency_ms"]
        lines.append(
            f"| {label} | {o['offered']:,} | {o['answered']:,} | {lat['p50']} | {lat['p99']} | "
            f"{o['p99_each_run']} | {lat['max']} | {c['rps']:,} | {c['latency_ms']['p99']} |"
        )
    p99 = results["grpc_open_trustplane"]["latency_ms"]["p99"]
    verdict = "PASS" if p99 is not None and p99 <= 1.5 else "FAIL"
    closed = {
        name: results[f"grpc_closed_{name}"]["rps"]
        for name, _ in labels
        if f"grpc_closed_{name}" in results
    }
    grpcio_p99 = results["grpc_open_trustplane_grpcio"]["latency_ms"]["p99"]
    lines += [
        "",
        f"Floor p99 ≤ 1.5 ms at 1,000/s: **{p99} ms, {verdict}** (OPA-Envoy publishes 3.0 ms). "
        "Closed-loop throughput against the grpc.aio no-op: trustplane "
        f"{ratio(closed['trustplane'], closed['noop'])}, trustplane on grpcio "
        f"{ratio(closed['trustplane_grpcio'], closed['noop'])}; p99 on grpcio over p99 on "
        f"the front: {ratio(grpcio_p99, p99)}.",
        "",
    ]
    if "nginx_closed_trustplane" in results:
        lines += [
            "### nginx `auth_request` (one nginx worker; upstream served by nginx)",
            "",
            f"`GET {NGINX_PATH}` with `X-Forwarded-User: bob` (a trusted proxy's identity "
            f"header; an allow). Closed loop with {sizes.nginx_connections} connections; open "
            f"loop at {sizes.nginx_rate}/s for the p99.",
            "",
            "| auth_request to | requests/s | × no-op | p50 ms (open) | p99 ms (open) | statuses |",
            "|---|---|---|---|---|---|",
        ]
        base = results["nginx_closed_noop"]["achieved_rps"]
        for name, label in (
            ("trustplane", "trustplane `/v1/forward-auth`"),
            ("noop", "no-op ASGI app (same uvicorn settings)"),
            ("no_auth", "none (nginx and upstream only)"),
        ):
            c, o = results[f"nginx_closed_{name}"], results[f"nginx_open_{name}"]
            lines.append(
                f"| {label} | {c['achieved_rps']:,} | {ratio(c['achieved_rps'], base)} | "
                f"{o['latency_ms']['p50']} | {o['latency_ms']['p99']} | {o['statuses']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON here")
    parser.add_argument(
        "--python-client",
        action="store_true",
        help="load gRPC from bench/grpcload.py even when bench/grpcload.cc can be built",
    )
    parser.add_argument("--serve-noop-grpc", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-noop-native", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_noop_grpc:
        serve_noop_grpc(args.serve_noop_grpc)
        return
    if args.serve_noop_native:
        serve_noop_native(args.serve_noop_native)
        return
    sizes = QUICK if args.quick else FULL

    results = run(sizes, log, python_client=args.python_client)
    section = report(results, sizes, args.quick)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not args.no_docs:
        replace_section(DOCS, "enforcement", section, "Enforcement results")


if __name__ == "__main__":
    main()
