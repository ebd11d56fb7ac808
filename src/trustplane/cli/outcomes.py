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
