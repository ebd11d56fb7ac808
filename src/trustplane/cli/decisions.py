"""`trustplane decisions`: query recent decisions from the store, and the decision table that
`audit tail` shares."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from trustplane.cli.common import CliError, JsonOpt, emit, out, root_context, store_engine


def decisions_cmd(
    ctx: typer.Context,
    principal: Annotated[str | None, typer.Option(help='Principal, e.g. User::"alice".')] = None,
    decision: Annotated[str | None, typer.Option(help="allow or deny.")] = None,
    policy: Annotated[str | None, typer.Option(help="Determining or shadow policy id.")] = None,
    shadow_mismatch: Annotated[
        bool, typer.Option("--shadow-mismatch", help="Only decisions whose shadow answer differs.")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Query recent decisions from the store."""
    from trustplane.decision.requests import RequestError, parse_entity
    from trustplane.telemetry.ledger import DecisionQuery, query_decisions

    if decision not in (None, "allow", "deny"):
        raise CliError("--decision must be allow or deny")
    settings = root_context(ctx).settings()
    engine = store_engine(settings)
    principal_key = None
    if principal:
        try:
            principal_key = str(parse_entity(principal, "--principal"))
        except RequestError as exc:
            raise CliError(str(exc)) from None
    rows = query_decisions(
        engine,
        DecisionQuery(
            principal=principal_key,
            decision=decision,
            policy=policy,
            shadow_mismatch=True if shadow_mismatch else None,
            limit=limit,
        ),
    )
    engine.dispose()
    print_records(rows, as_json)


def print_records(rows: list[dict[str, Any]], as_json: bool) -> None:
    """Decision records as a table, or as JSON Lines with --json."""
    emit(rows, as_json, _records_table, lines=True)


def _records_table(rows: list[dict[str, Any]]) -> None:
    table = Table("seq", "time", "principal", "action", "resource", "decision", "shadow")
    table.add_column("policies", overflow="fold")
    for row in rows:
        request = row.get("request", {})
        shadow = row.get("shadow", "")
        shadow_cell = shadow if shadow == row.get("decision") else f"[yellow]{shadow}[/]"
        colour = "green" if row.get("decision") == "allow" else "red"
        table.add_row(
            str(row["seq"]),
            row.get("time", "")[:23],
            _ref(request.get("principal")),
            str(request.get("action", {}).get("id", "")),
            _ref(request.get("resource")),
            f"[{colour}]{row.get('decision')}[/]",
            shadow_cell,
            ", ".join(row.get("reasons", []) + row.get("would_change", [])),
        )
    out.print(table)


def _ref(entity: dict[str, Any] | None) -> str:
    return "" if not entity else f"{entity.get('type')}::{entity.get('id')}"
