"""`trustplane rollout queue|label|status`: the evidence for moving a policy from observe to
enforce, read and written through the running server's admin API."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from trustplane.cli.common import CliError, JsonOpt, UrlOpt, admin, emit, out, root_context

GATE_FAILS = 1
"""`rollout status` exit code when any listed gate fails (2 stays for errors, as everywhere)."""

rollout_app = typer.Typer(
    help="Label would-denies of observe-mode policies and measure their promotion gates.",
    no_args_is_help=True,
)


@rollout_app.command("queue")
def queue_cmd(
    ctx: typer.Context,
    policy_id: Annotated[str, typer.Argument(help="The observe-mode policy's @id.")],
    limit: Annotated[int, typer.Option(help="At most this many decisions.")] = 20,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Unlabelled would-denies of POLICY_ID to review, taken in turn from each principal and
    resource so that one noisy principal cannot fill the queue, each with its explanation."""
    settings = root_context(ctx).settings()
    path = f"/v1/rollout/policies/{quote(policy_id, safe='')}/queue?limit={limit}"
    emit(admin(settings, "GET", path, url), as_json, _print_queue)


def _print_queue(document: dict[str, Any]) -> None:
    out.print(
        f"{document['policy']} ({document['mode']}): {document['unlabelled']} unlabelled "
        f"would-denies, {len(document['queue'])} shown",
        highlight=False,
    )
    for item in document["queue"]:
        out.print(
            f"\n{item['decision_id']}  {item['time']}\n"
            f"  {item['principal']} {item['action']} {item['resource']}\n"
            f"  {item['explanation']}",
            highlight=False,
            markup=False,
        )
        if item["context"]:
            out.print(f"  context: {item['context']}", highlight=False, markup=False)


@rollout_app.command("label")
def label_cmd(
    ctx: typer.Context,
    decision_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Decision ids (or unique prefixes of them) to label."),
    ] = None,
    verdict: Annotated[
        str, typer.Option(help="true-positive (the denial would be right) or false-positive.")
    ] = "",
    note: Annotated[str, typer.Option(help="Why: kept with the label and in the ledger.")] = "",
    principal: Annotated[
        str | None,
        typer.Option(
            help='Label every unlabelled would-deny of --policy by this principal (User::"bob").'
        ),
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(
            help='... of this action (Action::"payments:refund"); combines with --principal '
            "and --resource."
        ),
    ] = None,
    resource: Annotated[
        str | None, typer.Option(help='... on this resource (Api::"payments.refund").')
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="The observe-mode policy (in bulk, or when several would deny)."),
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label would-denies true or false positives, by id or in bulk by principal, action or
    resource (every unlabelled would-deny of --policy that matches)."""
    if verdict not in ("true-positive", "false-positive"):
        raise CliError("--verdict must be true-positive or false-positive")
    if not note.strip():
        raise CliError("--note is required: it is what the audit trail shows")
    bulk = {"principal": principal, "action": action, "resource": resource}
    bulk = {name: value for name, value in bulk.items() if value is not None}
    if not decision_ids and not bulk:
        raise CliError(
            "name decision ids, or --principal, --action or --resource with --policy to label "
            "in bulk"
        )
    if bulk and policy is None:
        raise CliError(f"--{next(iter(bulk))} needs --policy")
    body: dict[str, Any] = {"decisions": decision_ids or [], "verdict": verdict, "note": note}
    body.update(bulk)
    if policy is not None:
        body["policy"] = policy
    settings = root_context(ctx).settings()
    emit(admin(settings, "POST", "/v1/rollout/labels", url, body), as_json, _print_labelled)


def _print_labelled(document: dict[str, Any]) -> None:
    labels = document["labelled"]
    out.print(f"[green]✓[/] labelled {len(labels)} decision(s)", highlight=False)
    for label in labels:
        out.print(
            f"  {label['decision_id']}  {label['policy_id']}  {label['verdict']}",
            highlight=False,
            markup=False,
        )


@rollout_app.command("status")
def status_cmd(ctx: typer.Context, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Every observe-mode and canary policy against its promotion gate: days observed,
    would-denies, labels, false-positive rate with its 95% interval (per cohort for a canary),
    attributable share, and each reason the gate fails. Exit 0 when every gate passes, 1 when
    any fails (with or without --json), 2 when the status cannot be read."""
    settings = root_context(ctx).settings()
    document = admin(settings, "GET", "/v1/rollout/status", url)
    emit(document, as_json, _print_status)
    if any(item["verdict"] != "pass" for item in document["policies"]):
        raise SystemExit(GATE_FAILS)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print_status(document: dict[str, Any]) -> None:
    if not document["policies"]:
        out.print("no observe-mode or canary policy in the active bundle")
        return
    table = Table()
    for name in (
        "policy",
        "mode",
        "tier",
        "days",
        "would-deny",
        "labelled",
        "FP (95% CI)",
        "named",
        "gate",
    ):
        table.add_column(name)
    for item in document["policies"]:
        rate = item["false_positive_rate"]
        interval = (
            f"{_percent(rate['estimate'])} [{_percent(rate['low'])}, {_percent(rate['high'])}]"
        )
        mode = item.get("mode", "observe")
        if mode == "canary":
            mode = f"canary {item['canary_percent']:g}%"
        table.add_row(
            item["policy_id"],
            mode,
            item["tier"] or "-",
            f"{item['days_observed']:.1f}",
            str(item["would_denies"]),
            str(item["labelled"]),
            interval,
            _percent(item["attributable_share"]),
            "pass" if item["verdict"] == "pass" else "[red]fail[/]",
        )
    out.print(table)
    for item in document["policies"]:
        if item.get("mode") == "canary":
            for name, cohort in item["cohorts"].items():
                rate = cohort["false_positive_rate"]
                out.print(
                    f"  {item['policy_id']} {name} cohort: {cohort['would_denies']} "
                    f"{'denied' if name == 'enforced' else 'would-deny'}, "
                    f"{cohort['labelled']} labelled, FP {_percent(rate['estimate'])} "
                    f"[{_percent(rate['low'])}, {_percent(rate['high'])}]",
                    highlight=False,
                    markup=False,
                )
        for reason in item["failing"]:
            out.print(f"  {item['policy_id']}: {reason}", highlight=False, markup=False)
