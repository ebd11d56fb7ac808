"""`trustplane …`: thin commands over the planes. Rich output for people, `--json` for scripts.

Exit codes: 0 success (or allow), 1 a negative answer (deny, failed test, failed verification),
2 a usage, configuration or input error.

This module only assembles the app from `COMMANDS`, one module per command group; what the
commands share lives in `cli/common.py`. A command's module is imported only when that command
runs (or its own `--help` is asked for), and each command imports its heavy dependencies when it
runs: `trustplane --help` loads Typer and Rich and nothing of the planes, and `trustplane check`
builds only its own parameters, not the hundred-odd of the whole tree (about half the start-up
time before, measured in `bench/cli.py`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from trustplane import __version__
from trustplane.cli.common import Context, exit_for


@dataclass(frozen=True)
class Entry:
    """A top-level command: its name, where it lives (`module:attribute`, a Typer group or a
    command function) and the line `trustplane --help` lists for it."""

    name: str
    target: str
    summary: str


COMMANDS = (
    Entry(
        "scan",
        "trustplane.cli.scan:scan",
        "Scan Kubernetes manifests, CI pipelines and secrets with the admission rule packs.",
    ),
    Entry(
        "init",
        "trustplane.cli.serve:init",
        "Create the state directory, ledger signing key, database schema and admin token.",
    ),
    Entry(
        "serve",
        "trustplane.cli.serve:serve",
        "Serve decisions (AuthZEN), the admin API and metrics.",
    ),
    Entry(
        "check",
        "trustplane.cli.check:check",
        "Evaluate one request: prints decision, reasons and shadow; exit 0 allow, 1 deny.",
    ),
    Entry(
        "decisions",
        "trustplane.cli.decisions:decisions_cmd",
        "Recorded decisions, newest first, with each one's reason code and determining policies",
    ),
    Entry(
        "revoke",
        "trustplane.cli.revoke:revoke_cmd",
        "Revoke a principal, a credential, a certificate, a grant, an exception or a "
        "break-glass session on the running server",
    ),
    Entry("revocations", "trustplane.cli.revoke:revocations_cmd", "List the revocations in force"),
    Entry(
        "attest",
        "trustplane.cli.image_attestations:attest_cmd",
        "Attest an image digest with this pipeline's trustplane identity",
    ),
    Entry(
        "policy",
        "trustplane.cli.policy:policy_app",
        "Validate, test, format, sign and roll back policy bundles.",
    ),
    Entry(
        "audit",
        "trustplane.cli.audit:audit_app",
        "Verify, export and follow the decision ledger.",
    ),
    Entry(
        "identity",
        "trustplane.cli.identity:identity_app",
        "SPIFFE identities: trust-domain keys, registration entries, Workload API, inventory.",
    ),
    Entry(
        "attestations",
        "trustplane.cli.image_attestations:attestations_app",
        "Image attestations recorded in trustplane.",
    ),
    Entry(
        "access",
        "trustplane.cli.access:access_app",
        "Just-in-time access: request, approve, revoke.",
    ),
    Entry(
        "break-glass",
        "trustplane.cli.access:break_glass_app",
        "Emergency access: short, loud, reviewed by someone else.",
    ),
    Entry(
        "exceptions",
        "trustplane.cli.access:exceptions_app",
        "The exception register: temporary, approved exceptions to forbid policies.",
    ),
    Entry(
        "rollout",
        "trustplane.cli.rollout:rollout_app",
        "Label would-denies of observe-mode policies and measure their promotion gates.",
    ),
    Entry(
        "scorecard",
        "trustplane.cli.scorecard:scorecard_cmd",
        "The month's Zero Trust scorecard: each figure with its target, verdict and query.",
    ),
    Entry(
        "pep",
        "trustplane.cli.pep:pep_app",
        "Enforcement points (PEPs) allowed to ask for decisions when pep.auth is on.",
    ),
    Entry(
        "config",
        "trustplane.cli.config:config_app",
        "The effective settings and where they come from.",
    ),
)


def load_command(entry: Entry) -> Any:
    """The real command for `entry`: its module imported, its parameters built."""
    module, _, attribute = entry.target.partition(":")
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer(add_completion=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=entry.name)
        return typer.main.get_command(holder).commands[entry.name]  # type: ignore[attr-defined]
    holder.command(entry.name, short_help=entry.summary)(target)
    return typer.main.get_command(holder)


class _NotLoaded(TyperCommand):
    """Stands for a command in the `--help` listing until it is run."""

    def __init__(self, entry: Entry) -> None:
        super().__init__(entry.name, help=entry.summary, short_help=entry.summary)
        self.entry = entry


class LazyGroup(TyperGroup):
    """The root group: lists every command from `COMMANDS`, builds one only when it runs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for entry in COMMANDS:
            self.commands.setdefault(entry.name, _NotLoaded(entry))
        self._listing = False

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = self.commands.get(cmd_name)
        if isinstance(command, _NotLoaded) and not self._listing:
            command = self.commands[cmd_name] = load_command(command.entry)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            with _help_imports_deferred():
                super().format_help(ctx, formatter)
        finally:
            self._listing = False


# What Typer's help renderer imports but a help page never uses: `rich.markdown` (markdown-it,
# for a markup mode this CLI does not use) and `rich.traceback` (for pretty exceptions, which
# are off). Together about 40 % of `trustplane --help`'s time.
_UNUSED_BY_HELP = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}


@contextlib.contextmanager
def _help_imports_deferred() -> Iterator[None]:
    """Stand in for the modules of `_UNUSED_BY_HELP` while the help renders; each stand-in's
    class loads the real module if it is ever built."""
    stand_ins = {}
    for module, name in _UNUSED_BY_HELP.items():
        if module not in sys.modules:
            stand_ins[module] = sys.modules[module] = _stand_in(module, name)
    try:
        yield
    finally:
        for module, stand_in in stand_ins.items():
            if sys.modules.get(module) is stand_in:
                del sys.modules[module]


def _stand_in(module: str, name: str) -> types.ModuleType:
    stand_in = types.ModuleType(module)

    def load(cls: type, *args: Any, **kwargs: Any) -> Any:
        if sys.modules.get(module) is stand_in:
            del sys.modules[module]
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    setattr(stand_in, name, type(name, (), {"__new__": load}))
    return stand_in


app = typer.Typer(
    name="trustplane",
    cls=LazyGroup,
    help="A Zero Trust control plane: Cedar policy decisions with a tamper-evident ledger.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"trustplane {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML config file (default: $TRUSTPLANE_CONFIG or ./trustplane.toml).",
        ),
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(help="State directory (keys, SQLite).")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy database URL.")] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    ctx.obj = Context(config, {"state_dir": state_dir, "store": {"url": database_url}})


def main() -> None:
    # Pydantic looks for plugins by reading the metadata of every installed distribution
    # (about 0.18 s of `trustplane check` on a loaded 2-core machine); trustplane uses none.
    # A value the user set is kept.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        app()
    except Exception as exc:
        exit_for(exc)
        raise
