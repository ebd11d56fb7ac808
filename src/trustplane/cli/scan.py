"""`trustplane scan`: posture findings for files and directories, in a table, JSON or SARIF.

Exit codes: 0 nothing at or above `--fail-on`, 1 findings at or above it, 2 a usage or input
error (an unknown pack, an invalid rule file, a file that is not valid YAML).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from trustplane.posture.engine import Engine, Selected
    from trustplane.posture.scan import ScanResult


out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
DEFAULT_PACKS = ["pss-restricted", "zero-trust"]
# Keyed by `Severity` value (an IntEnum: LOW=1 … CRITICAL=4), so the posture engine is imported
# only when a scan runs.
COLOURS = {1: "cyan", 2: "yellow", 3: "red", 4: "bold red"}


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    SARIF = "sarif"


class FailOn(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"
    NONE = "none"


def scan(
    paths: Annotated[list[Path], typer.Argument(help="Files and directories to scan.")],
    pack: Annotated[
        list[str] | None,
        typer.Option(
            "--pack",
            "-p",
            help="Rule pack (name or name@v1.N); repeatable. Default: "
            "pss-restricted and zero-trust.",
        ),
    ] = None,
    rules: Annotated[
        list[Path] | None, typer.Option("--rules", help="Your own rule file; repeatable.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="Pack parameter KEY=VALUE (comma-separated lists), e.g. "
            "approved_registries=registry.example.com/,ghcr.io/acme/",
        ),
    ] = None,
    exemptions: Annotated[
        Path | None,
        typer.Option("--exemptions", help="YAML list of exemptions (rule, owner, expires, …)."),
    ] = None,
    secrets: Annotated[
        bool, typer.Option("--secrets/--no-secrets", help="Look for secrets (detect-secrets).")
    ] = True,
    fail_on: Annotated[
        FailOn, typer.Option(help="Exit 1 when a finding is at least this severe.")
    ] = FailOn.HIGH,
    output_format: Annotated[Format, typer.Option("--format", help="Output format.")] = (
        Format.TABLE
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report to a file.")
    ] = None,
) -> None:
    """Scan Kubernetes manifests, CI pipelines and secrets with the admission rule packs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from trustplane.posture.rules import Severity
    from trustplane.posture.scan import Scanner, collect

    fmt = Format.JSON if as_json else output_format
    engine, descriptions = _engine(
        pack or DEFAULT_PACKS, rules or [], _params(param or []), exemptions
    )
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        _fail(f"no such file or directory: {', '.join(missing)}")
    from trustplane.posture.estate import PACK

    chosen = {p.partition("@")[0] for p in pack or DEFAULT_PACKS}
    scanner = Scanner(engine, descriptions, secrets=secrets, estate_checks=PACK in chosen)
    total = len(collect(paths))
    with Progress(
        TextColumn("scanning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=err,
        disable=fmt is not Format.TABLE or not err.is_terminal or total < 20,
        transient=True,
    ) as progress:
        task = progress.add_task("", total=total)

        def advance(path: Path) -> None:
            progress.update(task, advance=1, description=str(path)[-60:])

        result = scanner.scan(paths, advance)
    _report(result, fmt, output)
    for rule_id, needs in engine.skipped.items():
        err.print(f"[yellow]note:[/] {rule_id} not checked: it needs {escape(needs)}")
    for note in result.skipped:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    for problem in result.errors:
        err.print(f"[red]error:[/] {escape(problem)}", highlight=False)
    if result.errors:
        raise SystemExit(2)
    if fail_on is not FailOn.NONE:
        threshold = Severity.parse(fail_on.value)
        if any(f.severity >= threshold for f in result.findings):
            raise SystemExit(1)


def _engine(
    packs: list[str], rule_files: list[Path], params: dict[str, Any], exemptions: Path | None
) -> tuple[Engine, dict[str, str]]:
    from trustplane.posture.engine import Engine, select
    from trustplane.posture.packs import PackRef, load_rule_file, selection
    from trustplane.posture.rules import Mode, RuleError, exemptions_by_rule, load_exemptions

    try:
        chosen: list[Selected] = selection([(PackRef.parse(p), Mode.ENFORCE) for p in packs])
        for path in rule_files:
            chosen += select(load_rule_file(path), None)
        exempt = {}
        if exemptions is not None:
            exempt = exemptions_by_rule(load_exemptions(_read(exemptions), str(exemptions)))
    except ValueError as exc:
        _fail(str(exc))
    except RuleError as exc:
        err.print(f"[red]rules refused[/] ({len(exc.problems)} problem(s)):", highlight=False)
        for problem in exc.problems:
            err.print(f"  {problem}", highlight=False, markup=False)
        raise SystemExit(2) from None
    return Engine(chosen, params, exempt), {s.rule.id: s.rule.description for s in chosen}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        _fail(f"{path}: cannot read: {exc.strerror}")


def _params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--param {item!r}: expected KEY=VALUE")
        params[key] = (
            [v for v in value.split(",") if v] if "," in value or key.endswith("s") else value
        )
    return params


def _report(result: ScanResult, fmt: Format, output: Path | None) -> None:
    from trustplane.posture.sarif import sarif

    if fmt is Format.SARIF:
        text = json.dumps(sarif(result.findings), indent=2) + "\n"
    elif fmt is Format.JSON:
        body = {
            "files": result.files,
            "findings": [f.as_dict() for f in result.findings],
            "errors": result.errors,
            "skipped": result.skipped,
        }
        text = json.dumps(body, indent=2) + "\n"
    else:
        if output is not None:
            _fail("--output needs --format json or sarif")
        _table(result)
        return
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


def _table(result: ScanResult) -> None:
    if not result.findings:
        out.print(f"[green]✓[/] {result.files} file(s) scanned, no findings")
        return
    table = Table(title=f"{len(result.findings)} finding(s) in {result.files} file(s)")
    table.add_column("severity")
    table.add_column("location", overflow="fold")
    table.add_column("rule", overflow="fold")
    table.add_column("finding", overflow="fold")
    table.add_column("fix", overflow="fold")
    for f in sorted(result.findings, key=lambda f: (-f.severity, f.file, f.line)):
        table.add_row(
            f"[{COLOURS[f.severity]}]{f.severity.label}[/]",
            f"{f.file}:{f.line}",
            f.rule,
            f.message,
            f.fix,
        )
    out.print(table)


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}", highlight=False)
    raise SystemExit(2)
