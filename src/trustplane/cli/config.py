"""`trustplane config show`: the settings a command here would run with, each with where its
value came from, so a surprising value can be traced to its file, variable or flag."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.markup import escape

from trustplane.cli.common import JsonOpt, emit, out, root_context

config_app = typer.Typer(help="The effective settings and where they come from.")


@config_app.command("show")
def show(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every setting's effective value and origin (default, file PATH, environment NAME or
    command line), credentials masked."""
    from trustplane.config import effective_settings

    root = root_context(ctx)
    path, settings = effective_settings(root.config, root.overrides)
    doc = {
        "config_file": None if path is None else str(path),
        "settings": {
            item.name: {"value": item.value, "origin": item.origin, "env": item.env}
            for item in settings
        },
    }
    emit(doc, as_json, _render)


def _render(doc: dict[str, Any]) -> None:
    out.print(f"config file: {doc['config_file'] or 'none'}", highlight=False)
    section = ""
    for name, item in doc["settings"].items():
        here = name.split(".")[0] if "." in name else ""
        if here != section:
            section = here
            out.print(f"\n[bold]\\[{section}][/]")
        value = escape(json.dumps(item["value"]))
        origin = item["origin"]
        style = "dim" if origin == "default" else "cyan"
        out.print(f"{name} = {value}  [{style}]({escape(origin)})[/]", highlight=False)
