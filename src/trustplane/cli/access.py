"""`trustplane access|break-glass|exceptions …`: JIT access, break-glass and the exception
register, through the running server's admin API.

Who you are is the admin credential the CLI sends: `TRUSTPLANE_CLI__ADMIN_TOKEN` (your OIDC token,
or a JWT-SVID) or, for first setup, the bootstrap token in the state directory.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from trustplane.cli.common import (
    CliError,
    JsonOpt,
    UrlOpt,
    admin,
    emit,
    id_table,
    out,
    resolve_admin_id,
    root_context,
    when,
)

access_app: typer.Typer = typer.Typer(
    help="Just-in-time access: request, approve, revoke.", no_args_is_help=True
)
break_glass_app: typer.Typer = typer.Typer(
    help="Emergency access: short, loud, reviewed by someone else.", no_args_is_help=True
)
exceptions_app: typer.Typer = typer.Typer(
    help="The exception register: temporary, approved exceptions to forbid policies.",
    no_args_is_help=True,
)


# Where each kind of id is listed, so any unique prefix of one can be typed.
_LISTS: dict[str, tuple[str, Any]] = {
    "request": ("/v1/access/requests", lambda d: (r["id"] for r in d["requests"])),
    "grant": ("/v1/access/grants", lambda d: (g["id"] for g in d["grants"])),
    "break-glass session": (
        "/v1/break-glass",
        lambda d: (i["session"]["id"] for i in d["sessions"]),
    ),
    "exception": ("/v1/exceptions", lambda d: (e["id"] for e in d["exceptions"])),
}


def _id(ctx: typer.Context, what: str, typed: str, url: str | None) -> str:
    """The whole id that `typed` (the id or a unique prefix of it) names."""
    path, ids = _LISTS[what]
    return resolve_admin_id(root_context(ctx).settings(), url, typed, what, path, ids)


def _call(ctx: typer.Context, method: str, path: str, url: str | None, body: Any = None) -> Any:
    return admin(root_context(ctx).settings(), method, path, url, body)


def _revoke(
    ctx: typer.Context, path: str, what: str, reason: str, url: str | None, as_json: bool
) -> None:
    """End a grant or an exception now; saying so when it already was (revoking is
    idempotent)."""
    document = _call(ctx, "POST", path, url, {"reason": _required(reason, "--reason")})

    def render(document: Any) -> None:
        already = "" if document.get("created") else " (it already was)"
        out.print(f"[green]✓[/] {what} revoked{already}")

    emit(document, as_json, render)


def _required(value: str, option: str) -> str:
    if not value.strip():
        raise CliError(f"{option} is required: it is what the audit trail shows")
    return value


def _entity(entity: dict[str, Any] | None) -> str:
    entity = entity or {}
    return f"{entity.get('type')}::{entity.get('id')}"


def _left(until: float | None) -> str:
    return "-" if until is None else when(until)


# -- access -----------------------------------------------------------------------------------


@access_app.command("request")
def access_request(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help='The role to hold, e.g. Role::"sre".')],
    duration: Annotated[str, typer.Option(help="How long, e.g. 2h (within the role's cap).")],
    reason: Annotated[str, typer.Option(help="Why you need it.")] = "",
    ticket: Annotated[str, typer.Option(help="The ticket or incident it is for.")] = "",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask for a role for a while; approvers are notified."""
    body = {"role": role, "duration": duration, "reason": reason, "ticket": ticket}
    document = _call(ctx, "POST", "/v1/access/requests", url, body)

    def render(document: Any) -> None:
        needed, lapses = document["approvals_required"], when(document["expires_at"])
        out.print(
            f"[green]✓[/] request {document['id']} for {document['role']} is pending "
            f"({needed} approval(s) needed, lapses {lapses})"
        )

    emit(document, as_json, render)


@access_app.command("approve")
def access_approve(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request's id, or a unique prefix of it.")],
    comment: Annotated[str, typer.Option(help="Kept with your approval.")] = "",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a request; the grant starts once enough distinct people have approved."""
    request_id = _id(ctx, "request", request_id, url)
    path = f"/v1/access/requests/{request_id}/approve"
    document = _call(ctx, "POST", path, url, {"comment": comment})

    def render(document: Any) -> None:
        grant = document.get("grant")
        if grant:
            out.print(
                f"[green]✓[/] granted: {grant['principal']} holds {grant['role']} until "
                f"{when(grant['expires_at'])} (grant {grant['id']})"
            )
        else:
            request = document["request"]
            count = sum(1 for a in request["approvals"] if a["verdict"] == "approve")
            out.print(f"[green]✓[/] approved ({count} of {request['approvals_required']})")

    emit(document, as_json, render)


@access_app.command("deny")
def access_deny(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="The request's id, or a unique prefix of it.")],
    reason: Annotated[str, typer.Option(help="Why not.")] = "",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deny a request."""
    request_id = _id(ctx, "request", request_id, url)
    body = {"reason": _required(reason, "--reason")}
    document = _call(ctx, "POST", f"/v1/access/requests/{request_id}/deny", url, body)

    def render(document: Any) -> None:
        out.print(f"[green]✓[/] request {request_id} denied")

    emit(document, as_json, render)


@access_app.command("revoke")
def access_revoke(
    ctx: typer.Context,
    grant_id: Annotated[str, typer.Argument(help="The grant's id, or a unique prefix of it.")],
    reason: Annotated[str, typer.Option(help="Why it ends now.")] = "",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """End a grant now, on every replica (idempotent)."""
    grant_id = _id(ctx, "grant", grant_id, url)
    _revoke(ctx, f"/v1/access/grants/{grant_id}/revoke", f"grant {grant_id}", reason, url, as_json)


@access_app.command("list")
def access_list(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="Requests in this state: pending, approved, denied, expired.")
    ] = None,
    grants: Annotated[bool, typer.Option("--grants", help="List grants instead.")] = False,
    active: Annotated[bool, typer.Option("--active", help="Only grants in force.")] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Access requests (or grants with --grants)."""
    if grants or active:
        path = "/v1/access/grants" + ("?active=true" if active else "")
        emit(_call(ctx, "GET", path, url), as_json, _print_grants)
        return
    path = "/v1/access/requests" + (f"?status={status}" if status else "")
    document = _call(ctx, "GET", path, url)

    def render(document: Any) -> None:
        table = id_table("request", "principal", "role", "status", "approvals", "asked", "reason")
        for r in document["requests"]:
            count = sum(1 for a in r["approvals"] if a["verdict"] == "approve")
            table.add_row(
                r["id"],
                r["principal"],
                r["role"],
                r["status"],
                f"{count}/{r['approvals_required']}",
                when(r["created_at"]),
                r["reason"],
            )
        out.print(table)

    emit(document, as_json, render)


def _print_grants(document: Any) -> None:
    table = id_table("grant", "kind", "principal", "role", "until", "state")
    for g in document["grants"]:
        state = "active" if g["active"] else ("revoked" if g["revoked_at"] else "ended")
        table.add_row(g["id"], g["kind"], g["principal"], g["role"], when(g["expires_at"]), state)
    out.print(table)


@access_app.command("activity")
def access_activity(
    ctx: typer.Context,
    grant_id: Annotated[str, typer.Argument(help="The grant's id, or a unique prefix of it.")],
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every decision made while the grant applied (from the ledger)."""
    grant_id = _id(ctx, "grant", grant_id, url)
    document = _call(ctx, "GET", f"/v1/access/grants/{grant_id}/activity", url)

    def render(document: Any) -> None:
        grant = document["grant"]
        out.print(
            f"grant {grant['id']}: {grant['principal']} as {grant['role']} "
            f"{when(grant['starts_at'])} → {when(grant['expires_at'])}"
        )
        table = Table("time", "action", "resource", "decision", "policies")
        for row in document["decisions"]:
            request = row.get("request", {})
            table.add_row(
                row.get("time", "")[:19],
                str(request.get("action", {}).get("id", "")),
                _entity(request.get("resource")),
                row.get("decision", ""),
                ", ".join(row.get("reasons", [])),
            )
        out.print(table)
        out.print(f"{len(document['decisions'])} decision(s)")

    emit(document, as_json, render)


# -- break-glass ------------------------------------------------------------------------------


@break_glass_app.command("open")
def break_glass_open(
    ctx: typer.Context,
    profile: Annotated[str, typer.Argument(help="A break-glass profile of access.yaml.")],
    reason: Annotated[str, typer.Option(help="The incident.")] = "",
    duration: Annotated[
        str | None, typer.Option(help="Shorter than the profile's cap, e.g. 15m.")
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Break the glass: access at once, announced everywhere, reviewed afterwards."""
    body: dict[str, Any] = {"profile": profile, "reason": _required(reason, "--reason")}
    if duration:
        body["duration"] = duration
    document = _call(ctx, "POST", "/v1/break-glass", url, body)

    def render(document: Any) -> None:
        session = document["session"]
        out.print(
            f"[bold red]BREAK-GLASS[/] {profile}: {session['principal']} holds {session['role']} "
            f"until {when(session['expires_at'])} (session {session['id']}); review due "
            f"{when(document['review']['due_at'])}"
        )

    emit(document, as_json, render)


@break_glass_app.command("review")
def break_glass_review(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(help="The session's id, or a unique prefix of it.")],
    notes: Annotated[str, typer.Option(help="What happened and what was done.")] = "",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Close the post-incident review (never by whoever opened the session)."""
    session_id = _id(ctx, "break-glass session", session_id, url)
    body = {"notes": _required(notes, "--notes")}
    document = _call(ctx, "POST", f"/v1/break-glass/{session_id}/review", url, body)

    def render(document: Any) -> None:
        out.print(f"[green]✓[/] review of {session_id} closed")

    emit(document, as_json, render)


@break_glass_app.command("list")
def break_glass_list(
    ctx: typer.Context,
    overdue: Annotated[bool, typer.Option("--overdue", help="Only overdue reviews.")] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Break-glass sessions and their reviews; the count of overdue reviews."""
    document = _call(ctx, "GET", "/v1/break-glass" + ("?overdue=true" if overdue else ""), url)

    def render(document: Any) -> None:
        table = id_table("session", "profile", "opened by", "opened", "review due", "review")
        for item in document["sessions"]:
            s, r = item["session"], item["review"]
            state = (
                f"closed by {r['closed_by']}"
                if r["closed_at"]
                else ("[red]OVERDUE[/]" if r["overdue"] else "open")
            )
            table.add_row(
                s["id"],
                s["profile"],
                r["opened_by"],
                when(s["starts_at"]),
                when(r["due_at"]),
                state,
            )
        out.print(table)
        out.print(f"{document['overdue']} overdue review(s)")

    emit(document, as_json, render)


# -- exceptions -------------------------------------------------------------------------------


@exceptions_app.command("request")
def exceptions_request(
    ctx: typer.Context,
    policy: Annotated[str, typer.Argument(help="The forbid policy's @id.")],
    principal: Annotated[str, typer.Option(help='Who it is for, e.g. Service::"billing".')],
    duration: Annotated[str, typer.Option(help="How long once approved, e.g. 30d (capped).")],
    owner: Annotated[str, typer.Option(help="Who answers for it.")] = "",
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    ticket: Annotated[str, typer.Option(help="The tracking ticket.")] = "",
    action: Annotated[str | None, typer.Option(help="Only this action.")] = None,
    resource: Annotated[str | None, typer.Option(help="Only this resource.")] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask for a temporary exception to a forbid policy; it applies once approved."""
    body = {
        "policy": policy,
        "principal": principal,
        "action": action,
        "resource": resource,
        "owner": _required(owner, "--owner"),
        "reason": _required(reason, "--reason"),
        "ticket": _required(ticket, "--ticket"),
        "duration": duration,
    }
    document = _call(ctx, "POST", "/v1/exceptions", url, body)

    def render(document: Any) -> None:
        out.print(f"[green]✓[/] exception {document['id']} to {policy} is pending approval")

    emit(document, as_json, render)


@exceptions_app.command("approve")
def exceptions_approve(
    ctx: typer.Context,
    exception_id: Annotated[
        str, typer.Argument(help="The exception's id, or a unique prefix of it.")
    ],
    comment: Annotated[str, typer.Option(help="Kept with your approval.")] = "",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve an exception; it applies from now until its expiry."""
    exception_id = _id(ctx, "exception", exception_id, url)
    path = f"/v1/exceptions/{exception_id}/approve"
    document = _call(ctx, "POST", path, url, {"comment": comment})

    def render(document: Any) -> None:
        if document["status"] == "approved":
            until = _left(document["expires_at"])
            out.print(f"[green]✓[/] exception {exception_id} applies until {until}")
        else:
            out.print(f"[green]✓[/] approval recorded ({document['approvals_required']} needed)")

    emit(document, as_json, render)


@exceptions_app.command("revoke")
def exceptions_revoke(
    ctx: typer.Context,
    exception_id: Annotated[
        str, typer.Argument(help="The exception's id, or a unique prefix of it.")
    ],
    reason: Annotated[str, typer.Option(help="Why it ends now.")] = "",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """End an exception now (idempotent)."""
    exception_id = _id(ctx, "exception", exception_id, url)
    path = f"/v1/exceptions/{exception_id}/revoke"
    _revoke(ctx, path, f"exception {exception_id}", reason, url, as_json)


@exceptions_app.command("list")
def exceptions_list(
    ctx: typer.Context,
    expiring: Annotated[
        str | None, typer.Option(help="Only exceptions in force that end within, e.g. 7d.")
    ] = None,
    status: Annotated[str | None, typer.Option(help="pending, approved or denied.")] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The exception register."""
    query = "&".join(
        f"{k}={v}" for k, v in (("expiring", expiring), ("status", status)) if v is not None
    )
    document = _call(ctx, "GET", "/v1/exceptions" + (f"?{query}" if query else ""), url)

    def render(document: Any) -> None:
        table = id_table("exception", "policy", "principal", "owner", "ticket", "status", "until")
        for e in document["exceptions"]:
            state = "revoked" if e["revoked_at"] else ("active" if e["active"] else e["status"])
            table.add_row(
                e["id"],
                e["policy_id"],
                e["principal"],
                e["owner"],
                e["ticket"],
                state,
                _left(e["expires_at"]),
            )
        out.print(table)

    emit(document, as_json, render)
