"""HTTP/1.1 keep-alive load generator for the AuthZEN endpoint (run in its own process).

Open loop (`--rate R`): request i is due at start + i/R whatever happened before; free
connections take due requests in order, and each latency is measured from the request's
*scheduled* time, so a stalled server is charged for the requests that waited behind it
(no coordinated omission). Closed loop (`--rate 0`): every connection sends its next request
as soon as it has an answer (a fallback for wrk).

Bounded: the open loop sends at most rate × duration requests, then waits at most `--grace`
seconds for answers; requests still unanswered then count as lost (infinite latency). The
closed loop stops after `--duration` seconds or `--max-requests`. Only 127.0.0.1 is accepted.

Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    rank = max(1, min(len(values), math.ceil(p / 100 * len(values) - 1e-9)))
    return values[rank - 1]


def build_requests(
    host: str, port: int, path: str, bodies: list[bytes], headers: list[str] | None = None
) -> list[bytes]:
    """POST each body to `path`; with no bodies, one GET of `path`. `headers`: extra lines."""
    extra = "".join(f"{h}\r\n" for h in headers or [])
    if not bodies:
        return [f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{extra}"
    )
    return [head.encode() + f"Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
            break
    if length is None:
        raise ValueError("response without content-length")
    if length:
        await reader.readexactly(length)
    return status


async def open_loop(args: argparse.Namespace, requests: list[bytes]) -> dict[str, Any]:
    clock = time.perf_counter  # loop.time() is millisecond-grained under uvloop
    total = int(args.rate * args.duration)
    interval = 1.0 / args.rate
    latencies: list[float | None] = [None] * total
    statuses: dict[int, int] = {}
    errors = 0
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    connections = [
        await asyncio.open_connection(args.host, args.port) for _ in range(args.connections)
    ]
    start = clock() + 0.05

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        while True:
            i = await queue.get()
            if i is None:
                return
            writer.write(requests[i % len(requests)])
            try:
                status = await read_response(reader)
            except (OSError, ValueError, asyncio.IncompleteReadError):
                errors += 1
                return
            latencies[i] = clock() - (start + i * interval)
            statuses[status] = statuses.get(status, 0) + 1

    workers = [asyncio.create_task(worker(r, w)) for r, w in connections]
    i = 0
    while i < total:
        now = clock()
        while i < total and start + i * interval <= now:
            queue.put_nowait(i)
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, start + i * interval - clock()))
    schedule_end = start + total * interval
    for _ in workers:
        queue.put_nowait(None)
    _done, pending = await asyncio.wait(
        workers, timeout=max(0.0, schedule_end + args.grace - clock())
    )
    for task in pending:
        task.cancel()
    for _reader, writer in connections:
        writer.close()
    wall = clock() - start
    answered = sorted(x for x in latencies if x is not None)
    lost = total - len(answered)
    everything = answered + [math.inf] * lost

    def ms(p: float) -> float | None:
        value = _percentile(everything, p)
        return None if math.isinf(value) else round(value * 1000, 3)

    return {
        "mode": "open",
        "rate": args.rate,
        "duration_s": args.duration,
        "connections": args.connections,
        "offered": total,
        "answered": len(answered),
        "lost": lost,
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "achieved_rps": round(len(answered) / wall, 1) if wall > 0 else None,
        "latency_ms": {
            "p50": ms(50),
            "p90": ms(90),
            "p99": ms(99),
            "p999": ms(99.9),
            "max": ms(100),
            "mean_answered": round(sum(answered) / len(answered) * 1000, 3) if answered else None,
        },
    }


async def closed_loop(args: argparse.Namespace, requests: list[bytes]) -> dict[str, Any]:
    clock = time.perf_counter
    connections = [
        await asyncio.open_connection(args.host, args.port) for _ in range(args.connections)
    ]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    sent = 0
    start = clock()
    deadline = start + args.duration

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors, sent
        while clock() < deadline and sent < args.max_requests:
            i = sent
            sent += 1
            t0 = clock()
            writer.write(requests[i % len(requests)])
            try:
                status = await read_response(reader)
            except (OSError, ValueError, asyncio.IncompleteReadError):
                errors += 1
                return
            latencies.append(clock() - t0)
            statuses[status] = statuses.get(status, 0) + 1

    tasks = [asyncio.create_task(worker(r, w)) for r, w in connections]
    _done, pending = await asyncio.wait(tasks, timeout=args.duration + args.grace)
    for task in pending:
        task.cancel()
    wall = clock() - start
    for _reader, writer in connections:
        writer.close()
    latencies.sort()
    return {
        "mode": "closed",
        "duration_s": round(wall, 3),
        "connections": args.connections,
        "answered": len(latencies),
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "achieved_rps": round(len(latencies) / wall, 1) if wall > 0 else None,
        "latency_ms": {
            p: round(_percentile(latencies, q) * 1000, 3)
            for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9), ("max", 100))
        }
        if latencies
        else {},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/access/v1/evaluation")
    parser.add_argument("--bodies", type=Path, help="JSON Lines to POST; absent: GET --path")
    parser.add_argument("--header", action="append", default=[], help="extra 'Name: value'")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s; 0: closed loop")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK:
        parser.error("load is only sent to the loopback interface")
    if not 0 < args.duration <= 600:
        parser.error("--duration must be in (0, 600]")
    bodies = []
    if args.bodies is not None:
        bodies = [line.encode() for line in args.bodies.read_text().splitlines() if line.strip()]
    requests = build_requests(args.host, args.port, args.path, bodies, args.header)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    t0 = time.perf_counter()
    if args.rate > 0:
        result = runner(open_loop(args, requests))
    else:
        result = runner(closed_loop(args, requests))
    result["wall_s"] = round(time.perf_counter() - t0, 3)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
