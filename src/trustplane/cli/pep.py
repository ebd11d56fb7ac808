"""`trustplane pep …`: the policy enforcement points allowed to ask for decisions.

These work on the store directly (like `init` and its admin token): a running server hears of
every change through the change feed within its poll interval, with no restart. A token is
printed once, by `add`, and only its sha256 is kept; a lost token is replaced by removing the
PEP and adding it again.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from trustplane.cli.common import (
    CliError,
    JsonOpt,
    emit,
    out,
    root_context,
    store_engine,
    when,
)

pep_app: typer.Typer = typer.Typer(
    help="Enforcement points (PEPs) allowed to ask for decisions when pep.auth is on.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="The PEP's name, as decision records show it.")]


@pep_app.command("add")
def add_cmd(
    ctx: typer.Context,
    name: NameArg,
    spiffe_id: Annotated[
        str | None,
        typer.Option(
            "--spiffe-id",
            help="Authenticate this PEP by its SPIFFE ID (mTLS client certificate or JWT-SVID "
            "of the trust domain) instead of a token.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a PEP; prints its token once (keep it in the PEP's secret store)."""
    from trustplane.enforcement.pep import PepError, PepStore

    engine = store_engine(root_context(ctx).settings())
    try:
        token = PepStore(engine).add(name, spiffe_id)
    except PepError as exc:
        raise CliError(str(exc)) from None
    finally:
        engine.dispose()

    def render(_: Any) -> None:
        if token is None:
            out.print(f"[green]✓[/] PEP [bold]{name}[/] authenticates as {spiffe_id}")
            return
        out.print(f"[green]✓[/] PEP [bold]{name}[/] registered; its token (shown only now):")
        out.print(token, markup=False, highlight=False)

    emit({"name": name, "spiffe_id": spiffe_id, "token": token}, as_json, render)


@pep_app.command("list")
def list_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The registered PEPs (never their tokens)."""
    from trustplane.enforcement.pep import PepStore

    engine = store_engine(root_context(ctx).settings())
    try:
        records = PepStore(engine).list()
    finally:
        engine.dispose()

    def render(_: Any) -> None:
        table = Table("name", "authenticates with", "added")
        for record in records:
            table.add_row(
                record.name,
                record.spiffe_id if record.spiffe_id else "token",
                when(record.created_at),
            )
        out.print(table)

    emit([r.as_dict() for r in records], as_json, render)


@pep_app.command("remove")
def remove_cmd(ctx: typer.Context, name: NameArg) -> None:
    """Unregister a PEP: its token or SPIFFE ID stops being accepted."""
    from trustplane.enforcement.pep import PepError, PepStore

    engine = store_engine(root_context(ctx).settings())
    try:
        PepStore(engine).remove(name)
    except PepError as exc:
        raise CliError(str(exc)) from None
    finally:
        engine.dispose()
    out.print(f"[green]✓[/] PEP [bold]{name}[/] removed")
