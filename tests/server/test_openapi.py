"""The OpenAPI document describes what the server serves: every route, with its methods and
path parameters, and valid references."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from starlette.routing import Route

from trustplane.config import load_settings
from trustplane.server.admin_gate import UI_PREFIX
from trustplane.server.app import create_app
from trustplane.server.openapi import openapi_document
from trustplane.server.runtime import Runtime, initialise

UNDOCUMENTED = {"/openapi.json"}  # the document itself


def _served(tmp_path: Path) -> set[tuple[str, str]]:
    settings = load_settings(overrides={"state_dir": tmp_path, "policy": {"watch": False}})
    initialise(settings)
    app = create_app(Runtime(settings), manage_runtime=False)
    served = set()
    for route in app.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {path:path} → {path}
        for method in route.methods or ():
            # The pages under /ui are HTML for people, not the API (web/; docs/ui.md).
            if path.startswith(UI_PREFIX):
                continue
            if method != "HEAD" and path not in UNDOCUMENTED:
                served.add((path, method.lower()))
    return served


def test_every_served_route_is_documented(tmp_path: Path) -> None:
    paths = openapi_document()["paths"]
    documented = {(path, method) for path, ops in paths.items() for method in ops}
    missing = sorted(_served(tmp_path) - documented)
    assert not missing, f"routes missing from the OpenAPI document: {missing}"


def test_path_parameters_are_declared_and_references_resolve() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(document["paths"]):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for path, operations in document["paths"].items():
        names = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)
