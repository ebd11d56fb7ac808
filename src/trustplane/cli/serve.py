"""`trustplane init` and `trustplane serve`: create the state directory and store, then serve
decisions (AuthZEN), the admin API and metrics."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from trustplane.cli.common import CliError, JsonOpt, emit, err, out, root_context


def init(
    ctx: typer.Context,
    new_token: Annotated[bool, typer.Option(help="Issue another bootstrap admin token.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create the state directory, ledger signing key, database schema and admin token."""
    from trustplane.server.runtime import initialise

    settings = root_context(ctx).settings()
    result = initialise(settings, new_token=new_token)
    doc = {
        "state_dir": str(result.state_dir),
        "database_url": result.database_url,
        "admin_token_file": str(settings.admin_token_file) if result.admin_token else None,
        "ledger_verifier_key": result.verifier_key,
        "identity_keys_created": list(result.identity_keys_created),
    }

    def render(doc: dict[str, Any]) -> None:
        out.print(f"[green]✓[/] state directory [bold]{doc['state_dir']}[/]")
        out.print(f"[green]✓[/] database {doc['database_url']}")
        out.print(f"[green]✓[/] ledger verifier key {doc['ledger_verifier_key']}")
        if doc["admin_token_file"]:
            out.print(f"[green]✓[/] new admin token written to {doc['admin_token_file']} (0600)")
        for key in doc["identity_keys_created"]:
            out.print(f"[green]✓[/] trust domain {settings.identity.trust_domain}: created {key}")

    emit(doc, as_json, render)


class LedgerDurability(StrEnum):
    """The choices of `config.Durability`, repeated here so `--help` need not import the
    settings (pydantic); `tests/cli/test_cli_imports.py` keeps the two in step."""

    BATCH = "batch"
    SYNC = "sync"


def serve(
    ctx: typer.Context,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", "-b", help="Policy bundle directory to serve.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    durability: Annotated[LedgerDurability | None, typer.Option(help="Ledger durability.")] = None,
    watch: Annotated[
        bool | None, typer.Option("--watch/--no-watch", help="Reload when bundle files change.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Serving processes (default 1; one per core is typical).")
    ] = None,
    init_if_needed: Annotated[
        bool, typer.Option("--init", help="Run `init` first if the state directory is new.")
    ] = False,
    allow_unauthenticated_peps: Annotated[
        bool | None,
        typer.Option(
            "--allow-unauthenticated-peps",
            help="Serve beyond loopback without pep.auth = required (anyone who can connect "
            "gets decisions).",
        ),
    ] = None,
) -> None:
    """Serve decisions (AuthZEN), the admin API and metrics."""
    from trustplane.enforcement.pep import check_listen_policy
    from trustplane.server.runtime import initialise
    from trustplane.server.serve import ServeError, preflight
    from trustplane.server.serve import serve as run_server

    settings = root_context(ctx).settings(
        policy={"bundle_dir": bundle, "watch": watch},
        server={"host": host, "port": port, "workers": workers},
        ledger={"durability": None if durability is None else durability.value},
        pep={"allow_unauthenticated": allow_unauthenticated_peps},
    )
    check_listen_policy(settings)
    preflight(settings)  # before `--init` creates anything
    if init_if_needed and not settings.ledger_key_file.exists():
        initialise(settings)
    if settings.grpc.enabled:
        from trustplane.enforcement.native import require_transport

        require_transport(settings.grpc)
    scheme = "https" if settings.tls.cert_file or settings.tls.from_ca else "http"
    if settings.log_format == "text":  # JSON logs: the server logs it, so every line parses
        err.print(
            f"trustplane serving [bold]{settings.policy.bundle_dir}[/] on "
            f"{scheme}://{settings.server.host}:{settings.server.port} "
            f"(ledger: {settings.ledger.durability.value}, "
            f"workers: {settings.server.workers})"
        )
    try:
        run_server(settings)
    except ServeError as exc:
        raise CliError(str(exc)) from None
