"""`trustplane who-can`, `can-do` (AuthZEN search, locally over a bundle and the store, or
through a server's search endpoints) and `simulate` (outcomes/simulate.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from trustplane.cli.common import (
    CliError,
    JsonOpt,
    UrlOpt,
    bundle_source,
    emit,
    http,
    load_options,
    out,
    root_context,
)

BundleOpt = Annotated[
    Path | None,
    typer.Option("--bundle", "-b", help="Search locally over this bundle directory."),
]
ContextOpt = Annotated[
    str | None, typer.Option(help="Request context as a JSON object (policies may need it).")
]
TypeOpt = Annotated[
    list[str] | None,
    typer.Option("--type", "-t", help="Entity type searched (repeatable); local default: all."),
]


def _context(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CliError(f"--context is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError("--context must be a JSON object")
    return value


def _entity(text: str, option: str) -> Any:
    from trustplane.decision.requests import RequestError, parse_entity

    try:
        return parse_entity(text, option)
    except RequestError as exc:
        raise CliError(str(exc)) from None


def _local(ctx: typer.Context, bundle: Path | None) -> tuple[Any, Any, str]:
    """The evaluator of the bundle and the universe: the bundle's, plus the store's evidence
    (registered workloads, ledger principals and resources) when there is a store here."""
    from trustplane.decision.loader import load_bundle
    from trustplane.outcomes.universe import build, from_store

    settings = root_context(ctx).settings(policy={"bundle_dir": bundle})
    if settings.policy.bundle_dir is None:
        raise CliError("pass --bundle DIR (local search) or --url URL (a running server)")
    loaded = load_bundle(bundle_source(settings.policy.bundle_dir), load_options(settings))
    try:
        from trustplane.cli.common import store_engine

        engine = store_engine(settings)
    except CliError:
        return loaded.evaluator, build(loaded.bundle), "bundle"
    try:
        return loaded.evaluator, from_store(engine, loaded.bundle), "bundle, store and ledger"
    finally:
        engine.dispose()


def _all_pages(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    token = None
    while True:
        page = {"limit": 1000, **({"token": token} if token else {})}
        answer = http("POST", url.rstrip("/"), path, None, {**body, "page": page}).json()
        results.extend(answer.get("results") or [])
        token = (answer.get("page") or {}).get("next_token")
        if not token:
            return results


def who_can(
    ctx: typer.Context,
    action: Annotated[str, typer.Argument(help="Action name, e.g. payments:refund.")],
    resource: Annotated[str, typer.Argument(help='Resource: Type:id or Type::"id".')],
    types: TypeOpt = None,
    context: ContextOpt = None,
    bundle: BundleOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every principal an evaluation would allow to do ACTION on RESOURCE (AuthZEN subject
    search)."""
    from trustplane.outcomes.search import Query, naive

    target = _entity(resource, "RESOURCE")
    ctx_value = _context(context)
    found: list[dict[str, Any]] = []
    if url:
        if not types:
            raise CliError("with --url, name the subject type(s) with --type (e.g. --type User)")
        for kind in types:
            body = {
                "subject": {"type": kind},
                "action": {"name": action},
                "resource": {"type": target.type, "id": target.id},
                "context": ctx_value,
            }
            found.extend(_all_pages(url, "/access/v1/search/subject", body))
        universe_from = url
    else:
        evaluator, universe, universe_from = _local(ctx, bundle)
        for kind in types or list(universe.entities):
            query = Query("subject", _ref(kind, "*"), action, target, ctx_value)
            found.extend(naive(query, universe, evaluator.evaluate))
    doc = {
        "action": action,
        "resource": str(target),
        "subjects": found,
        "universe": universe_from,
    }
    emit(doc, as_json, _print_who_can)


def can_do(
    ctx: typer.Context,
    principal: Annotated[str, typer.Argument(help='Principal: Type:id or Type::"id".')],
    actions: Annotated[
        list[str] | None,
        typer.Option("--action", "-a", help="Only these actions (repeatable; needed with --url)."),
    ] = None,
    types: TypeOpt = None,
    context: ContextOpt = None,
    bundle: BundleOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every action on every resource an evaluation would allow PRINCIPAL (AuthZEN resource
    search, per action and resource type)."""
    from trustplane.outcomes.search import Query, naive

    who = _entity(principal, "PRINCIPAL")
    ctx_value = _context(context)
    rows: list[dict[str, str]] = []
    if url:
        if not actions or not types:
            raise CliError("with --url, name the actions (--action) and resource types (--type)")
        for action in actions:
            for kind in types:
                body = {
                    "subject": {"type": who.type, "id": who.id},
                    "action": {"name": action},
                    "resource": {"type": kind},
                    "context": ctx_value,
                }
                for item in _all_pages(url, "/access/v1/search/resource", body):
                    rows.append({"action": action, "resource": _text(item)})
        universe_from = url
    else:
        evaluator, universe, universe_from = _local(ctx, bundle)
        for action in actions or universe.actions:
            for kind in types or list(universe.entities):
                query = Query("resource", who, action, _ref(kind, "*"), ctx_value)
                for item in naive(query, universe, evaluator.evaluate):
                    rows.append({"action": action, "resource": _text(item)})
    doc = {"principal": str(who), "allowed": rows, "universe": universe_from}
    emit(doc, as_json, _print_can_do)


def _ref(kind: str, ident: str) -> Any:
    from trustplane.model import EntityRef

    return EntityRef(kind, ident)


def _text(item: dict[str, Any]) -> str:
    return f'{item["type"]}::"{item["id"]}"'


def _print_who_can(doc: dict[str, Any]) -> None:
    subjects = doc["subjects"]
    if not subjects:
        out.print(f"nobody in the known universe may {doc['action']} on {doc['resource']}")
    else:
        table = Table(title=f"who may {doc['action']} on {doc['resource']}", title_justify="left")
        table.add_column("principal", no_wrap=True)
        for item in subjects:
            table.add_row(_text(item))
        out.print(table)
    out.print(f"universe: {doc['universe']}", highlight=False)


def _print_can_do(doc: dict[str, Any]) -> None:
    rows = doc["allowed"]
    if not rows:
        out.print(f"{doc['principal']} may do nothing in the known universe")
    else:
        table = Table(title=f"what {doc['principal']} may do", title_justify="left")
        table.add_column("action", no_wrap=True)
        table.add_column("resource", no_wrap=True)
        for row in rows:
            table.add_row(row["action"], row["resource"])
        out.print(table)
    out.print(f"universe: {doc['universe']}", highlight=False)


# -- simulate ------------------------------------------------------------------------------------

simulate_app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="Compromise simulation: blast radius and attack paths through policy, RBAC and network.",
)

ManifestsOpt = Annotated[
    list[Path] | None,
    typer.Option("--manifests", "-m", help="Kubernetes manifests (file or directory; repeatable)."),
]
FlowsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Observed flows as JSON [{principal, action, resource}] (besides the ledger's)."
    ),
]
CandidateOpt = Annotated[
    Path | None,
    typer.Option(
        "--candidate",
        help="A candidate bundle (a directory with .cedar files) or manifests directory: the "
        "same figures under it, side by side.",
    ),
]
HtmlOpt = Annotated[
    Path | None, typer.Option("--html", help="Write the paths as a self-contained HTML page.")
]
SimContextOpt = Annotated[
    str | None,
    typer.Option(
        "--context",
        help="Context of the attacker's requests (JSON object); default: a fresh MFA-backed "
        'session, {"mfa": true, "auth_age_seconds": 0}.',
    ),
]
DEFAULT_CONTEXT = {"mfa": True, "auth_age_seconds": 0}


@simulate_app.callback()
def simulate_all(
    ctx: typer.Context,
    every: Annotated[
        bool, typer.Option("--all", help="Every principal, workload and exchange rule.")
    ] = False,
    bundle: BundleOpt = None,
    manifests: ManifestsOpt = None,
    flows: FlowsOpt = None,
    context: SimContextOpt = None,
    candidate: CandidateOpt = None,
    html: HtmlOpt = None,
    save: Annotated[
        bool,
        typer.Option(
            "--save",
            help="With --all: store the estate's figures in the local store, where the "
            "scorecard reads lateral-movement resistance.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compromise simulation: blast radius and attack paths through policy, RBAC and
    network."""
    if ctx.invoked_subcommand is not None:
        return
    if not every:
        out.print(ctx.get_help())
        raise typer.Exit(2)
    _simulate(
        ctx, None, None, bundle, manifests, flows, context, candidate, html, as_json, save=save
    )


@simulate_app.command("stolen-token")
def stolen_token_cmd(
    ctx: typer.Context,
    principal: Annotated[str, typer.Argument(help="The principal whose token is stolen: Type:id.")],
    bundle: BundleOpt = None,
    manifests: ManifestsOpt = None,
    flows: FlowsOpt = None,
    context: SimContextOpt = None,
    candidate: CandidateOpt = None,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What a stolen token of PRINCIPAL reaches."""
    _simulate(
        ctx, "stolen-token", principal, bundle, manifests, flows, context, candidate, html, as_json
    )


@simulate_app.command("rogue-workload")
def rogue_workload_cmd(
    ctx: typer.Context,
    spiffe_id: Annotated[str, typer.Argument(help="The SPIFFE ID the rogue workload obtained.")],
    bundle: BundleOpt = None,
    manifests: ManifestsOpt = None,
    flows: FlowsOpt = None,
    context: SimContextOpt = None,
    candidate: CandidateOpt = None,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What a rogue workload holding SPIFFE_ID (and its Kubernetes account) reaches."""
    _simulate(
        ctx,
        "rogue-workload",
        spiffe_id,
        bundle,
        manifests,
        flows,
        context,
        candidate,
        html,
        as_json,
    )


@simulate_app.command("poisoned-pipeline")
def poisoned_pipeline_cmd(
    ctx: typer.Context,
    rule: Annotated[
        str, typer.Argument(help="The token-exchange rule a poisoned pipeline passes.")
    ],
    bundle: BundleOpt = None,
    manifests: ManifestsOpt = None,
    flows: FlowsOpt = None,
    context: SimContextOpt = None,
    candidate: CandidateOpt = None,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What a pipeline that satisfies exchange rule RULE's conditions reaches."""
    _simulate(
        ctx, "poisoned-pipeline", rule, bundle, manifests, flows, context, candidate, html, as_json
    )


def _estate(
    ctx: typer.Context,
    bundle: Path | None,
    manifests: list[Path],
    flows: Path | None,
    context: dict[str, Any],
) -> Any:
    from trustplane.decision.loader import load_bundle
    from trustplane.outcomes.graph import Flow
    from trustplane.outcomes.simulate import Estate
    from trustplane.outcomes.universe import observed_flows
    from trustplane.posture.cluster import ManifestError, load_objects, read_estate

    settings = root_context(ctx).settings(policy={"bundle_dir": bundle})
    if settings.policy.bundle_dir is None:
        raise CliError("pass --bundle DIR (the policy bundle to simulate against)")
    loaded = load_bundle(bundle_source(settings.policy.bundle_dir), load_options(settings))
    for path in manifests:
        if not path.exists():
            raise CliError(f"--manifests {path}: no such file or directory")
    try:
        k8s = read_estate(load_objects(manifests))
    except ManifestError as exc:
        raise CliError(f"cannot read manifests: {exc}") from None
    routes = loaded.bundle.routes
    workload_types = {routes.workload_type if routes else "Service"} | {
        str(e["uid"]["type"])
        for e in loaded.bundle.entities
        if "spiffe_id" in (e.get("attrs") or {})
    }
    found: list[Flow] = []
    if flows is not None:
        try:
            items = json.loads(flows.read_text())
            for item in items:
                found.append(
                    Flow(
                        _entity(item["principal"], "principal"),
                        str(item["action"]),
                        _entity(item["resource"], "resource"),
                    )
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CliError(f"--flows {flows}: {exc}") from None
    try:
        from trustplane.cli.common import store_engine

        engine = store_engine(settings)
    except CliError:
        engine = None
    if engine is not None:
        try:
            found += [Flow(*f) for f in observed_flows(engine, workload_types)]
        finally:
            engine.dispose()
    return Estate(
        loaded.bundle,
        loaded.evaluator.evaluate,
        k8s,
        found,
        list(settings.identity.exchange_rules),
        context,
    )


def _simulate(
    ctx: typer.Context,
    scenario: str | None,
    target: str | None,
    bundle: Path | None,
    manifests: list[Path] | None,
    flows: Path | None,
    context: str | None,
    candidate: Path | None,
    html: Path | None,
    as_json: bool,
    save: bool = False,
) -> None:
    from trustplane.outcomes.simulate import render_html, run

    ctx_value = _context(context) if context else dict(DEFAULT_CONTEXT)
    estate = _estate(ctx, bundle, list(manifests or []), flows, ctx_value)
    result = run(estate, scenario, target)
    outcomes = result.pop("_outcomes")
    if save:
        from trustplane.cli.common import store_engine
        from trustplane.outcomes.simulation_runs import save_run

        engine = store_engine(root_context(ctx).settings())
        try:
            saved = save_run(engine, result, estate.bundle.revision)
        finally:
            engine.dispose()
        result["saved"] = {"run_at": saved.run_at, "revision": saved.revision}
    if candidate is not None:
        if not candidate.is_dir():
            raise CliError(f"--candidate {candidate}: not a directory")
        if any(candidate.glob("*.cedar")):
            other = _estate(ctx, candidate, list(manifests or []), flows, ctx_value)
        else:
            other = _estate(ctx, bundle, [candidate], flows, ctx_value)
        under = run(other, scenario, target)
        under.pop("_outcomes")
        result["candidate"] = {
            "directory": str(candidate),
            "lateral_movement": under["lateral_movement"],
            "scenarios": [
                {
                    "scenario": s["scenario"],
                    "start": s["start"],
                    "blast_radius": s["blast_radius"]["count"],
                    "tier0_reached": len(s["tier0_paths"]),
                    "resistance": s["lateral_movement"]["resistance"],
                }
                for s in under["scenarios"]
            ],
        }
    if html is not None:
        html.write_text(render_html(outcomes))
        result["html"] = str(html)
    emit(result, as_json, _print_simulation)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _print_simulation(doc: dict[str, Any]) -> None:
    table = Table(title="compromise simulation", title_justify="left")
    for column in (
        "scenario",
        "start",
        "reached",
        "tier 0",
        "tier 1",
        "tier 2",
        "tier-0 paths",
        "blocked by authz",
    ):
        table.add_column(column, no_wrap=column in ("scenario", "start"))
    for s in doc["scenarios"]:
        tiers = s["blast_radius"]["by_tier"]
        lm = s["lateral_movement"]
        table.add_row(
            s["scenario"],
            s["start"],
            str(s["blast_radius"]["count"]),
            str(tiers.get("0", 0)),
            str(tiers.get("1", 0)),
            str(tiers.get("2", 0)),
            str(len(s["tier0_paths"])),
            f"{lm['blocked_by_authz']}/{lm['tier0_reachable_without_authz']}",
        )
    out.print(table, emoji=False)
    if len(doc["scenarios"]) == 1:
        for target, hops in doc["scenarios"][0]["tier0_paths"].items():
            out.print(f"[bold]→ {target}[/]", highlight=False, emoji=False)
            for hop in hops:
                out.print(
                    f"   {hop['from']} ─{hop['via']}: {hop['how']}→ {hop['to']}", highlight=False
                )
    lm = doc["lateral_movement"]
    out.print(
        f"lateral-movement resistance: {_percent(lm['resistance'])} "
        f"({lm['blocked_by_authz']} of {lm['paths_without_authz']} paths to tier 0 that network "
        "and RBAC allow are blocked by service authorization)",
        highlight=False,
    )
    if "candidate" in doc:
        c = doc["candidate"]["lateral_movement"]
        out.print(
            f"under {doc['candidate']['directory']}: {_percent(c['resistance'])} "
            f"({c['blocked_by_authz']} of {c['paths_without_authz']})",
            highlight=False,
        )
    if "html" in doc:
        out.print(f"paths drawn in {doc['html']}", highlight=False)
