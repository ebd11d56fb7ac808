"""What every `trustplane` command shares: the consoles, the option types, the root context
(config file and overrides), one way to print (`emit`), admin API calls, store access and the
errors that end a command.

Imported by `--help` itself, so nothing here imports more than Typer and Rich at module level:
each helper imports what it needs when it is called (`tests/cli/test_cli_imports.py`).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from trustplane.errors import TrustplaneError

if TYPE_CHECKING:
    import httpx
    from rich.table import Table

    from trustplane.config import Settings
    from trustplane.decision.loader import LoadOptions
    from trustplane.decision.policy_bundle import BundleSource

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
UrlOpt = Annotated[str | None, typer.Option("--url", help="Server URL.")]

Doc = TypeVar("Doc")


class CliError(TrustplaneError):
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
    sys.stdout.write(json.dumps(json_times(value), indent=2, default=str) + "\n")


# Fields that hold a moment. The admin API and the stores keep epoch seconds; every time the CLI
# prints in JSON is RFC 3339 in UTC, as the ledger's own `time` is.
_MOMENTS = {"not_after", "not_before", "first_seen", "last_seen"}


def json_times(value: Any) -> Any:
    """`value` with every moment (a number under a key ending in `_at`, or one of `_MOMENTS`)
    written as RFC 3339 in UTC with a Z."""
    if isinstance(value, dict):
        return {
            key: rfc3339(item) if _is_moment(key, item) else json_times(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [json_times(item) for item in value]
    return value


def _is_moment(key: Any, item: Any) -> bool:
    if not isinstance(item, int | float) or isinstance(item, bool):
        return False
    return isinstance(key, str) and (key.endswith("_at") or key in _MOMENTS)


def rfc3339(ts: float) -> str:
    """UTC with microseconds and a Z, e.g. 2026-11-22T07:16:22.123456Z (the ledger's form)."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def emit(doc: Doc, as_json: bool, render: Callable[[Doc], None], lines: bool = False) -> None:
    """Print a command's answer: the document as JSON for scripts, or `render(doc)` for
    people. Every command prints through here, so both forms come from the same document.
    With `lines`, `doc` is a list written as JSON Lines (one record a line, for `tail -f`)."""
    if not as_json:
        render(doc)
    elif lines:
        for item in doc:  # type: ignore[attr-defined]
            sys.stdout.write(json.dumps(json_times(item), default=str) + "\n")
    else:
        emit_json(doc)


def id_table(*headers: str, whole: int = 1, **options: Any) -> Table:
    """A table whose first `whole` columns (ids and names people type back) are never wrapped
    or cut; the others fold to fit the terminal, 80 columns included."""
    from rich.table import Table

    made = Table(**options)
    for index, header in enumerate(headers):
        if index < whole:
            made.add_column(header, no_wrap=True)
        else:
            made.add_column(header, overflow="fold")
    return made


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {warning}")


# -- ids ----------------------------------------------------------------------------------------

_FULL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def resolve_prefix(typed: str, candidates: Iterable[str], what: str) -> str:
    """The one id among `candidates` that `typed` names: the id itself or the only one it
    starts. Tables print ids whole and people paste or type the first few characters; a prefix
    that fits none, or several, ends the command naming what it could be."""
    typed = typed.strip()
    ids = sorted(set(candidates))
    if typed in ids:
        return typed
    matches = [c for c in ids if c.lower().startswith(typed.lower())] if typed else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = f"; known: {_some(ids)}" if 0 < len(ids) <= 5 else ""
        raise CliError(f"no {what} id starts with {typed!r}{known}")
    raise CliError(
        f"{what} id prefix {typed!r} is ambiguous: it starts {_some(matches)}; give more characters"
    )


def _some(ids: list[str], most: int = 10) -> str:
    more = f" and {len(ids) - most} more" if len(ids) > most else ""
    return ", ".join(ids[:most]) + more


def is_whole_id(typed: str) -> bool:
    """A whole UUID (every trustplane id but bundle revisions is one): no lookup needed."""
    return _FULL_UUID.fullmatch(typed.strip().lower()) is not None


def resolve_admin_id(
    settings: Settings,
    url: str | None,
    typed: str,
    what: str,
    list_path: str,
    ids: Callable[[Any], Iterable[str]],
) -> str:
    """`resolve_prefix` against the ids the admin API lists at `list_path` (`ids` picks them
    out of the answer). A whole UUID is taken as typed, without the extra call."""
    if is_whole_id(typed):
        return typed.strip().lower()
    return resolve_prefix(typed, ids(admin(settings, "GET", list_path, url)), what)


# -- server client ----------------------------------------------------------------------------


def server_url(settings: Settings, url: str | None) -> str:
    """The server to call: --url, cli.server_url, or this configuration's own server — over
    HTTPS when it serves TLS, trusting its own certificate besides the system's CAs."""
    scheme = "https" if settings.tls.enabled else "http"
    default = f"{scheme}://{settings.server.host}:{settings.server.port}"
    own = settings.tls.cert_file or settings.state_dir / "tls" / "serving.pem"
    if settings.tls.enabled and own.is_file() and own not in _TRUSTED:
        _TRUSTED.append(own)
    return (url or settings.cli.server_url or default).rstrip("/")


# Certificates the CLI trusts besides the system's: the server's own, from the settings
# (`server_url` adds them), so a self-signed or CA-issued serving certificate just works.
_TRUSTED: list[Path] = []


def _tls_context() -> Any:
    import ssl

    context = ssl.create_default_context()
    for path in _TRUSTED:
        with contextlib.suppress(ssl.SSLError, OSError):  # not a CA: the system's may still do
            context.load_verify_locations(cafile=str(path))
    return context


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

    def call(base: str) -> httpx.Response:
        return httpx.request(
            method,
            base + path,
            json=body,
            headers=headers,
            timeout=30,
            follow_redirects=True,  # e.g. a proxy that sends http:// on to https://
            verify=_tls_context() if base.startswith("https:") else True,
        )

    try:
        try:
            response = call(base)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            if not base.startswith("http://"):
                raise
            # A plain-HTTP request to a port that serves TLS is dropped: ask again over HTTPS.
            base = "https://" + base.removeprefix("http://")
            response = call(base)
    except httpx.ConnectError as exc:
        if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
            raise CliError(f"cannot reach the server at {base}: {exc}") from None
        raise CliError(
            f"the server at {base} presented a certificate this machine does not trust "
            f"({exc}); point SSL_CERT_FILE at the CA that issued it"
        ) from None
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the server at {base}: {exc}") from None
    if response.status_code >= 400 and response.status_code not in accept:
        try:
            problem = response.json()
            detail = problem.get("detail", response.text)
            for item in problem.get("errors") or []:
                extra = item.get("detail")
                if extra and extra not in detail:  # a one-field problem repeats its detail
                    detail += f"\n  {extra}"
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
    from trustplane.rollout.policy import BUNDLE_FILES as ROLLOUT_FILES
    from trustplane.trust.policy import BUNDLE_FILES as TRUST_FILES

    try:
        keys = [load_trusted_key(p) for p in settings.policy.trusted_key_files]
    except SigningError as exc:
        raise CliError(str(exc)) from None
    return LoadOptions(
        trusted_keys=keys,
        expiry_warning_days=settings.policy.expiry_warning_days,
        run_tests=run_tests,
        extra_files=BUNDLE_FILES + TRUST_FILES + ROLLOUT_FILES,
    )


# -- failures ---------------------------------------------------------------------------------


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/] {message}", highlight=False)
    raise SystemExit(code)


def exit_for(exc: Exception) -> None:
    """Turn a refusal (any `TrustplaneError`) into its message, detail lines and exit code
    (1 for a refused bundle, 2 for the rest), a closed pipe into 0; return for anything else,
    which the caller re-raises as a bug."""
    if isinstance(exc, TrustplaneError):
        details = exc.details()
        if not details:
            fail(str(exc), exc.exit_code)
        err.print(f"[red]{escape(exc.headline())}[/]:", highlight=False)
        for line in details:
            err.print(f"  {line}", highlight=False, markup=False)
        raise SystemExit(exc.exit_code) from None
    if isinstance(exc, BrokenPipeError):
        raise SystemExit(0) from None
