"""`trustplane check`: evaluate one request locally against a bundle, or ask a running server;
exit 0 allow, 1 deny."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from trustplane.cli.common import (
    CliError,
    JsonOpt,
    bundle_source,
    emit,
    http,
    load_options,
    out,
    root_context,
)

if TYPE_CHECKING:
    from trustplane.model import AccessRequest


def check(
    ctx: typer.Context,
    request: Annotated[
        str | None,
        typer.Option(
            "--request",
            "-r",
            help="Request as JSON ({principal, action, resource, context}), @file, or - for stdin.",
        ),
    ] = None,
    principal: Annotated[str | None, typer.Option(help='Principal: Type:id or Type::"id".')] = None,
    action: Annotated[str | None, typer.Option(help="Action name, e.g. payments:refund.")] = None,
    resource: Annotated[str | None, typer.Option(help='Resource: Type:id or Type::"id".')] = None,
    context: Annotated[str | None, typer.Option(help="Context as a JSON object.")] = None,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", "-b", help="Evaluate locally against this bundle directory."),
    ] = None,
    url: Annotated[str | None, typer.Option(help="Ask a running server (AuthZEN) instead.")] = None,
    at: Annotated[str | None, typer.Option(help="Evaluate at this RFC 3339 time (local).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate one request: prints decision, reasons and shadow; exit 0 allow, 1 deny."""
    from trustplane.decision.loader import load_bundle
    from trustplane.decision.policy_bundle import parse_rfc3339

    access = _build_request(request, principal, action, resource, context)
    if url:
        decision_doc = _remote_check(url, access)
    else:
        settings = root_context(ctx).settings(policy={"bundle_dir": bundle})
        if settings.policy.bundle_dir is None:
            raise CliError("pass --bundle DIR (local evaluation) or --url URL (a running server)")
        when = None
        if at is not None:
            when = parse_rfc3339(at)
            if when is None:
                raise CliError(f"--at {at!r} is not an RFC 3339 time with offset")
        loaded = load_bundle(bundle_source(settings.policy.bundle_dir), load_options(settings))
        decision_doc = loaded.evaluator.evaluate(access, at=when).as_dict()
    emit({"request": access.as_document(), **decision_doc}, as_json, _print_decision)
    raise typer.Exit(0 if decision_doc["decision"] == "allow" else 1)


def _build_request(
    raw: str | None,
    principal: str | None,
    action: str | None,
    resource: str | None,
    context: str | None,
) -> AccessRequest:
    from trustplane.decision.requests import RequestError, parse_entity, parse_request
    from trustplane.model import AccessRequest

    try:
        if raw is not None:
            if raw == "-":
                raw = sys.stdin.read()
            elif raw.startswith("@"):
                raw = Path(raw[1:]).read_text()
            return parse_request(_json_arg(raw, "--request"), "request")
        missing = [
            n
            for n, v in (("--principal", principal), ("--action", action), ("--resource", resource))
            if not v
        ]
        if missing:
            raise CliError(
                f"give --request, or all of --principal, --action, --resource "
                f"(missing {', '.join(missing)})"
            )
        ctx_value = _json_arg(context, "--context") if context else {}
        if not isinstance(ctx_value, dict):
            raise CliError("--context must be a JSON object")
        return AccessRequest(
            principal=parse_entity(principal, "--principal"),
            action=parse_entity(action, "--action", default_type="Action"),
            resource=parse_entity(resource, "--resource"),
            context=ctx_value,
        )
    except RequestError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot read request: {exc}") from None


def _json_arg(raw: str, name: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CliError(f"{name} is not valid JSON: {exc}") from None


def _remote_check(url: str, access: AccessRequest) -> dict[str, Any]:
    body = {
        "subject": {
            "type": access.principal.type,
            "id": access.principal.id,
            **({"properties": access.principal.properties} if access.principal.properties else {}),
        },
        "action": {"name": access.action.id},
        "resource": {
            "type": access.resource.type,
            "id": access.resource.id,
            **({"properties": access.resource.properties} if access.resource.properties else {}),
        },
        "context": access.context,
    }
    response = http("POST", url, "/access/v1/evaluation", None, body)
    doc = response.json()
    details = doc.get("context", {})
    return {"decision": "allow" if doc.get("decision") else "deny", **details}


def _print_decision(doc: dict[str, Any]) -> None:
    allowed = doc["decision"] == "allow"
    colour = "green" if allowed else "red"
    # Ids whole (they are typed back, e.g. to `audit proof`), each on its own line: a decision
    # id and a revision side by side do not fit 80 columns.
    # No automatic highlighting (`highlight=False` throughout): what needs a colour has one, and
    # rich's highlighter compiles its patterns on first use, a tenth of `check`'s start-up.
    out.print(
        f"[bold {colour}]{doc['decision'].upper()}[/]  decision {doc.get('decision_id')}",
        highlight=False,
    )
    out.print(f"revision {doc.get('revision') or '-'}", highlight=False)
    reasons = doc.get("reasons") or []
    if reasons:
        table = Table(title="determined by", title_justify="left")
        # Policy ids are what people grep and paste: never cut or wrap them.
        table.add_column("policy", no_wrap=True, min_width=max(len(r["policy"]) for r in reasons))
        table.add_column("effect", no_wrap=True)
        table.add_column("owner", no_wrap=True)
        table.add_column("description", ratio=1)
        for r in reasons:
            table.add_row(r["policy"], r["effect"], r["owner"], r.get("description", ""))
        out.print(table, highlight=False)
    elif not allowed:
        out.print("  no policy permits this request (default deny)", highlight=False)
    for error in doc.get("errors") or []:
        out.print(f"  [red]error:[/] {error}", highlight=False)
    shadow = doc.get("shadow") or {}
    if shadow:
        same = shadow.get("decision") == doc["decision"]
        note = "same as enforced" if same else "[yellow]differs from enforced[/]"
        out.print(f"shadow: {shadow.get('decision')} ({note})", highlight=False)
        for r in shadow.get("would_change") or []:
            out.print(
                f"  observe-mode policy [bold]{r['policy']}[/] ({r['owner']}) would change "
                f"the answer: {r.get('description', '')}",
                highlight=False,
            )
