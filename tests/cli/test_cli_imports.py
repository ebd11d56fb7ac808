"""`trustplane --help` must start in a fraction of a second: importing the CLI module may not pull
in the database, the server, the scanners or the policy engine — each command imports what it
needs when it runs (issue 14, start-up). Checked in a fresh interpreter, since this test
process has long since imported all of them."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trustplane.cli import common
from trustplane.cli.serve import LedgerDurability
from trustplane.config import Durability

# Top-level packages whose import alone costs tenths of a second on a loaded machine.
HEAVY = ("sqlalchemy", "psycopg", "grpc", "detect_secrets", "cedarpy", "pydantic", "httpx")


def _modules_after(statement: str) -> set[str]:
    probe = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(result.stdout))


def test_importing_the_cli_pulls_in_no_heavy_package_and_no_server_module() -> None:
    loaded = _modules_after("import trustplane.cli.main")
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    server = sorted(
        m for m in loaded if m == "trustplane.server" or m.startswith("trustplane.server.")
    )
    assert heavy == [], f"importing trustplane.cli.main loads {heavy}"
    assert server == [], f"importing trustplane.cli.main loads {server}"


def test_the_cli_durability_choices_are_the_settings_choices() -> None:
    assert [d.value for d in LedgerDurability] == [d.value for d in Durability]


@pytest.mark.parametrize(("module", "name"), common.ONE_LINE_ERRORS)
def test_every_error_main_prints_as_one_line_exists(module: str, name: str) -> None:
    # main() names them instead of importing them; a rename must not silently turn a one-line
    # error back into a traceback.
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, Exception)


def test_command_modules_share_common_and_never_import_main() -> None:
    # main.py only assembles the app; a command module importing it back would need the
    # import-order tricks (`noqa: E402`) the split removed.
    package = Path(common.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "trustplane.cli.main":
                offenders.append(path.name)
        if "noqa: E402" in path.read_text():
            offenders.append(f"{path.name} (noqa: E402)")
    assert offenders == [], f"these CLI modules import main or defer imports: {offenders}"
