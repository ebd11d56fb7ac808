"""`trustplane revoke`, `trustplane revoke lift` and `trustplane revocations`: revoke on the
running server (until lifted, or until an expiry), lift a revocation, list them."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustplane.cli.common import (
    CliError,
    JsonOpt,
    admin,
    admin_token,
    emit,
    err,
    http,
    out,
    resolve_admin_id,
    root_context,
    server_url,
    when,
)

KINDS = ("principal", "credential", "certificate", "grant", "exception", "session")


def revoke_cmd(
    ctx: typer.Context,
    kind: Annotated[
        str,
        typer.Argument(
            help="principal, credential, certificate, grant, exception or session; or lift, "
            "to lift the revocation TARGET names (its id or a unique prefix of it)."
        ),
    ],
    target: Annotated[
        str,
        typer.Argument(
            help='The principal (User::"alice"), a JWT id, a certificate serial (hex), or a '
            "grant, exception or break-glass session id; after lift, a revocation id."
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why: kept with the revocation.")] = "",
    expires: Annotated[
        str | None,
        typer.Option(
            help="End the revocation by itself after a duration (30m, 2h, 7d) or at an RFC "
            "3339 time (2030-01-31T18:00:00Z). Principals, credentials, certificates."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Revoke a principal no bundle entity or inventory identity knows."
        ),
    ] = False,
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a principal, a credential, a certificate, a grant, an exception or a break-glass
    session on the running server; every replica stops honouring it within about a second.
    `trustplane revoke lift ID --reason R` lifts a revocation."""
    if kind != "lift" and kind not in KINDS:
        raise CliError(f"KIND must be one of {', '.join(KINDS)}, or lift")
    if not reason.strip():
        raise CliError("--reason is required: it is what the audit trail shows")
    settings = root_context(ctx).settings()
    base, token = server_url(settings, url), admin_token(settings)
    if kind == "lift":
        if expires is not None or force:
            raise CliError("--expires and --force apply to a revocation, not to lifting one")
        revocation_id = resolve_admin_id(
            settings,
            url,
            target,
            "revocation",
            "/v1/revocations?ended=true",
            lambda doc: [r["id"] for r in doc["revocations"]],
        )
        path = f"/v1/revocations/{revocation_id}/lift"
        lifted = http("POST", base, path, token, {"reason": reason})
        emit(lifted.json(), as_json, _print_lifted)
        return
    body: dict[str, Any] = {"kind": kind, "target": target, "reason": reason}
    if expires is not None:
        body["expires"] = expires
    if force:
        body["force"] = True
    result = http("POST", base, "/v1/revocations", token, body, accept=(409,))
    if result.status_code == 409:
        problem = result.json()
        if not str(problem.get("type", "")).endswith("unknown-principal"):
            raise CliError(f"POST /v1/revocations: 409: {problem.get('detail', result.text)}")
        err.print(
            f"[yellow]warning:[/] principal {target.strip()} is not known: no entity of the "
            "active bundle and no identity in the inventory has that name",
            highlight=False,
            markup=True,
        )
        raise CliError("nothing was revoked: check the spelling, or revoke it anyway with --force")
    emit(result.json(), as_json, _print_revoked)


def _print_revoked(document: dict[str, Any]) -> None:
    already = "" if document.get("created") else " (it already was)"
    until = ""
    if document.get("expires_at"):
        until = f" until {when(document['expires_at'])} UTC"
    out.print(
        f"[green]✓[/] revoked {document['kind']} {document['target']}{until}{already}",
        highlight=False,
    )
    if document.get("kind") in ("principal", "credential", "certificate"):
        out.print(f"  revocation {document['id']}", highlight=False)


def _print_lifted(document: dict[str, Any]) -> None:
    already = "" if document.get("lifted") else " (it already was)"
    out.print(
        f"[green]✓[/] lifted the revocation of {document['kind']} {document['target']}{already}",
        highlight=False,
    )
    out.print(f"  revocation {document['id']}", highlight=False)


def revocations_cmd(
    ctx: typer.Context,
    show_all: Annotated[
        bool, typer.Option("--all", help="Lifted and expired revocations too.")
    ] = False,
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the revocations in force (with --all, lifted and expired ones too)."""
    settings = root_context(ctx).settings()
    path = "/v1/revocations?ended=true" if show_all else "/v1/revocations"
    emit(admin(settings, "GET", path, url), as_json, _print_revocations)


def _print_revocations(document: dict[str, Any]) -> None:
    """A few short lines a revocation, so the whole id (what `revoke lift` is given) and the
    reason stay readable at 80 columns: the id and what is revoked, why, who and until when."""
    items = document["revocations"]
    if not items:
        out.print("no revocations", highlight=False)
    for item in items:
        lines = [f"{item['id']}  {item['kind']} {item['target']}", f"  {item['reason']}"]
        since = f"  by {item['actor']} {when(item['created_at'])}"
        state = item.get("state", "in-force")
        if state == "expired":
            lines.append(f"{since}, expired {when(item['expires_at'])}")
        elif item.get("expires_at"):
            lines.append(f"{since}, until {when(item['expires_at'])}")
        else:
            lines.append(f"{since}, until lifted")
        if state == "lifted":
            lines.append(f"  lifted by {item.get('ended_by')} {when(item['ended_at'])}")
            lines.append(f"  {item.get('end_reason') or ''}")
        for line in lines:
            out.print(line, highlight=False, markup=False)
    out.print(f"epoch {document['epoch']}", highlight=False)
