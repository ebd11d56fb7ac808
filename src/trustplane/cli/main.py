"""`trustplane …`: thin commands over the planes. Rich output for people, `--json` for scripts.

Exit codes: 0 success (or allow), 1 a negative answer (deny, failed test, failed verification),
2 a usage, configuration or input error.

This module only assembles the Typer app from one module per command group; what the commands
share lives in `cli/common.py`. Every command module imports its heavy dependencies when the
command runs, so `--help` loads Typer and Rich and little else.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from trustplane import __version__
from trustplane.cli import (
    access,
    audit,
    check,
    decisions,
    identity,
    image_attestations,
    pep,
    policy,
    revoke,
)
from trustplane.cli import serve as serve_commands
from trustplane.cli.common import Context, exit_for
from trustplane.cli.scan import scan

app = typer.Typer(
    name="trustplane",
    help="A Zero Trust control plane: Cedar policy decisions with a tamper-evident ledger.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"trustplane {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML config file (default: $TRUSTPLANE_CONFIG or ./trustplane.toml).",
        ),
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(help="State directory (keys, SQLite).")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy database URL.")] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    ctx.obj = Context(config, {"state_dir": state_dir, "store": {"url": database_url}})


app.add_typer(policy.policy_app, name="policy")
app.add_typer(audit.audit_app, name="audit")
app.command("scan")(scan)
app.command("init")(serve_commands.init)
app.command("serve")(serve_commands.serve)
app.command("check")(check.check)
app.command("decisions")(decisions.decisions_cmd)
app.command("revoke")(revoke.revoke_cmd)
app.command("revocations")(revoke.revocations_cmd)
app.add_typer(identity.identity_app, name="identity")
app.command("attest")(image_attestations.attest_cmd)
app.add_typer(image_attestations.attestations_app, name="attestations")
app.add_typer(access.access_app, name="access")
app.add_typer(access.break_glass_app, name="break-glass")
app.add_typer(access.exceptions_app, name="exceptions")
app.add_typer(pep.pep_app, name="pep")


def main() -> None:
    try:
        app()
    except Exception as exc:
        exit_for(exc)
        raise
