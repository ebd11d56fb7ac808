"""`trustplane scorecard`: the month's Zero Trust figures, each with its target, verdict and
the query that reproduces it, from the local store or from a server (`--url`)."""

from __future__ import annotations

from contextlib import nullcontext
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

import typer
from rich.markup import escape
from rich.table import Table

from trustplane.cli.common import CliError, UrlOpt, admin, out, root_context

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from trustplane.config import Settings
    from trustplane.decision.policy_bundle import Bundle

_COLOURS = {"met": "green", "not met": "red", "not measured": "dim", "info": "cyan"}


class Format(StrEnum):
    table = "table"
    json = "json"
    md = "md"
    html = "html"


def scorecard_cmd(
    ctx: typer.Context,
    period: Annotated[
        str | None, typer.Option(help="The month, YYYY-MM (default: this month so far).")
    ] = None,
    shape: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead.")
    ] = None,
    save: Annotated[
        bool, typer.Option("--save", help="Store it as the month's snapshot (for trends).")
    ] = False,
    url: UrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
) -> None:
    """The Zero Trust scorecard of a month, computed from the store and the ledger: standing
    privilege, MFA, attribution, false positives, time to revoke, friction, the SLIs M1–M10,
    exceptions and reviews, and a CISA ZTMM v2 stage per pillar. A figure whose inputs do not
    exist says "not measured" and what would measure it."""
    shape = Format.json if as_json else shape
    settings = root_context(ctx).settings()
    if url is not None:
        text = _remote(settings, url, period, shape, save)
    else:
        text = _local(settings, period, shape, save)
    if output is not None:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        out.print(f"wrote {output}", highlight=False)
    elif text:
        typer.echo(text, nl=not text.endswith("\n"))


def _remote(settings: Settings, url: str, period: str | None, shape: Format, save: bool) -> str:
    import json

    query = {} if period is None else {"period": period}
    if save:
        admin(settings, "POST", "/v1/scorecard/snapshots?" + urlencode(query), url)
    if shape in (Format.md, Format.html):
        from trustplane.cli.common import admin_token, http, server_url

        path = "/v1/scorecard?" + urlencode({**query, "format": shape.value})
        return http("GET", server_url(settings, url), path, admin_token(settings)).text
    card = admin(settings, "GET", "/v1/scorecard?" + urlencode(query), url)
    if shape is Format.json:
        return json.dumps(card, indent=2, sort_keys=True)
    _print_table(card)
    return ""


def _local(settings: Settings, period: str | None, shape: Format, save: bool) -> str:
    import json

    from trustplane.cli.common import store_engine
    from trustplane.outcomes.report import render_html, render_markdown
    from trustplane.outcomes.scorecard import ScorecardError, compute_scorecard
    from trustplane.outcomes.snapshots import load_snapshots, save_snapshot

    engine = store_engine(settings, remote=True)
    busy = out.status("computing the scorecard…") if shape is Format.table else nullcontext()
    try:
        bundle = _active_bundle(settings, engine)
        with busy:
            card = compute_scorecard(engine, bundle, period)
        if save:
            save_snapshot(engine, card)
        if shape is Format.html:
            return render_html(card, load_snapshots(engine))
    except ScorecardError as exc:
        raise CliError(str(exc)) from None
    finally:
        engine.dispose()
    if shape is Format.md:
        return render_markdown(card)
    if shape is Format.json:
        return json.dumps(card.as_dict(), indent=2, sort_keys=True)
    _print_table(card.as_dict())
    return ""


def _active_bundle(settings: Settings, engine: Engine) -> Bundle | None:
    """The bundle the store last activated, compiled with every plane's files; None when
    nothing was activated. Its tests are not run again: it passed them to be activated."""
    from trustplane.cli.common import load_options
    from trustplane.decision.policy_bundle import BundleError, BundleSource, compile_bundle
    from trustplane.store.policy_revisions import BundleStore

    revisions = BundleStore(engine)
    history = revisions.history(limit=1)
    if not history:
        return None
    files = revisions.load_files(history[0].revision)
    if files is None:
        return None
    try:
        return compile_bundle(
            BundleSource(files), extra_files=load_options(settings, run_tests=False).extra_files
        )
    except BundleError as exc:
        raise CliError(
            f"the active revision {history[0].revision} no longer compiles: {exc}"
        ) from None


def _print_table(card: dict[str, Any]) -> None:
    out.print(f"[bold]Zero Trust scorecard {escape(card['period'])}[/]")
    if card.get("revision"):
        out.print(f"revision {card['revision']}", highlight=False)
    table = Table("figure", "value", "target", "verdict")
    table.columns[0].ratio = 1
    table.columns[0].overflow = "fold"
    for figure in card["figures"]:
        colour = _COLOURS.get(figure["verdict"], "white")
        table.add_row(
            escape(figure["title"]),
            escape(figure["shown"]),
            escape(figure["target"]),
            f"[{colour}]{escape(figure['verdict'])}[/]",
        )
    out.print(table)
    stages = Table("ZTMM v2 pillar", "stage", "evidence")
    stages.columns[2].ratio = 1
    stages.columns[2].overflow = "fold"
    for stage in card["stages"]:
        stages.add_row(
            escape(stage["pillar"]), escape(stage["stage"]), escape("; ".join(stage["evidence"]))
        )
    out.print(stages)
    unmeasured = [f for f in card["figures"] if f["verdict"] == "not measured"]
    for figure in unmeasured:
        hint = figure.get("to_measure") or figure["evidence"]
        out.print(
            f"[dim]not measured: {escape(figure['title'])} — {escape(hint)}[/]", soft_wrap=False
        )
