"""`trustplane trust explain|signals`: the trust plane's work read back from the ledger — one
decision's score signal by signal, and what fired over a period, for whom and how often —
from the local store or from a server (`--url`, through the admin API)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

import typer
from rich.markup import escape
from rich.table import Table

from trustplane.cli.common import CliError, JsonOpt, admin, emit, out, root_context, store_engine

trust_app = typer.Typer(
    help="Explain risk scores and summarise which trust signals fired.", no_args_is_help=True
)

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Ask this server's admin API instead of the local store."),
]


@trust_app.command("explain")
def explain_cmd(
    ctx: typer.Context,
    decision_id: Annotated[str, typer.Argument(help="A decision id, or a unique prefix of one.")],
    url: UrlOption = None,
    as_json: JsonOpt = False,
) -> None:
    """How a decision's risk score was computed: each signal with its value, weight,
    contribution, source, and whether it was enforced or only observed."""
    settings = root_context(ctx).settings()
    if url is not None:
        document = admin(settings, "GET", f"/v1/trust/decisions/{quote(decision_id, safe='')}", url)
    else:
        from trustplane.trust.report import ReportError, explain, find_decision

        engine = store_engine(settings, remote=True)
        try:
            document = explain(find_decision(engine, decision_id))
        except ReportError as exc:
            raise CliError(str(exc)) from None
        finally:
            engine.dispose()
    emit(document, as_json, _print_explanation)


def _print_explanation(doc: dict[str, Any]) -> None:
    out.print(
        f"{doc['decision_id']}  {doc['time']}  {doc['decision']}\n"
        f"  {doc['principal']} {doc['action']} {doc['resource']}",
        highlight=False,
        markup=False,
    )
    trust = doc.get("trust")
    if trust is None:
        out.print(f"  {doc.get('note', 'no trust assessment')}", highlight=False, markup=False)
        return
    out.print(
        f"  risk {trust['score']} ({trust['level']}): {trust['summary']}",
        highlight=False,
        markup=False,
    )
    table = Table("signal", "value", "weight", "counts", "mode", "source")
    table.add_column("why", overflow="fold", ratio=1)
    for s in trust["signals"]:
        value = s["value"]
        table.add_row(
            escape(str(s["name"])),
            f"{value:.2f}" if isinstance(value, int | float) else str(value),
            str(s["weight"]),
            f"{s['contribution']:+d}" if s["mode"] == "enforced" else f"({s['points']:+d})",
            s["mode"],
            escape(str(s["source"])),
            escape(str(s.get("error") or s["explanation"])),
        )
    if trust["signals"]:
        out.print(table)
    if trust.get("quiet"):
        out.print(f"  0 points: {', '.join(trust['quiet'])}", highlight=False, markup=False)
    if trust.get("ignored"):
        out.print(f"  ignored: {trust['ignored']}", highlight=False, markup=False)


@trust_app.command("signals")
def signals_cmd(
    ctx: typer.Context,
    since: Annotated[
        str, typer.Option(help="From this time: RFC 3339 or 15m, 2h, 7d ago.")
    ] = "24h",
    until: Annotated[str | None, typer.Option(help="Before this time (same forms).")] = None,
    url: UrlOption = None,
    as_json: JsonOpt = False,
) -> None:
    """Which signals fired (moved a score, would have in observe mode, or failed) in the
    decisions recorded since --since: how often, how many of those decisions were denied, and
    for whom most often."""
    settings = root_context(ctx).settings()
    if url is not None:
        params = {"since": since} | ({"until": until} if until else {})
        document = admin(settings, "GET", "/v1/trust/signals?" + urlencode(params), url)
    else:
        from trustplane.telemetry.query import QueryError, parse_time
        from trustplane.trust.report import summarise

        try:
            start = parse_time(since, "--since")
            end = parse_time(until, "--until") if until else None
        except QueryError as exc:
            raise CliError(str(exc)) from None
        engine = store_engine(settings, remote=True)
        try:
            document = summarise(engine, start, end)
        finally:
            engine.dispose()
    emit(document, as_json, _print_summary)


def _print_summary(doc: dict[str, Any]) -> None:
    levels = ", ".join(f"{k} {v}" for k, v in sorted(doc["levels"].items()))
    out.print(
        f"{doc['decisions']} decisions, {doc['scored']} scored ({levels or 'none'})"
        + ("" if doc["complete"] else " — stopped early: narrow --since"),
        highlight=False,
        markup=False,
    )
    if not doc["signals"]:
        out.print("no signal fired", highlight=False)
        return
    table = Table("signal", "fired", "enforced", "observed", "denied", "errors", "principals")
    table.add_column("most often for", overflow="fold", ratio=1)
    for row in doc["signals"]:
        top = ", ".join(f"{t['principal']} ×{t['count']}" for t in row["top"])
        table.add_row(
            escape(row["signal"]),
            str(row["fired"]),
            str(row["enforced"]),
            str(row["observed"]),
            str(row["denied"]),
            str(row["errors"]),
            str(row["principals"]),
            escape(top),
        )
    out.print(table)
