"""gRPC load generator for Envoy's `Authorization/Check` (run in its own process).

Open loop (`--rate R`): call i is due at start + i/R whatever happened before, and its latency
is measured from that scheduled time (no coordinated omission). Closed loop (`--rate 0`):
`--concurrency` callers each send the next call as soon as they have an answer, for the maximum
sustainable throughput. One HTTP/2 channel, as Envoy keeps to its ext_authz cluster.

The requests are service-to-service checks as Envoy would send them after mTLS: the caller's
SPIFFE ID in `source.principal`, the method, host and path of the held request. Prints one JSON
document on stdout. Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import sys
import threading
import time
from typing import Any

import grpc
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

CHECKOUT = "spiffe://shop.example/ns/storefront/sa/checkout"
STRANGER = "spiffe://shop.example/ns/x/sa/unknown"
MIX = [  # (caller, method, path): allowed, allowed, denied by default, no route
    (CHECKOUT, "POST", "/payments/v1/charges"),
    (CHECKOUT, "POST", "/inventory/v1/reservations"),
    (STRANGER, "POST", "/payments/v1/charges"),
    (CHECKOUT, "GET", "/nowhere"),
]


def requests() -> list[external_auth_pb2.CheckRequest]:
    ctx = attribute_context_pb2.AttributeContext
    return [
        external_auth_pb2.CheckRequest(
            attributes=ctx(
                source=ctx.Peer(principal=caller),
                request=ctx.Request(
                    http=ctx.HttpRequest(
                        method=method,
                        path=path,
                        host="shop.example",
                        scheme="https",
                        headers={"user-agent": "grpcload", "x-request-id": "bench"},
                    )
                ),
            )
        )
        for caller, method, path in MIX
    ]


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    rank = max(1, min(len(values), math.ceil(p / 100 * len(values) - 1e-9)))
    return values[rank - 1]


def _summary(answered: list[float], lost: int) -> dict[str, Any]:
    everything = sorted(answered) + [math.inf] * lost

    def ms(p: float) -> float | None:
        value = _percentile(everything, p)
        return None if math.isinf(value) or math.isnan(value) else round(value * 1000, 3)

    return {"p50": ms(50), "p90": ms(90), "p99": ms(99), "p999": ms(99.9), "max": ms(100)}


def open_loop(args: argparse.Namespace) -> dict[str, Any]:
    """Calls are issued as gRPC futures by one scheduling thread; completions are timed in the
    callbacks gRPC's own threads run, so a slow answer never delays the next call's start."""
    calls = requests()
    clock = time.perf_counter
    total = int(args.rate * args.duration)
    interval = 1.0 / args.rate
    latencies: list[float | None] = [None] * total
    codes: dict[str, int] = {}
    errors = 0
    lock = threading.Lock()
    done = threading.Event()
    finished = 0
    with grpc.insecure_channel(args.target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for call in calls:  # warm the channel and the server's first-request paths
            stub.Check(call, timeout=5)
        start = clock() + 0.05

        def completed(i: int, future: Any) -> None:
            nonlocal errors, finished
            at = clock()
            with lock:
                finished += 1
                try:
                    response = future.result()
                except grpc.RpcError:
                    errors += 1
                else:
                    latencies[i] = at - (start + i * interval)
                    key = str(response.status.code)
                    codes[key] = codes.get(key, 0) + 1
                if finished == total:
                    done.set()

        for i in range(total):
            delay = start + i * interval - clock()
            if delay > 0:
                time.sleep(delay)
            future = stub.Check.future(calls[i % len(calls)], timeout=args.grace)
            future.add_done_callback(lambda f, i=i: completed(i, f))
        done.wait(args.grace + 1)
        wall = clock() - start
    answered = [x for x in latencies if x is not None]
    return {
        "mode": "open",
        "client": "grpc sync stub, futures",
        "rate": args.rate,
        "duration_s": args.duration,
        "offered": total,
        "answered": len(answered),
        "lost": total - len(answered),
        "errors": errors,
        "grpc_status_codes": codes,
        "achieved_rps": round(len(answered) / wall, 1) if wall > 0 else None,
        "latency_ms": _summary(answered, total - len(answered)),
    }


async def closed_loop(args: argparse.Namespace) -> dict[str, Any]:
    calls = requests()
    clock = time.perf_counter
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(args.target) as channel:
        await channel.channel_ready()
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for call in calls:
            await stub.Check(call, timeout=5)
        deadline = clock() + args.duration

        async def caller(n: int) -> None:
            nonlocal errors
            i = n
            while clock() < deadline:
                sent = clock()
                try:
                    await stub.Check(calls[i % len(calls)], timeout=5)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(clock() - sent)
                i += 1

        start = clock()
        await asyncio.gather(*(caller(n) for n in range(args.concurrency)))
        wall = clock() - start
    return {
        "mode": "closed",
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "answered": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / wall, 1) if wall > 0 else None,
        "latency_ms": _summary(latencies, 0),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="", help="127.0.0.1:PORT")
    parser.add_argument("--rate", type=float, default=1000.0, help="calls/s; 0: closed loop")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16, help="closed loop callers")
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument(
        "--dump-requests",
        type=argparse.FileType("w"),
        help="write the serialized CheckRequests (hex, one a line) for bench/grpcload.cc; exit",
    )
    args = parser.parse_args(argv)
    if args.dump_requests is not None:
        for call in requests():
            args.dump_requests.write(call.SerializeToString().hex() + "\n")
        args.dump_requests.close()
        return
    if not args.target.startswith(("127.0.0.1:", "localhost:")):
        parser.error("load is only sent to the loopback interface")
    if not 0 < args.duration <= 600:
        parser.error("--duration must be in (0, 600]")
    # The generator's own garbage collections would show up as server latency.
    gc.disable()
    result = open_loop(args) if args.rate > 0 else asyncio.run(closed_loop(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
