"""What every `trustplane` command shares: the consoles, the option types, the root context
(config file and overrides), one way to print (`emit`), admin API calls, store access and the
errors that end a command.

Imported by `--help` itself, so nothing here imports more than Typer and Rich at module level:
each helper imports what it needs when it is called (`tests/cli/test_cli_imports.py`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    import httpx

    from trustplane.config import Settings
    from trustplane.decision.loader import LoadOptions
    from trustplane.decision.policy_bundle import BundleSource

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
UrlOpt = Annotated[str | None, typer.Option("--url", help="Server URL.")]

Doc = TypeVar("Doc")


class CliError(Exception):
    """An error to print as one line and exit 2."""


@dataclass
class Context:
    """The root options (`--config`, `--state-dir`, `--database-url`), kept for the command
    that runs; settings are loaded only by commands that need them."""

    config: Path | None
    overrides: dict[str, Any]

    def settings(self, **extra: Any) -> Settings:
        from trustplane.config import load_settings

        return load_settings(self.config, {**self.overrides, **extra})


def root_context(ctx: typer.Context) -> Context:
    obj = ctx.find_root().obj
    assert isinstance(obj, Context)
    return obj


# -- output -----------------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def emit(doc: Doc, as_json: bool, render: Callable[[Doc], None], lines: bool = False) -> None:
    """Print a command's answer: the document as JSON for scripts, or `render(doc)` for
    people. Every command prints through here, so both forms come from the same document.
    With `lines`, `doc` is a list written as JSON Lines (one record a line, for `tail -f`)."""
    if not as_json:
        render(doc)
    elif lines:
        for item in doc:  # type: ignore[attr-defined]
            sys.stdout.write(json.dumps(item, default=str) + "\n")
    else:
        emit_json(doc)


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {warning}")


# -- server client ----------------------------------------------------------------------------


def server_url(settings: Settings, url: str | None) -> str:
    default = f"http://{settings.server.host}:{settings.server.port}"
    return (url or settings.cli.server_url or default).rstrip("/")


def admin_token(settings: Settings) -> str:
    if settings.cli.admin_token is not None:
        return settings.cli.admin_token.get_secret_value()
    try:
        return settings.admin_token_file.read_text().strip()
    except FileNotFoundError:
        raise CliError(
            f"no admin token: looked for {settings.admin_token_file.absolute()}; set "
            "TRUSTPLANE_CLI__ADMIN_TOKEN (or cli.admin_token in the config file), or run this "
            "where the server's state directory is"
        ) from None


def admin(settings: Settings, method: str, path: str, url: str | None, body: Any = None) -> Any:
    """One admin API call with the configured token; the JSON answer."""
    return http(method, server_url(settings, url), path, admin_token(settings), body).json()


def http(
    method: str,
    base: str,
    path: str,
    token: str | None,
    body: dict[str, Any] | None = None,
    accept: tuple[int, ...] = (),
) -> httpx.Response:
    """The answer to one call; an error status other than those in `accept` ends the
    command with the problem's detail."""
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, base + path, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the server at {base}: {exc}") from None
    if response.status_code >= 400 and response.status_code not in accept:
        try:
            problem = response.json()
            detail = problem.get("detail", response.text)
            for item in problem.get("errors") or []:
                detail += f"\n  {item.get('detail')}"
        except ValueError:
            detail = response.text
        raise CliError(f"{method} {path}: {response.status_code}: {detail}")
    return response


# -- store and bundles ------------------------------------------------------------------------


def store_engine(settings: Settings, *, remote: bool = False) -> Any:
    """The local store's engine, or a CliError saying where it looked and what to do; `remote`:
    the command also takes --url, so the error offers it."""
    from trustplane.store.database import create_store_engine, is_migrated, sqlite_path

    url = settings.effective_database_url
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        # checked first: opening SQLite would create an empty file
        raise CliError(missing_store(settings, remote))
    engine = create_store_engine(url)
    if not is_migrated(engine):
        engine.dispose()
        raise CliError(missing_store(settings, remote))
    return engine


def missing_store(settings: Settings, remote: bool = False) -> str:
    """Why there is no store, where it was looked for, and what to do. `init` is advised only
    where it plausibly belongs: the store's location was configured (flag, environment or
    config file), its state directory exists, or a trustplane.toml is here. Anywhere else the
    likelier mistake is the directory, not a missing `init`."""
    from sqlalchemy.engine import make_url

    from trustplane.config import DEFAULT_CONFIG_FILE
    from trustplane.store.database import sqlite_path

    url = settings.effective_database_url
    path = sqlite_path(url)
    elsewhere = ", or ask a server with --url URL" if remote else ""
    if path is None:
        shown = make_url(url).render_as_string(hide_password=True)
        return (
            f"the database {shown} holds no trustplane store: run `trustplane init` with this "
            f"database_url to create it{elsewhere}"
        )
    looked = path.absolute()
    configured = "state_dir" in settings.model_fields_set or settings.store.url is not None
    if configured or settings.state_dir.is_dir() or Path(DEFAULT_CONFIG_FILE).is_file():
        return f"no trustplane store at {looked}: run `trustplane init` to create it{elsewhere}"
    return (
        f"no trustplane store here: looked for {looked} (state_dir {settings.state_dir} is "
        f"relative to the current directory, {Path.cwd()}); run this in the directory that "
        "holds the store, or point TRUSTPLANE_STATE_DIR or TRUSTPLANE_STORE__URL "
        f"(or `trustplane --state-dir DIR …`) at it{elsewhere}"
    )


def bundle_source(directory: Path) -> BundleSource:
    from trustplane.decision.policy_bundle import BundleSource

    if not directory.is_dir():
        raise CliError(f"bundle directory {directory} does not exist")
    return BundleSource.from_dir(directory)


def load_options(settings: Settings, run_tests: bool = True) -> LoadOptions:
    from trustplane.decision.loader import LoadOptions
    from trustplane.decision.signing import SigningError, load_trusted_key
    from trustplane.governance.catalog import BUNDLE_FILES
    from trustplane.trust.policy import BUNDLE_FILES as TRUST_FILES

    try:
        keys = [load_trusted_key(p) for p in settings.policy.trusted_key_files]
    except SigningError as exc:
        raise CliError(str(exc)) from None
    return LoadOptions(
        trusted_keys=keys,
        expiry_warning_days=settings.policy.expiry_warning_days,
        run_tests=run_tests,
        extra_files=BUNDLE_FILES + TRUST_FILES,
    )


# -- failures ---------------------------------------------------------------------------------


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {message}", highlight=False)
    raise SystemExit(2)


# The errors `main` prints as one line (exit 2), named rather than imported: each lives in a
# module that a command loads only when it needs it, and an exception can only be an instance
# of a class whose module is already loaded, so nothing is imported to test for one.
ONE_LINE_ERRORS = (
    ("trustplane.config", "ConfigError"),
    ("trustplane.identity.kek", "KekError"),
    ("trustplane.store.database", "StoreError"),
    ("trustplane.server.runtime", "NotInitialisedError"),
    ("trustplane.decision.signing", "SigningError"),
    ("trustplane.telemetry.checkpoint", "CheckpointError"),
    ("trustplane.telemetry.ledger", "LedgerError"),
    ("trustplane.server.admin_auth", "AdminPolicyError"),
)


def is_loaded_error(exc: BaseException, module: str, name: str) -> bool:
    loaded = sys.modules.get(module)
    cls = getattr(loaded, name, None) if loaded is not None else None
    return isinstance(cls, type) and isinstance(exc, cls)


def exit_for(exc: Exception) -> None:
    """Turn an error the CLI knows into its message and exit code (1 for a refused bundle,
    2 for the rest, 0 for a closed pipe); return for anything else, which the caller re-raises
    as a bug."""
    if is_loaded_error(exc, "trustplane.decision.policy_bundle", "BundleError"):
        problems = exc.problems  # type: ignore[attr-defined]
        err.print(f"[red]bundle refused[/] ({len(problems)} problem(s)):", highlight=False)
        for problem in problems:
            err.print(f"  {problem}", highlight=False, markup=False)
        raise SystemExit(1) from None
    if isinstance(exc, CliError) or any(
        is_loaded_error(exc, module, name) for module, name in ONE_LINE_ERRORS
    ):
        fail(str(exc))
    if isinstance(exc, BrokenPipeError):
        raise SystemExit(0) from None
