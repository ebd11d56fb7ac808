"""What the pages ship: every template and static file is package data (so an installed
trustplane serves them and fetches nothing), every script and stylesheet the base template names
exists, and no template holds what the Content-Security-Policy would block (inline script, event
attributes, inline styles)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "src" / "trustplane" / "web"


def test_every_template_and_static_file_is_package_data() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["trustplane"]
    files = [p for folder in ("templates", "static") for p in (WEB / folder).rglob("*")]
    shipped = [p for p in files if p.is_file()]
    assert shipped, "the pages have templates and static files"
    for path in shipped:
        name = path.relative_to(WEB.parent).as_posix()
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_the_base_template_names_only_files_that_exist_and_each_vendored_one_has_a_licence() -> (
    None
):
    base = (WEB / "templates" / "base.html").read_text()
    named = re.findall(r'(?:src|href)="\{\{ static \}\}/([^"]+)"', base)
    assert len(named) >= 5
    for name in named:
        assert (WEB / "static" / name).is_file(), name
    for vendored in (WEB / "static" / "vendor").glob("*.min.js"):
        stem = vendored.name.split(".min.js")[0].removesuffix(".iife")
        assert (vendored.parent / f"{stem}.LICENSE").is_file(), vendored.name


def test_no_template_holds_what_the_content_security_policy_blocks() -> None:
    for template in (WEB / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f"inline script: {template}"
        assert not re.search(r"\son[a-z]+\s*=", text), f"event attribute: {template}"
        assert "style=" not in text and "<style" not in text, f"inline style: {template}"
        assert "javascript:" not in text, template
