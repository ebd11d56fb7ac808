"""The long fuzz run on demand (issue 13, standing suites): tests/fuzz/harness.py against a real
`trustplane serve` per backend, N cases per endpoint, figures into docs/robustness.md.

    .venv/bin/python bench/fuzz.py --examples 100000 --backend both --out docs/robustness.md

Per endpoint (every operation of the served OpenAPI document, anonymous and with the admin
token; the gRPC Check as raw bytes and as hostile CheckRequests on each transport; the
AdmissionReview as random and as hostile-pod reviews): cases sent, the status codes answered and
the invariants broken, each attributed to issue 13's known defects or marked new. After every
endpoint the server must be healthy, answer a known-good request as before and hold in its
ledger every decision /metrics counted. Progress goes to stderr; the markdown lands between
`<!-- bench:fuzz:start -->` and `<!-- bench:fuzz:end -->` with the command, the machine (nproc,
load) and the commit.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import ROOT, SHOP, log, replace_section

sys.path.insert(0, str(ROOT))

from tests.fuzz import harness
from tests.fuzz.harness import (
    AdmissionFuzzer,
    GrpcFuzzer,
    HttpFuzzer,
    ProxyFuzzer,
    Tally,
    Target,
    Violation,
    check_invariants,
)
from tests.support import free_port, pg_available, running_server

DOCS = ROOT / "docs" / "robustness.md"
PG = "postgresql://127.0.0.1:5432/test"


@contextmanager
def store(kind: str, directory: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'store.db'}"
        return
    import uuid

    import psycopg

    schema = f"tp_fuzz_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def server(kind: str, directory: Path, transport: str) -> Iterator[Target]:
    directory.mkdir(parents=True)
    port = free_port()
    with (
        store(kind, directory) as url,
        running_server(
            directory,
            url,
            SHOP,
            ready_timeout=180,
            policy__watch="false",
            grpc__port=port,
            grpc__transport=transport,
            server__trusted_proxies=["127.0.0.1/32"],
        ) as srv,
    ):
        yield Target(srv.url, srv.token, kind, url, {transport: port})


def native_built() -> bool:
    return (
        bool(shutil.which("trustplane-extauthz"))
        or (ROOT / ".venv/bin/trustplane-extauthz").exists()
    )


def run_backend(kind: str, examples: int) -> list[Tally]:
    """Every endpoint against fresh servers on `kind`; the tallies in order."""
    tallies: list[Tally] = []
    with tempfile.TemporaryDirectory(prefix="tp-fuzz-") as tmp, ExitStack() as stack:
        transports = ["native", "python"] if native_built() else ["python"]
        log(f"{kind}: starting servers ({', '.join(transports)} gRPC transport)")
        targets = {t: stack.enter_context(server(kind, Path(tmp) / t, t)) for t in transports}
        main = targets[transports[0]]
        http = HttpFuzzer(main)
        stack.callback(http.close)
        operations = harness.operations()
        jobs: list[tuple[str, Any]] = []
        for operation in operations:
            jobs.append(("http", (operation, False)))
            if harness.is_admin(operation):
                jobs.append(("http", (operation, True)))
        for transport in transports:
            jobs += [("grpc-raw", transport), ("grpc-typed", transport)]
        jobs += [("proxy", "/v1/forward-auth"), ("proxy", "/v1/envoy/http")]
        jobs += [("admission-random", None), ("admission-hostile", None)]
        started = time.monotonic()
        for index, (job, arg) in enumerate(jobs, 1):
            began = time.monotonic()
            target = main
            if job == "http":
                operation, admin = arg
                tally = http.fuzz(operation, examples, admin=admin)
            elif job == "proxy":
                proxy = ProxyFuzzer(main)
                try:
                    tally = proxy.fuzz(arg, examples)
                finally:
                    proxy.close()
            elif job.startswith("grpc"):
                target = targets[arg]
                grpc_fuzzer = GrpcFuzzer(target, arg)
                try:
                    tally = (
                        grpc_fuzzer.fuzz_raw(examples)
                        if job == "grpc-raw"
                        else grpc_fuzzer.fuzz_typed(examples)
                    )
                finally:
                    grpc_fuzzer.close()
            else:
                admission = AdmissionFuzzer(main)
                try:
                    tally = (
                        admission.fuzz_random(examples)
                        if job == "admission-random"
                        else admission.fuzz_hostile(examples)
                    )
                finally:
                    admission.close()
            # The server afterwards: healthy, known-good answered, every decision recorded.
            for violation in check_invariants(target, settle_seconds=5):
                violation.endpoint = tally.endpoint
                tally.violations.append(violation)
            tallies.append(tally)
            elapsed = time.monotonic() - started
            eta = elapsed / index * (len(jobs) - index)
            new = len(harness.unexpected(tally.violations))
            log(
                f"{kind} [{index}/{len(jobs)}] {tally.endpoint}: {tally.cases} cases in "
                f"{time.monotonic() - began:.0f} s, {len(tally.violations)} violations "
                f"({new} new); about {eta / 60:.0f} min left"
            )
    return tallies


def machine() -> str:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores (nproc), load average {load} (1 / 5 / 15 min)"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = (
        " with uncommitted changes"
        if git("status", "--porcelain", "--", "src", "tests/fuzz", "bench/fuzz.py")
        else ""
    )
    return f"`{git('rev-parse', '--short', 'HEAD')}` ({git('branch', '--show-current')}){dirty}"


def _statuses(counter: Counter[str]) -> str:
    return ", ".join(f"{code}: {n}" for code, n in sorted(counter.items()))


def _violations(violations: list[Violation]) -> str:
    if not violations:
        return "0"
    known = Counter(v.defect for v in violations if v.defect is not None)
    new = len(harness.unexpected(violations))
    parts = [f"defect {d}: {n}" for d, n in sorted(known.items())]
    if new:
        parts.append(f"**new: {new}**")
    return f"{len(violations)} ({', '.join(parts)})"


def report(
    results: dict[str, list[Tally]],
    command: str,
    label: str,
    before: str,
    seconds: float,
) -> str:
    lines = [
        f"<!-- fuzz-run backends={','.join(results)} -->",
        f"**{label}**" if label else "",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on commit {commit()}; machine: {before} "
        f"at the start, {machine()} at the end; {seconds / 60:.0f} min. Command: `{command}`.",
        "",
    ]
    for kind, tallies in results.items():
        cases = sum(t.cases for t in tallies)
        violations = [v for t in tallies for v in t.violations]
        lines += [
            f"### {kind}: {cases:,} cases, {len(tallies)} endpoints, "
            f"invariant violations: {_violations(violations)}",
            "",
            "| endpoint | cases | status codes | invariant violations |",
            "|---|---:|---|---|",
        ]
        for tally in tallies:
            lines.append(
                f"| `{tally.endpoint}` | {tally.cases:,} | {_statuses(tally.statuses)} | "
                f"{_violations(tally.violations)} |"
            )
        lines.append("")
        new = harness.unexpected(violations)
        shown: dict[tuple[str, str], Violation] = {}
        for violation in new:
            shown.setdefault((violation.endpoint, violation.check), violation)
        if shown:
            lines += [f"New findings on {kind} (first of each kind, with a reproduction):", ""]
            for violation in list(shown.values())[:15]:
                detail = violation.detail.replace("|", "\\|")[:300]
                reproduction = violation.reproduction.replace("`", "'")[:500]
                lines.append(
                    f"- `{violation.endpoint}` {violation.check}: {detail}  \n  `{reproduction}`"
                )
            lines.append("")
    known = sorted(
        {
            v.defect
            for ts in results.values()
            for t in ts
            for v in t.violations
            if v.defect is not None
        }
    )
    if known:
        lines += ["Known defects seen (issue 13):", ""]
        lines += [f"- {harness.KNOWN_DEFECTS.get(d, f'defect {d}')}" for d in known]
        lines.append("")
    return "\n".join(lines)


_RUN = re.compile(r"^<!-- fuzz-run backends=([a-z,]+) -->$", re.MULTILINE)


def kept_runs(path: Path, backends: list[str]) -> str:
    """The runs already in `path`'s fuzz section on other backends only (a SQLite run then a
    PostgreSQL run keep both), to be followed by this run's figures."""
    if not path.exists():
        return ""
    current = path.read_text()
    start, end = "<!-- bench:fuzz:start -->", "<!-- bench:fuzz:end -->"
    if start not in current or end not in current:
        return ""
    section = current.split(start, 1)[1].split(end, 1)[0]
    marks = list(_RUN.finditer(section))
    if not marks:  # one run without its mark: its backends are its headings
        found = re.findall(r"^### (sqlite|postgres):", section, re.MULTILINE)
        runs = [(found, section)] if found else []
    else:
        runs = [
            (
                m.group(1).split(","),
                section[m.start() : (marks[i + 1].start() if i + 1 < len(marks) else len(section))],
            )
            for i, m in enumerate(marks)
        ]
    kept = [text.strip("\n") for kinds, text in runs if not set(kinds) & set(backends)]
    return "\n\n".join(kept) + "\n\n" if kept else ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="cases per endpoint")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--out", type=Path, default=DOCS, help="markdown file to update")
    parser.add_argument("--label", default="", help="a line saying what this run is")
    parser.add_argument(
        "--exclude-nul",
        action="store_true",
        help="no NUL byte in any case (PostgreSQL before issue 13 defect 1's fix: one NUL "
        "stalls the ledger and every later admin write waits 10 s)",
    )
    args = parser.parse_args(argv)
    harness.EXCLUDE_NUL = args.exclude_nul
    # Ctrl-C (or kill -INT) stops the run and its servers cleanly, even when started with `&`
    # by a shell that ignores SIGINT in background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends and not pg_available():
        parser.error("PostgreSQL at 127.0.0.1:5432 is unreachable")
    command = "python bench/fuzz.py " + shlex.join(
        [a for a in (argv if argv is not None else sys.argv[1:])]
    )
    before = machine()
    log(f"fuzz: {args.examples} cases per endpoint on {', '.join(backends)}; {before}")
    harness.progress = lambda tally: log(f"  {tally.endpoint}: {tally.cases} cases")
    harness.PROGRESS_EVERY = max(250, args.examples // 4)
    started = time.monotonic()
    results = {kind: run_backend(kind, args.examples) for kind in backends}
    text = report(results, command, args.label, before, time.monotonic() - started)
    text = kept_runs(args.out, backends) + text.lstrip("\n")
    replace_section(args.out, "fuzz", text, "Fuzzing from the API description")
    print(text)
    log(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
