"""`trustplane --help` must start in a fraction of a second: importing the CLI module may not pull
in the database, the server, the scanners or the policy engine — each command imports what it
needs when it runs (issue 14, start-up). Checked in a fresh interpreter, since this test
process has long since imported all of them."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trustplane.cli import common
from trustplane.cli import main as cli_main
from trustplane.cli.serve import LedgerDurability
from trustplane.config import Durability
from trustplane.errors import TrustplaneError

# Top-level packages whose import alone costs tenths of a second on a loaded machine.
# What every command shares, so `--help` loads it.
SHARED = {"trustplane.cli.main", "trustplane.cli.common"}
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


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("trustplane.config", "ConfigError"),
        ("trustplane.identity.kek", "KekError"),
        ("trustplane.store.database", "StoreError"),
        ("trustplane.server.runtime", "NotInitialisedError"),
        ("trustplane.decision.signing", "SigningError"),
        ("trustplane.decision.policy_bundle", "BundleError"),
        ("trustplane.telemetry.checkpoint", "CheckpointError"),
        ("trustplane.telemetry.ledger", "LedgerError"),
        ("trustplane.server.admin_auth", "AdminPolicyError"),
        ("trustplane.cli.common", "CliError"),
        ("trustplane.server.serve", "ServeError"),
        ("trustplane.identity.kek", "KekError"),
        ("trustplane.identity.entries", "EntryError"),
        ("trustplane.identity.keys", "RotationError"),
        ("trustplane.identity.service", "IdentityNotInitialised"),
        ("trustplane.identity.spiffe_id", "SpiffeIdError"),
        ("trustplane.enforcement.pep", "PepError"),
        ("trustplane.posture.rules", "RuleError"),
        ("trustplane.telemetry.query", "QueryError"),
        ("trustplane.decision.requests", "RequestError"),
    ],
)
def test_every_refusal_the_cli_reports_derives_from_the_one_base_error(
    module: str, name: str
) -> None:
    # main() prints a TrustplaneError as a refusal with its exit code; an error outside it
    # would come out as a traceback.
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, TrustplaneError)


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


def test_help_lists_every_command_without_importing_any_command_module() -> None:
    probe = (
        "import contextlib, io\n"
        "from trustplane.cli.main import main\n"
        "sys.argv = ['trustplane', '--help']\n"
        "with contextlib.redirect_stdout(io.StringIO()) as page, contextlib.suppress(SystemExit):\n"
        "    main()\n"
        "sys.stderr.write(page.getvalue())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import sys, json\n{probe}print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    loaded = set(json.loads(result.stdout))
    commands = sorted(m for m in loaded if m.startswith("trustplane.cli.") and m not in SHARED)
    assert commands == [], f"`trustplane --help` imports {commands}"
    assert "rich.markdown" not in loaded and "rich.traceback" not in loaded
    for entry in cli_main.COMMANDS:
        assert f" {entry.name} " in result.stderr and entry.summary in result.stderr


@pytest.mark.parametrize("entry", cli_main.COMMANDS, ids=lambda e: e.name)
def test_each_listed_command_loads_and_its_summary_is_its_own_help(entry: Any) -> None:
    # The listing comes from COMMANDS so that `--help` imports no command module; this keeps
    # each line true to the command it stands for.
    command = cli_main.load_command(entry)
    assert command.name == entry.name
    own_help = " ".join((command.help or "").split())
    assert own_help.startswith(entry.summary), (
        f"COMMANDS lists {entry.name!r} as {entry.summary!r} but its help says {own_help!r}"
    )


def test_a_local_check_loads_the_bundle_without_the_store_or_the_server() -> None:
    """`trustplane check` reads the bundle (with every plane's bundle file: trust.yaml,
    rollout.yaml, access.yaml) and evaluates; the parsers of those files must not drag in the
    store (SQLAlchemy), which alone costs several tenths of a second."""
    probe = (
        "import contextlib, io\n"
        "from trustplane.cli.main import main\n"
        "sys.argv = ['trustplane', 'check', '--bundle', 'examples/shop',\n"
        "            '--principal', 'User::\"erin\"', '--action', 'payments:refund',\n"
        "            '--resource', 'Api::\"payments.refund\"',\n"
        "            '--context', '{\"mfa\": true, \"auth_age_seconds\": 120}']\n"
        "with contextlib.redirect_stdout(io.StringIO()) as page, contextlib.suppress(SystemExit):\n"
        "    main()\n"
        "sys.stderr.write(page.getvalue())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import sys, json\n{probe}print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    loaded = set(json.loads(result.stdout))
    assert result.stderr.startswith("ALLOW"), result.stderr  # the check ran and answered
    store = sorted(m for m in loaded if m.split(".")[0] in ("sqlalchemy", "psycopg", "alembic"))
    server = sorted(m for m in loaded if m.startswith("trustplane.server"))
    assert store == [], f"`trustplane check` loads {store[:5]}"
    assert server == [], f"`trustplane check` loads {server}"
    # Nor what only other work needs: signature checks (the shop is unsigned and no key is
    # trusted), the trust plane's address databases (only requests from an address need
    # them), HTTP clients and servers.
    deferred = ("cryptography", "geoip2fast", "maxminddb", "httpx", "uvicorn", "starlette")
    heavy = sorted(m for m in loaded if m.split(".")[0] in deferred)
    assert heavy == [], f"`trustplane check` loads {heavy[:5]}"
