"""AuthZEN subject search over 10,000 principals against 10,000 single evaluations, one run.

    python bench/search.py [--entities N] [--rounds R] [--no-docs]

A generated bundle: N users, a third of them in the readers group, one document the readers
may read. Two measurements, each `--rounds` times interleaved, medians reported:

- over HTTP, against a real `trustplane serve` (SQLite, batch durability): every reader found
  by paging `POST /access/v1/search/subject` (1,000 per page), against N sequential
  `POST /access/v1/evaluation` calls on one keep-alive connection (what a PEP without search
  would do); each search page is one ledger record, each evaluation another;
- in process: `outcomes.search.search` over the universe against N `Evaluator.evaluate` calls
  (the engine alone; the search's candidates go through the same evaluator).

The decision cache is off on both sides (the rounds repeat the same requests).

Both sides must find the same readers (checked). Replaces the `bench:search` section of
docs/benchmarks.md unless `--no-docs` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, replace_section

DOCS = ROOT / "docs" / "benchmarks.md"
TRUSTPLANE = str(Path(sys.executable).with_name("trustplane"))
CONTEXT: dict[str, object] = {}


def write_bundle(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trustplane.yaml").write_text("name: search-bench\n")
    (directory / "schema.cedarschema").write_text(
        "entity Group;\nentity User in [Group];\nentity Doc;\n"
        'action "read" appliesTo { principal: [User], resource: [Doc], context: {} };\n'
    )
    (directory / "policies.cedar").write_text(
        '@id("readers-read")\n@owner("bench")\n'
        'permit (principal in Group::"readers", action == Action::"read", resource);\n'
    )
    entities: list[dict[str, object]] = [
        {"uid": {"type": "Group", "id": "readers"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": []},
    ]
    for i in range(count):
        parents = [{"type": "Group", "id": "readers"}] if i % 3 == 0 else []
        entities.append(
            {"uid": {"type": "User", "id": f"u{i:05d}"}, "attrs": {}, "parents": parents}
        )
    (directory / "entities.json").write_text(json.dumps(entities))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def search_http(client: httpx.Client) -> list[str]:
    found: list[str] = []
    token = None
    while True:
        body = {
            "subject": {"type": "User"},
            "action": {"name": "read"},
            "resource": {"type": "Doc", "id": "d"},
            "context": CONTEXT,
            "page": {"limit": 1000, **({"token": token} if token else {})},
        }
        answer = client.post("/access/v1/search/subject", json=body).json()
        found += [r["id"] for r in answer["results"]]
        token = answer["page"]["next_token"]
        if not token:
            return found


def single_http(client: httpx.Client, count: int) -> list[str]:
    found = []
    for i in range(count):
        body = {
            "subject": {"type": "User", "id": f"u{i:05d}"},
            "action": {"name": "read"},
            "resource": {"type": "Doc", "id": "d"},
            "context": CONTEXT,
        }
        if client.post("/access/v1/evaluation", json=body).json()["decision"]:
            found.append(f"u{i:05d}")
    return found


def timed(fn, *args):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()

    from trustplane.decision.engine import Evaluator
    from trustplane.decision.policy_bundle import BundleSource, compile_bundle
    from trustplane.model import AccessRequest, EntityRef
    from trustplane.outcomes.search import MAX_LIMIT, Query, search
    from trustplane.outcomes.universe import build

    work = Path(tempfile.mkdtemp(prefix="search-bench-"))
    bundle_dir = work / "bundle"
    write_bundle(bundle_dir, args.entities)
    bundle = compile_bundle(BundleSource.from_dir(bundle_dir))
    universe = build(bundle)
    query = Query("subject", EntityRef("User", "*"), "read", EntityRef("Doc", "d"), {})

    def search_inproc() -> list[str]:
        evaluator = Evaluator(bundle)  # fresh: no answer cache carried between rounds
        found, token = [], None
        while True:
            page = search(query, universe, evaluator.evaluate, MAX_LIMIT, token)
            found += [r["id"] for r in page.results]
            token = page.next_token
            if not token:
                return found

    def single_inproc() -> list[str]:
        evaluator = Evaluator(bundle)
        return [
            f"u{i:05d}"
            for i in range(args.entities)
            if evaluator.evaluate(
                AccessRequest(
                    EntityRef("User", f"u{i:05d}"), EntityRef("Action", "read"),
                    EntityRef("Doc", "d"), {},
                )
            ).allowed
        ]  # fmt: skip

    port = free_port()
    env = {
        **os.environ,
        "TRUSTPLANE_STATE_DIR": str(work / "state"),
        "TRUSTPLANE_SERVER__PORT": str(port),
        "TRUSTPLANE_GRPC__PORT": str(free_port()),
        "TRUSTPLANE_POLICY__BUNDLE_DIR": str(bundle_dir),
        "TRUSTPLANE_POLICY__WATCH": "false",
        "TRUSTPLANE_LOG_LEVEL": "warning",
        # No answer cache: the rounds repeat the same requests, and a cache would answer them.
        "TRUSTPLANE_POLICY__DECISION_CACHE_SIZE": "0",
    }
    subprocess.run([TRUSTPLANE, "init"], env=env, check=True, capture_output=True)
    server = subprocess.Popen(
        [TRUSTPLANE, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    results: dict[str, list[float]] = {
        k: [] for k in ("search_http", "single_http", "search_inproc", "single_inproc")
    }
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        expected = search_http(client)  # warm-up, and the answer both sides must give
        assert expected == single_http(client, args.entities), "search != single evaluations"
        for _ in range(args.rounds):
            for name, fn, fargs in (
                ("search_http", search_http, (client,)),
                ("single_http", single_http, (client, args.entities)),
                ("search_inproc", search_inproc, ()),
                ("single_inproc", single_inproc, ()),
            ):
                seconds, found = timed(fn, *fargs)
                assert found == expected, name
                results[name].append(seconds)
    finally:
        server.terminate()
        server.wait(30)
    med = {k: statistics.median(v) for k, v in results.items()}
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    lines = [
        f"`python bench/search.py --entities {args.entities} --rounds {args.rounds}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit `{commit}`; {os.cpu_count()} CPUs, "
        f"load average {load} (1/5/15 min). {args.entities:,} users, {len(expected):,} allowed.",
        "",
        "| what | median s | per entity µs | ledger records | × search |",
        "|---|---:|---:|---:|---:|",
    ]
    pages = -(-len(expected) // 1000) or 1
    n = args.entities
    rows = [
        ("subject search over HTTP (1,000 per page)", "search_http", pages, "search_http"),
        (
            f"{args.entities:,} single evaluations over HTTP",
            "single_http",
            args.entities,
            "search_http",
        ),
        ("search in process (`outcomes.search.search`)", "search_inproc", 0, "search_inproc"),
        (f"{n:,} `Evaluator.evaluate` in process", "single_inproc", 0, "search_inproc"),
    ]
    for label, key, records, base in rows:
        lines.append(
            f"| {label} | {med[key]:.3f} | {med[key] / args.entities * 1e6:.1f} | "
            f"{records if records else '-'} | {med[key] / med[base]:.1f}× |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_docs:
        replace_section(DOCS, "search", text, "AuthZEN search")


if __name__ == "__main__":
    main()
