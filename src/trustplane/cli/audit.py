"""`trustplane audit …`: verify the decision ledger, prove inclusion and consistency against
signed checkpoints, rotate the checkpoint key, export and follow records."""

from __future__ import annotations

import base64
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from trustplane.cli.common import (
    CliError,
    JsonOpt,
    admin,
    emit,
    err,
    is_whole_id,
    out,
    resolve_prefix,
    root_context,
    server_url,
    store_engine,
)
from trustplane.cli.decisions import print_records

if TYPE_CHECKING:
    from trustplane.config import Settings
    from trustplane.telemetry.ledger import ApiSource, Ledger

audit_app = typer.Typer(help="Verify, export and follow the decision ledger.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    key: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint verifier key (default: every key in state_dir/ledger.pub; with "
            "--url, the keys the server publishes).",
        ),
    ] = None,
    require_checkpointed: Annotated[
        bool,
        typer.Option(
            "--require-checkpointed",
            help="Fail when any record is not yet covered by a signed checkpoint.",
        ),
    ] = False,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Verify this server's ledger: read through its admin API, checked here.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the Merkle tree from the store (or a server's, with --url), check every
    signed checkpoint and every record's query columns; report the records no checkpoint
    covers yet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trustplane.telemetry.checkpoint import CheckpointError, NoteVerifier
    from trustplane.telemetry.ledger import LedgerSource, verify_ledger

    settings = root_context(ctx).settings()
    engine = None
    source: LedgerSource
    try:
        if url is None:
            from trustplane.server.runtime import load_verifier
            from trustplane.telemetry.ledger import StoreSource

            engine = store_engine(settings, remote=True)  # first: the likelier mistake
            source = StoreSource(engine)
            where = _shown_url(settings.effective_database_url)
            verifier = load_verifier(settings, key)
            keys_from = "--key" if key else "state_dir"
        else:
            source, where = _server_source(settings, url)
            keys = [key] if key else source.verifier_keys
            verifier = [NoteVerifier.from_verifier_key(k) for k in keys if k]
            keys_from = "--key" if key else "server"
        total = source.records_expected()
    except CheckpointError as exc:
        raise CliError(f"bad verifier key: {exc}") from None
    started = time.perf_counter()
    try:
        with Progress(
            TextColumn("verifying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=as_json or not err.is_terminal,
            transient=True,
        ) as progress:
            task = progress.add_task("verify", total=total)
            report = verify_ledger(
                source,
                verifier,
                progress=lambda n: progress.update(task, completed=n),
                require_checkpointed=require_checkpointed,
            )
    finally:
        if engine is not None:
            engine.dispose()
    elapsed = time.perf_counter() - started

    def render(_: dict[str, Any]) -> None:
        for problem in report.problems or []:
            out.print(f"[red]✗[/] {escape(problem)}", highlight=False)
        if report.not_listed:
            out.print(f"[red]✗[/] … and {report.not_listed} more problems not listed")
        status = "[green]✓ ledger intact[/]" if report.intact else "[red]✗ ledger tampered[/]"
        out.print(
            f"{status}: {report.records} records, {report.checkpoints} checkpoints "
            f"verified in {elapsed:.2f}s; {report.proven} records proven by a signed checkpoint"
            + (
                f"; {report.quarantined} quarantined (kept in ledger_quarantine: the store "
                "refused them as rows)"
                if report.quarantined
                else ""
            )
        )
        if report.unanchored:
            mark = "[red]✗[/]" if require_checkpointed else "[yellow]![/]"
            out.print(f"{mark} {report.unproven_line()}", highlight=False)
            if require_checkpointed:
                out.print(
                    "[red]✗ not every record is checkpointed[/] (--require-checkpointed)",
                    highlight=False,
                )
        if keys_from == "server":
            out.print(
                f"[yellow]![/] checkpoints checked with the verifier keys from the server at "
                f"{escape(where)}: pass --key to check them against a key you hold",
                highlight=False,
            )

    emit(
        {
            **report.as_dict(),
            "seconds": round(elapsed, 3),
            "source": where,
            "verifier_keys_from": keys_from,
        },
        as_json,
        render,
    )
    if not report.ok:
        raise typer.Exit(1)


def _server_source(settings: Settings, url: str) -> tuple[ApiSource, str]:
    """The server's ledger through its admin API, its checkpoints (and published verifier
    keys) already read; and the server's address."""
    from urllib.parse import urlencode

    from trustplane.telemetry.ledger import ApiSource

    base = server_url(settings, url)

    def fetch(path: str, params: dict[str, str]) -> Any:
        return admin(settings, "GET", f"{path}?{urlencode(params)}", base)

    source = ApiSource(fetch)
    source.checkpoints()  # read once, first: the keys to check them with come with them
    return source, base


def _shown_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@audit_app.command("proof")
def audit_proof(
    ctx: typer.Context,
    decision_id: Annotated[
        str, typer.Argument(help="Decision id to prove, or a unique prefix of it.")
    ],
    tree_size: Annotated[
        int | None, typer.Option(help="Tree size (default: newest checkpoint).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Checkpoint verifier key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """RFC 9162 inclusion proof of a decision in a signed checkpoint, verified here."""
    from trustplane.server.runtime import load_verifier

    settings = root_context(ctx).settings()
    verifier = load_verifier(settings, key)
    decision_id = _decision_id(settings, decision_id)
    with _read_only_ledger(settings) as ledger:
        proof = ledger.inclusion_proof(decision_id, tree_size)
    _report_proof(
        proof,
        _verify_inclusion_doc(proof, verifier),
        as_json,
        f"decision {decision_id} is leaf {proof['leaf_index']} of a tree of size "
        f"{proof['tree_size']}; audit path of {len(proof['inclusion_path'])} hashes",
        "inclusion verified against the signed checkpoint",
        "inclusion proof does not verify",
    )


def _decision_id(settings: Settings, typed: str) -> str:
    """The whole decision id `typed` names (quarantined leaves count: they are in the tree)."""
    if is_whole_id(typed):
        return typed.strip().lower()
    from sqlalchemy import select

    from trustplane.store.tables import decisions, ledger_quarantine

    engine = store_engine(settings)
    found: list[str] = []
    try:
        with engine.connect() as connection:
            for table in (decisions, ledger_quarantine):
                column = table.c.decision_id
                query = select(column).where(
                    column.startswith(typed.strip().lower(), autoescape=True)
                )
                found += connection.execute(query.limit(50)).scalars()
    finally:
        engine.dispose()
    return resolve_prefix(typed, found, "decision")


@audit_app.command("consistency")
def audit_consistency(
    ctx: typer.Context,
    first: Annotated[int, typer.Argument(help="Older tree size.")],
    second: Annotated[
        int | None, typer.Argument(help="Newer tree size (default: newest checkpoint).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Checkpoint verifier key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """RFC 9162 consistency proof between two checkpoints, verified here."""
    from trustplane.server.runtime import load_verifier

    settings = root_context(ctx).settings()
    verifier = load_verifier(settings, key)
    with _read_only_ledger(settings) as ledger:
        proof = ledger.consistency_proof(first, second)
        if first and proof["first_checkpoint"] is None:
            sizes = sorted(c.size for c in ledger.list_checkpoints(limit=10))
            raise CliError(
                f"no signed checkpoint at size {first}; recent checkpoint sizes: "
                f"{', '.join(map(str, sizes)) or 'none'}"
            )
    _report_proof(
        proof,
        _verify_consistency_doc(proof, verifier),
        as_json,
        f"tree {proof['first']} → {proof['second']}: consistency path of "
        f"{len(proof['consistency_path'])} hashes",
        "the newer checkpoint extends the older one",
        "consistency proof does not verify",
    )


@contextlib.contextmanager
def _read_only_ledger(settings: Settings) -> Iterator[Ledger]:
    """The store's ledger without its signing key: proofs and queries only."""
    from trustplane.telemetry.ledger import Ledger, LedgerError

    engine = store_engine(settings)
    try:
        yield Ledger(engine, None, settings.ledger.origin)
    except LedgerError as exc:
        raise CliError(str(exc)) from None
    finally:
        engine.dispose()


def _report_proof(
    proof: dict[str, Any], verified: bool, as_json: bool, summary: str, good: str, bad: str
) -> None:

    def render(_: dict[str, Any]) -> None:
        out.print(summary)
        out.print(f"[green]✓ {good}[/]" if verified else f"[red]✗ {bad}[/]")

    emit({**proof, "verified": verified}, as_json, render)
    if not verified:
        raise typer.Exit(1)


def _verify_inclusion_doc(proof: dict[str, Any], verifier: Any) -> bool:
    from trustplane.telemetry.checkpoint import CheckpointError, open_checkpoint
    from trustplane.telemetry.merkle import verify_inclusion

    if proof["checkpoint"] is None:
        return False
    try:
        checkpoint = open_checkpoint(proof["checkpoint"], verifier)
    except CheckpointError:
        return False
    path = [base64.b64decode(h) for h in proof["inclusion_path"]]
    return checkpoint.size == proof["tree_size"] and verify_inclusion(
        base64.b64decode(proof["leaf_hash"]),
        proof["leaf_index"],
        checkpoint.size,
        path,
        checkpoint.root_hash,
    )


def _verify_consistency_doc(proof: dict[str, Any], verifier: Any) -> bool:
    from trustplane.telemetry.checkpoint import CheckpointError, open_checkpoint
    from trustplane.telemetry.merkle import verify_consistency

    try:
        old = open_checkpoint(proof["first_checkpoint"], verifier) if proof["first"] else None
        new = open_checkpoint(proof["second_checkpoint"], verifier)
    except (CheckpointError, TypeError):
        return False
    old_root = old.root_hash if old else base64.b64decode(proof["first_root"])
    path = [base64.b64decode(h) for h in proof["consistency_path"]]
    return verify_consistency(proof["first"], new.size, old_root, new.root_hash, path)


@audit_app.command("rotate-key")
def audit_rotate_key(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Replace the checkpoint signing key; checkpoints the old key signed keep verifying (its
    verifier key stays in state_dir/ledger.pub). Restart serving processes to sign with it."""
    from trustplane.server.runtime import rotate_ledger_key
    from trustplane.telemetry.checkpoint import CheckpointError

    settings = root_context(ctx).settings()
    try:
        old, new = rotate_ledger_key(settings)
    except CheckpointError as exc:
        raise CliError(f"bad ledger key at {settings.ledger_key_file}: {exc}") from None
    emit({"old_verifier_key": old, "verifier_key": new}, as_json, _print_rotated)


def _print_rotated(doc: dict[str, str]) -> None:
    out.print(f"[green]✓[/] checkpoint key rotated: new verifier key {doc['verifier_key']}")
    out.print(f"  the old key {doc['old_verifier_key']} still verifies the checkpoints it signed")
    out.print("  restart serving processes so they sign with the new key")


@audit_app.command("export")
def audit_export(
    ctx: typer.Context,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="JSONL file (default: stdout).")
    ] = None,
) -> None:
    """Write every ledger record as JSON Lines, in ledger order."""
    from trustplane.telemetry.ledger import iter_records

    settings = root_context(ctx).settings()
    engine = store_engine(settings)
    count = 0
    handle = output.open("wb") if output else sys.stdout.buffer
    try:
        for record in iter_records(engine):
            handle.write(record + b"\n")
            count += 1
    finally:
        if output:
            handle.close()
        engine.dispose()
    if output:
        err.print(f"[green]✓[/] exported {count} records to {output}")


@audit_app.command("tail")
def audit_tail(
    ctx: typer.Context,
    lines: Annotated[int, typer.Option("-n", help="How many recent records to show.")] = 10,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The most recent ledger records; with -f, follow new ones."""
    from trustplane.telemetry.ledger import DecisionQuery, query_decisions

    settings = root_context(ctx).settings()
    engine = store_engine(settings)
    newest = query_decisions(engine, DecisionQuery(limit=1))
    last = newest[0]["seq"] if newest else -1  # follow from here, whatever -n says
    rows = list(reversed(query_decisions(engine, DecisionQuery(limit=lines)))) if lines else []
    print_records(rows, as_json)
    try:
        while follow:
            time.sleep(0.5)
            rows = query_decisions(
                engine, DecisionQuery(after_seq=last, limit=1000, ascending=True)
            )
            if rows:
                last = rows[-1]["seq"]
                print_records(rows, as_json)
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()
