"""`trustplane decisions`: recorded decisions with their reason codes and determining policies,
from the local store or from a server (`--url`, through the admin API), with the same filters;
and the decision table that `audit tail` shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from trustplane.cli.common import (
    CliError,
    JsonOpt,
    admin,
    emit,
    out,
    root_context,
    store_engine,
)

if TYPE_CHECKING:
    from trustplane.telemetry.query import DecisionQuery

REMOTE_LIMIT = 1000  # what the admin API answers at most per query


def decisions_cmd(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="From this time: RFC 3339 (2026-12-03T10:00:00Z) or 15m, 2h, 7d ago."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Before this time (same forms as --since).")
    ] = None,
    principal: Annotated[
        str | None, typer.Option(help='Principal: User::"alice", or an id of any type.')
    ] = None,
    action: Annotated[
        str | None, typer.Option(help='Action: Action::"view", or an id such as payments:refund.')
    ] = None,
    resource: Annotated[
        str | None, typer.Option(help='Resource: Api::"payments.refund", or an id of any type.')
    ] = None,
    decision: Annotated[str | None, typer.Option(help="allow or deny.")] = None,
    policy: Annotated[str | None, typer.Option(help="Determining or shadow policy id.")] = None,
    kind: Annotated[str | None, typer.Option(help="decision or admin (default: both).")] = None,
    shadow_mismatch: Annotated[
        bool, typer.Option("--shadow-mismatch", help="Only decisions whose shadow answer differs.")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Ask this server's admin API instead of the local store."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recorded decisions, newest first, with each one's reason code and determining policies:
    from the local store, or from a server with --url."""
    query = _query(
        since,
        until,
        principal,
        action,
        resource,
        decision,
        policy,
        kind,
        shadow_mismatch,
        limit,
        remote=url is not None,
    )
    settings = root_context(ctx).settings()
    if url is not None:
        from urllib.parse import urlencode

        document = admin(settings, "GET", "/v1/decisions?" + urlencode(query.as_params()), url)
        rows = list(document["decisions"])
    else:
        from trustplane.telemetry.ledger import query_decisions

        engine = store_engine(settings, remote=True)
        try:
            rows = query_decisions(engine, query)
        finally:
            engine.dispose()
    print_records(rows, as_json)


def _query(
    since: str | None,
    until: str | None,
    principal: str | None,
    action: str | None,
    resource: str | None,
    decision: str | None,
    policy: str | None,
    kind: str | None,
    shadow_mismatch: bool,
    limit: int,
    *,
    remote: bool,
) -> DecisionQuery:
    """The options as a query, each bad value a CLI error naming its option."""
    from trustplane.telemetry.query import (
        DecisionQuery,
        QueryError,
        entity_filter,
        parse_time,
    )

    highest = REMOTE_LIMIT if remote else 10_000
    try:
        if not 1 <= limit <= highest:
            where = " with --url" if remote else ""
            raise QueryError("--limit", f"must be between 1 and {highest}{where}")
        return DecisionQuery(
            since=None if since is None else parse_time(since, "--since"),
            until=None if until is None else parse_time(until, "--until"),
            principal=None if principal is None else entity_filter(principal, "--principal"),
            action=None if action is None else entity_filter(action, "--action"),
            resource=None if resource is None else entity_filter(resource, "--resource"),
            decision=decision,
            policy=policy or None,
            kind=kind,
            shadow_mismatch=True if shadow_mismatch else None,
            limit=limit,
        ).check(lambda field: f"--{field}")
    except QueryError as exc:
        raise CliError(str(exc)) from None


def print_records(rows: list[dict[str, Any]], as_json: bool) -> None:
    """Ledger records as a table, or as JSON Lines with --json."""
    emit(rows, as_json, _records_table, lines=True)


def _records_table(rows: list[dict[str, Any]]) -> None:
    """One row a record, readable at 80 columns: the full decision id (folded in two, so any
    prefix of its first line can be typed back), when, the request (principal, action and
    resource on their own lines), the answer (and a differing shadow answer), and why: the
    reason code over the determining policies, and the risk score's summary when it is not 0."""
    table = Table()
    table.add_column("decision", overflow="fold", width=18)
    table.add_column("time")
    table.add_column("request", overflow="fold", ratio=1)
    table.add_column("answer")
    table.add_column("reason", overflow="fold", min_width=20, ratio=1)
    for row in rows:
        request = row.get("request") or {}
        if row.get("kind") == "admin":  # who, which admin action, on what
            asked = [row.get("actor", ""), row.get("action", ""), row.get("target", "")]
        else:
            asked = [
                _ref(request.get("principal")),
                str((request.get("action") or {}).get("id", "")),
                _ref(request.get("resource")),
            ]
        effect, shadow = row.get("decision", ""), row.get("shadow", "")
        colour = "green" if effect == "allow" else "red"
        answer = f"[{colour}]{effect}[/]"
        if shadow and shadow != effect:
            answer += f"\n[yellow]shadow\n{shadow}[/]"
        why = [escape(str(row.get("reason_code", "")))]
        why += [escape(p) for p in row.get("determining_policies") or []]
        why += [f"[yellow]would change: {escape(p)}[/]" for p in row.get("would_change") or []]
        trust = row.get("trust")
        if isinstance(trust, dict) and trust.get("score"):  # the trust plane's explanation
            why.append(f"[magenta]{escape(str(trust.get('summary', '')))}[/]")
        moment = str(row.get("time", ""))
        table.add_row(
            str(row.get("decision_id") or row["seq"]),
            f"{moment[:10]}\n{moment[11:19]}",
            "\n".join(escape(str(part)) for part in asked if part),
            answer,
            "\n".join(why),
        )
    out.print(table)


def _ref(entity: dict[str, Any] | None) -> str:
    return "" if not entity else f"{entity.get('type')}::{entity.get('id')}"
