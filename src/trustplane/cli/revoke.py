"""`trustplane revoke` and `trustplane revocations`: revoke on the running server, list what
is revoked."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from trustplane.cli.common import (
    CliError,
    JsonOpt,
    admin,
    admin_token,
    emit,
    http,
    out,
    root_context,
    server_url,
)


def revoke_cmd(
    ctx: typer.Context,
    kind: Annotated[
        str,
        typer.Argument(help="principal, credential, certificate, grant, exception or session."),
    ],
    target: Annotated[
        str,
        typer.Argument(
            help='The principal (User::"alice"), a JWT id, a certificate serial (hex), or a '
            "grant, exception or break-glass session id."
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why: kept with the revocation.")] = "",
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a principal, a credential, a certificate, a grant, an exception or a break-glass
    session on the running server; every replica stops honouring it within about a second."""
    kinds = ("principal", "credential", "certificate", "grant", "exception", "session")
    if kind not in kinds:
        raise CliError(f"KIND must be one of {', '.join(kinds)}")
    if not reason.strip():
        raise CliError("--reason is required: it is what the audit trail shows")
    settings = root_context(ctx).settings()
    body = {"kind": kind, "target": target, "reason": reason}
    result = http("POST", server_url(settings, url), "/v1/revocations", admin_token(settings), body)
    emit(result.json(), as_json, _print_revoked)


def _print_revoked(document: dict[str, Any]) -> None:
    already = "" if document.get("created") else " (it already was)"
    out.print(f"[green]✓[/] revoked {document['kind']} {document['target']}{already}")


def revocations_cmd(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the revocations in force."""
    settings = root_context(ctx).settings()
    emit(admin(settings, "GET", "/v1/revocations", url), as_json, _print_revocations)


def _print_revocations(document: dict[str, Any]) -> None:
    table = Table("kind", "target", "reason", "by", "since")
    for item in document["revocations"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(item["created_at"]))
        table.add_row(item["kind"], item["target"], item["reason"], item["actor"], since)
    out.print(table)
    out.print(f"epoch {document['epoch']}")
