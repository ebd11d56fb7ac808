"""`trustplane …`: thin commands over the planes. Rich output for people, `--json` for scripts.

Exit codes: 0 success (or allow), 1 a negative answer (deny, failed test, failed verification),
2 a usage, configuration or input error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trustplane import __version__
from trustplane.cli.scan import scan as scan_command

if TYPE_CHECKING:
    import httpx

    from trustplane.config import Settings
    from trustplane.decision.loader import LoadedBundle, LoadOptions
    from trustplane.decision.policy_bundle import BundleSource
    from trustplane.model import AccessRequest
    from trustplane.telemetry.ledger import Ledger


app = typer.Typer(
    name="trustplane",
    help="A Zero Trust control plane: Cedar policy decisions with a tamper-evident ledger.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
policy_app = typer.Typer(
    help="Validate, test, format, sign and roll back policy bundles.", no_args_is_help=True
)
audit_app = typer.Typer(help="Verify, export and follow the decision ledger.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.command("scan")(scan_command)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
UrlOpt = Annotated[str | None, typer.Option("--url", help="Server URL.")]


class CliError(Exception):
    """An error to print as one line and exit 2."""


@dataclass
class Context:
    config: Path | None
    overrides: dict[str, Any]

    def settings(self, **extra: Any) -> Settings:
        from trustplane.config import load_settings

        return load_settings(self.config, {**self.overrides, **extra})


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
    ctx.obj = Context(config, {"state_dir": state_dir, "database_url": database_url})


def _ctx(ctx: typer.Context) -> Context:
    obj = ctx.find_root().obj
    assert isinstance(obj, Context)
    return obj


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


# -- init / serve -----------------------------------------------------------------------------


@app.command()
def init(
    ctx: typer.Context,
    new_token: Annotated[bool, typer.Option(help="Issue another bootstrap admin token.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create the state directory, ledger signing key, database schema and admin token."""
    from trustplane.server.runtime import initialise

    settings = _ctx(ctx).settings()
    result = initialise(settings, new_token=new_token)
    if as_json:
        _emit_json(
            {
                "state_dir": str(result.state_dir),
                "database_url": result.database_url,
                "admin_token_file": str(settings.admin_token_file) if result.admin_token else None,
                "ledger_verifier_key": result.verifier_key,
                "identity_keys_created": list(result.identity_keys_created),
            }
        )
        return
    out.print(f"[green]✓[/] state directory [bold]{result.state_dir}[/]")
    out.print(f"[green]✓[/] database {result.database_url}")
    out.print(f"[green]✓[/] ledger verifier key {result.verifier_key}")
    if result.admin_token:
        out.print(f"[green]✓[/] new admin token written to {settings.admin_token_file} (0600)")
    for key in result.identity_keys_created:
        out.print(f"[green]✓[/] trust domain {settings.trust_domain}: created {key}")


class LedgerDurability(StrEnum):
    """The choices of `config.Durability`, repeated here so `--help` need not import the
    settings (pydantic); `tests/cli/test_cli_imports.py` keeps the two in step."""

    BATCH = "batch"
    SYNC = "sync"


@app.command()
def serve(
    ctx: typer.Context,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", "-b", help="Policy bundle directory to serve.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    durability: Annotated[LedgerDurability | None, typer.Option(help="Ledger durability.")] = None,
    watch: Annotated[
        bool | None, typer.Option("--watch/--no-watch", help="Reload when bundle files change.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Serving processes (default 1; one per core is typical).")
    ] = None,
    init_if_needed: Annotated[
        bool, typer.Option("--init", help="Run `init` first if the state directory is new.")
    ] = False,
    allow_unauthenticated_peps: Annotated[
        bool | None,
        typer.Option(
            "--allow-unauthenticated-peps",
            help="Serve beyond loopback without pep_auth=required (anyone who can connect "
            "gets decisions).",
        ),
    ] = None,
) -> None:
    """Serve decisions (AuthZEN), the admin API and metrics."""
    from trustplane.enforcement.pep import check_listen_policy
    from trustplane.server.runtime import initialise
    from trustplane.server.serve import ServeError, preflight
    from trustplane.server.serve import serve as run_server

    settings = _ctx(ctx).settings(
        bundle_dir=bundle,
        host=host,
        port=port,
        durability=None if durability is None else durability.value,
        watch=watch,
        workers=workers,
        allow_unauthenticated_peps=allow_unauthenticated_peps,
    )
    check_listen_policy(settings)
    preflight(settings)  # before `--init` creates anything
    if init_if_needed and not settings.ledger_key_file.exists():
        initialise(settings)
    if settings.grpc_enabled:
        from trustplane.enforcement.native import require_transport

        require_transport(settings)
    scheme = "https" if settings.tls_cert_file or settings.tls_from_ca else "http"
    err.print(
        f"trustplane serving [bold]{settings.bundle_dir}[/] on "
        f"{scheme}://{settings.host}:{settings.port} "
        f"(ledger: {settings.durability.value}, "
        f"workers: {settings.workers})"
    )
    try:
        run_server(settings)
    except ServeError as exc:
        raise CliError(str(exc)) from None


# -- check ------------------------------------------------------------------------------------


@app.command()
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
        settings = _ctx(ctx).settings(bundle_dir=bundle)
        if settings.bundle_dir is None:
            raise CliError("pass --bundle DIR (local evaluation) or --url URL (a running server)")
        when = None
        if at is not None:
            when = parse_rfc3339(at)
            if when is None:
                raise CliError(f"--at {at!r} is not an RFC 3339 time with offset")
        loaded = load_bundle(_bundle_source(settings.bundle_dir), _load_options(settings))
        decision_doc = loaded.evaluator.evaluate(access, at=when).as_dict()
    if as_json:
        _emit_json({"request": access.as_document(), **decision_doc})
    else:
        _print_decision(decision_doc)
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
    response = _http("POST", url, "/access/v1/evaluation", None, body)
    doc = response.json()
    details = doc.get("context", {})
    return {"decision": "allow" if doc.get("decision") else "deny", **details}


def _print_decision(doc: dict[str, Any]) -> None:
    allowed = doc["decision"] == "allow"
    colour = "green" if allowed else "red"
    out.print(
        f"[bold {colour}]{doc['decision'].upper()}[/]  decision {doc.get('decision_id')}  "
        f"revision {str(doc.get('revision') or '-')[:12]}"
    )
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
        out.print(table)
    elif not allowed:
        out.print("  no policy permits this request (default deny)")
    for error in doc.get("errors") or []:
        out.print(f"  [red]error:[/] {error}")
    shadow = doc.get("shadow") or {}
    if shadow:
        same = shadow.get("decision") == doc["decision"]
        note = "same as enforced" if same else "[yellow]differs from enforced[/]"
        out.print(f"shadow: {shadow.get('decision')} ({note})")
        for r in shadow.get("would_change") or []:
            out.print(
                f"  observe-mode policy [bold]{r['policy']}[/] ({r['owner']}) would change "
                f"the answer: {r.get('description', '')}"
            )


# -- policy -----------------------------------------------------------------------------------


def _load_options(settings: Settings, run_tests: bool = True) -> LoadOptions:
    from trustplane.decision.loader import LoadOptions
    from trustplane.decision.signing import SigningError, load_trusted_key
    from trustplane.governance.catalog import BUNDLE_FILES
    from trustplane.trust.policy import BUNDLE_FILES as TRUST_FILES

    try:
        keys = [load_trusted_key(p) for p in settings.trusted_bundle_keys]
    except SigningError as exc:
        raise CliError(str(exc)) from None
    return LoadOptions(
        trusted_keys=keys,
        expiry_warning_days=settings.expiry_warning_days,
        run_tests=run_tests,
        extra_files=BUNDLE_FILES + TRUST_FILES,
    )


BundleArg = Annotated[Path, typer.Argument(help="Bundle directory.")]


def _bundle_source(directory: Path) -> BundleSource:
    from trustplane.decision.policy_bundle import BundleSource

    if not directory.is_dir():
        raise CliError(f"bundle directory {directory} does not exist")
    return BundleSource.from_dir(directory)


def _load_for_json(directory: Path, settings: Settings, as_json: bool) -> LoadedBundle:
    """Load without running tests; with --json a refused bundle is a JSON document on stdout
    (`valid: false` and every problem) and exit 1, so scripts read one stream."""
    from trustplane.decision.loader import load_bundle
    from trustplane.decision.policy_bundle import BundleError

    try:
        return load_bundle(_bundle_source(directory), _load_options(settings, False))
    except BundleError as exc:
        if not as_json:
            raise
        _emit_json({"valid": False, "problems": [p.as_dict() for p in exc.problems]})
        raise typer.Exit(1) from None


@policy_app.command("validate")
def policy_validate(ctx: typer.Context, directory: BundleArg, as_json: JsonOpt = False) -> None:
    """Parse, check annotations and validate against the schema (no tests)."""
    settings = _ctx(ctx).settings()
    bundle = _load_for_json(directory, settings, as_json).bundle
    if as_json:
        _emit_json(
            {
                "valid": True,
                "name": bundle.name,
                "revision": bundle.revision,
                "policies": [p.summary() for p in bundle.policies],
                "warnings": [w.as_dict() for w in bundle.warnings],
                "problems": [],
            }
        )
        return
    _print_warnings([str(w) for w in bundle.warnings])
    out.print(
        f"[green]✓[/] {bundle.name}: {len(bundle.policies)} policies valid, "
        f"revision {bundle.revision[:12]}"
    )


@policy_app.command("test")
def policy_test(
    ctx: typer.Context,
    directory: BundleArg,
    as_json: JsonOpt = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show every test, not only failures.")
    ] = False,
    keyword: Annotated[
        str | None,
        typer.Option("-k", help="Run only tests whose name contains this text (any case)."),
    ] = None,
) -> None:
    """Run the bundle's tests and report coverage (policies no test reaches); exit 1 if any
    test fails."""
    from trustplane.decision.testing import coverage, run_tests

    settings = _ctx(ctx).settings()
    loaded = _load_for_json(directory, settings, as_json)
    tests = loaded.bundle.tests
    if keyword is not None:
        tests = [t for t in tests if keyword.lower() in t.name.lower()]
        if not tests:
            raise CliError(f"no test name contains {keyword!r} ({len(loaded.bundle.tests)} tests)")
    results = run_tests(loaded.evaluator, tests)
    failed = [r for r in results if not r.passed]
    covered = coverage(loaded.bundle.policies, results)
    if as_json:
        _emit_json(
            {
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "results": [r.as_dict() for r in results],
                "coverage": covered.as_dict(),
            }
        )
    else:
        if verbose:
            table = Table("", "test", "decision", "shadow")
            table.add_column("determining", overflow="fold")
            for r in results:
                mark = "[green]✓[/]" if r.passed else "[red]✗[/]"
                table.add_row(
                    mark,
                    f"{r.test.name}\n[dim]{r.test.file}:{r.test.line}[/]",
                    r.decision.effect.value,
                    r.decision.shadow_effect.value,
                    ", ".join(sorted(x.policy_id for x in r.decision.reasons)),
                )
            out.print(table)
        for r in failed:
            out.print(
                f"[red]FAIL[/] {r.test.file}:{r.test.line} {r.test.name}: {'; '.join(r.failures)}",
                highlight=False,
            )
        out.print(
            f"{len(results) - len(failed)} passed, {len(failed)} failed; coverage "
            f"{len(covered.reached)}/{covered.total} policies",
            highlight=False,
        )
        for info in covered.missed:
            out.print(
                f"  [yellow]not reached[/] {info.policy_id} ({info.file}:{info.line})",
                highlight=False,
            )
    if failed:
        raise typer.Exit(1)


@policy_app.command("new")
def policy_new(
    directory: Annotated[Path, typer.Argument(help="Directory to create (must not exist).")],
    name: Annotated[
        str | None, typer.Option(help="Bundle name (default: the directory's).")
    ] = None,
) -> None:
    """Scaffold a bundle that validates and passes its tests: schema, one policy, entities,
    a test file and trustplane.yaml, ready to edit."""
    from trustplane.decision.scaffold import write_scaffold

    if directory.exists():
        raise CliError(f"{directory} exists; `policy new` only creates a new directory")
    files = write_scaffold(directory, name or directory.name)
    out.print(f"[green]✓[/] created {directory} ({', '.join(files)})")
    out.print(f"  next: trustplane policy test {directory}")


@policy_app.command("verify")
def policy_verify(
    directory: BundleArg,
    keys: Annotated[
        list[Path], typer.Option("--key", help="Ed25519 public key (PEM); repeat for several.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Check bundle.sig against trusted public keys, locally: exit 0 when a key signed exactly
    these files, 1 otherwise, naming what does not match."""
    from trustplane.decision.signing import load_trusted_key, verify_bundle

    trusted = [load_trusted_key(k) for k in keys]
    source = _bundle_source(directory)
    problems = verify_bundle(source, trusted)
    if as_json:
        _emit_json(
            {
                "verified": not problems,
                "revision": source.revision,
                "keys": [k.key_id for k in trusted],
                "problems": [p.as_dict() for p in problems],
            }
        )
    elif problems:
        for problem in problems:
            err.print(f"[red]✗[/] {problem}", highlight=False, markup=False)
    else:
        out.print(
            f"[green]✓[/] signature valid: revision {source.revision} "
            f"({len(source.manifest())} files)",
            highlight=False,
        )
    if problems:
        raise typer.Exit(1)


@policy_app.command("fmt")
def policy_fmt(
    directory: BundleArg,
    check_only: Annotated[
        bool, typer.Option("--check", help="Only report files that need formatting (exit 1).")
    ] = False,
) -> None:
    """Format every .cedar file with Cedar's formatter."""
    import cedarpy

    if not directory.is_dir():
        raise CliError(f"bundle directory {directory} does not exist")
    changed = []
    for path in sorted(directory.rglob("*.cedar")):
        original = path.read_text()
        try:
            formatted = cedarpy.format_policies(original)
        except ValueError as exc:
            raise CliError(f"{path}: cannot format: {exc}") from None
        if formatted != original:
            changed.append(path)
            if not check_only:
                path.write_text(formatted)
    verb = "would reformat" if check_only else "reformatted"
    for path in changed:
        out.print(f"{verb} {path}")
    out.print(f"{len(changed)} file(s) {verb}")
    if check_only and changed:
        raise typer.Exit(1)


@policy_app.command("keygen")
def policy_keygen(
    out_prefix: Annotated[Path, typer.Option("--out", help="Writes PREFIX.key and PREFIX.pub.")],
) -> None:
    """Create an Ed25519 key pair for signing bundles."""
    from trustplane.decision.signing import generate_keypair

    private, public = out_prefix.with_suffix(".key"), out_prefix.with_suffix(".pub")
    if private.exists():
        raise CliError(f"{private} exists; refusing to overwrite a key")
    key_id = generate_keypair(private, public)
    out.print(f"[green]✓[/] key {key_id}: private {private} (0600), public {public}")


@policy_app.command("sign")
def policy_sign(
    directory: BundleArg,
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM).")],
) -> None:
    """Write bundle.sig: a detached signature over every bundle file's hash."""
    from trustplane.decision.policy_bundle import SIGNATURE_FILE
    from trustplane.decision.signing import load_private_key, sign_bundle

    private_key = load_private_key(key)
    source = _bundle_source(directory)
    (directory / SIGNATURE_FILE).write_bytes(sign_bundle(source, private_key))
    out.print(
        f"[green]✓[/] signed {len(source.manifest())} files, revision "
        f"{source.revision[:12]} → {directory / SIGNATURE_FILE}"
    )


@policy_app.command("status")
def policy_status(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The active bundle on a running server, its policies and the activation history."""
    settings = _ctx(ctx).settings()
    status = _admin(settings, "GET", "/v1/bundle", url)
    history = _admin(settings, "GET", "/v1/bundle/revisions", url)
    if as_json:
        _emit_json({**status, **history})
        return
    active = status.get("active")
    if active is None:
        out.print("[red]no active bundle[/]")
    else:
        out.print(
            f"active: [bold]{active['name']}[/] revision {active['revision'][:12]} — "
            f"{len(active['policies'])} policies, tests "
            f"{active['tests']['passed']}/{active['tests']['total']}"
        )
        table = Table("policy", "effect", "mode", "owner", "tier", "expires")
        table.columns[0].overflow = "fold"
        for p in active["policies"]:
            table.add_row(
                p["id"], p["effect"], p["mode"], p["owner"], p["tier"] or "", p["expires"] or ""
            )
        out.print(table)
    if status.get("last_error"):
        out.print("[red]last load refused:[/]")
        for problem in status["last_error"]:
            out.print(f"  {problem['file']}:{problem['line'] or ''} {problem['message']}")
    table = Table("when", "revision", "name", "reason", title="activations", title_justify="left")
    for a in history["activations"][:10]:
        table.add_row(_when(a["activated_at"]), a["revision"][:12], a["name"], a["reason"])
    out.print(table)


@policy_app.command("rollback")
def policy_rollback(
    ctx: typer.Context,
    to: Annotated[str | None, typer.Option(help="Revision (or prefix) to return to.")] = None,
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Return the running server to the previously active revision (or --to one)."""
    settings = _ctx(ctx).settings()
    body = {"to": to} if to else {}
    result = _admin(settings, "POST", "/v1/bundle/rollback", url, body)
    if as_json:
        _emit_json(result)
        return
    active = result["active"]
    out.print(
        f"[green]✓[/] rolled back: {active['name']} revision {active['revision'][:12]} is active"
    )


@policy_app.command("reload")
def policy_reload(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
) -> None:
    """Ask the running server to reload its bundle directory."""
    settings = _ctx(ctx).settings()
    result = _admin(settings, "POST", "/v1/bundle/reload", url)
    out.print(f"[green]✓[/] active revision {result['active']['revision'][:12]}")


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {warning}")


# -- server client ----------------------------------------------------------------------------


def _server(settings: Settings, url: str | None) -> str:
    return (url or settings.server_url or f"http://{settings.host}:{settings.port}").rstrip("/")


def _token(settings: Settings) -> str:
    if settings.admin_token:
        return settings.admin_token
    try:
        return settings.admin_token_file.read_text().strip()
    except FileNotFoundError:
        raise CliError(
            f"no admin token: {settings.admin_token_file} is missing; run "
            "`trustplane init` or set TRUSTPLANE_ADMIN_TOKEN"
        ) from None


def _admin(settings: Settings, method: str, path: str, url: str | None, body: Any = None) -> Any:
    """One admin API call with the configured token; the JSON answer."""
    return _http(method, _server(settings, url), path, _token(settings), body).json()


def _http(
    method: str, base: str, path: str, token: str | None, body: dict[str, Any] | None = None
) -> httpx.Response:
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, base + path, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the server at {base}: {exc}") from None
    if response.status_code >= 400:
        try:
            problem = response.json()
            detail = problem.get("detail", response.text)
            for item in problem.get("errors") or []:
                detail += f"\n  {item.get('detail')}"
        except ValueError:
            detail = response.text
        raise CliError(f"{method} {path}: {response.status_code}: {detail}")
    return response


# -- audit / decisions ------------------------------------------------------------------------


def _store_engine(settings: Settings) -> Any:
    from trustplane.store.database import create_store_engine, is_migrated, sqlite_path

    url = settings.effective_database_url
    missing = CliError(f"no trustplane store at {url}: run `trustplane init`")
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise missing  # checked first: opening SQLite would create an empty file
    engine = create_store_engine(url)
    if not is_migrated(engine):
        engine.dispose()
        raise missing
    return engine


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    key: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint verifier key (default: every key in state_dir/ledger.pub).",
        ),
    ] = None,
    require_checkpointed: Annotated[
        bool,
        typer.Option(
            "--require-checkpointed",
            help="Fail when any record is not yet covered by a signed checkpoint.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the Merkle tree from the store, check every signed checkpoint and every
    record's query columns; report the records no checkpoint covers yet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from sqlalchemy import func, select

    from trustplane.server.runtime import load_verifier
    from trustplane.store.tables import decisions as decisions_table
    from trustplane.telemetry.checkpoint import CheckpointError
    from trustplane.telemetry.ledger import verify_ledger

    settings = _ctx(ctx).settings()
    try:
        verifier = load_verifier(settings, key)
    except CheckpointError as exc:
        raise CliError(f"bad verifier key: {exc}") from None
    engine = _store_engine(settings)
    with engine.connect() as connection:
        total = connection.execute(select(func.count()).select_from(decisions_table)).scalar()
    started = time.perf_counter()
    with Progress(
        TextColumn("verifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=as_json or not err.is_terminal,
        transient=True,
    ) as progress:
        task = progress.add_task("verify", total=total)
        report = verify_ledger(
            engine,
            verifier,
            progress=lambda n: progress.update(task, completed=n),
            require_checkpointed=require_checkpointed,
        )
    elapsed = time.perf_counter() - started
    engine.dispose()
    if as_json:
        _emit_json({**report.as_dict(), "seconds": round(elapsed, 3)})
    else:
        for problem in report.problems or []:
            out.print(f"[red]✗[/] {escape(problem)}", highlight=False)
        if report.not_listed:
            out.print(f"[red]✗[/] … and {report.not_listed} more problems not listed")
        status = "[green]✓ ledger intact[/]" if report.intact else "[red]✗ ledger tampered[/]"
        out.print(
            f"{status}: {report.records} records, {report.checkpoints} checkpoints "
            f"verified in {elapsed:.2f}s; {report.proven} records proven by a signed checkpoint"
            + (
                f"; {report.quarantined} quarantined (kept in ledger_quarantine: the store "
                "refused them as rows)"
                if report.quarantined
                else ""
            )
        )
        if report.unanchored:
            mark = "[red]✗[/]" if require_checkpointed else "[yellow]![/]"
            out.print(f"{mark} {report.unproven_line()}", highlight=False)
            if require_checkpointed:
                out.print(
                    "[red]✗ not every record is checkpointed[/] (--require-checkpointed)",
                    highlight=False,
                )
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("proof")
def audit_proof(
    ctx: typer.Context,
    decision_id: Annotated[str, typer.Argument(help="Decision id to prove.")],
    tree_size: Annotated[
        int | None, typer.Option(help="Tree size (default: newest checkpoint).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Checkpoint verifier key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """RFC 9162 inclusion proof of a decision in a signed checkpoint, verified here."""
    from trustplane.server.runtime import load_verifier

    settings = _ctx(ctx).settings()
    verifier = load_verifier(settings, key)
    with _read_only_ledger(settings) as ledger:
        proof = ledger.inclusion_proof(decision_id, tree_size)
    _report_proof(
        proof,
        _verify_inclusion_doc(proof, verifier),
        as_json,
        f"decision {decision_id} is leaf {proof['leaf_index']} of a tree of size "
        f"{proof['tree_size']}; audit path of {len(proof['inclusion_path'])} hashes",
        "inclusion verified against the signed checkpoint",
        "inclusion proof does not verify",
    )


@audit_app.command("consistency")
def audit_consistency(
    ctx: typer.Context,
    first: Annotated[int, typer.Argument(help="Older tree size.")],
    second: Annotated[
        int | None, typer.Argument(help="Newer tree size (default: newest checkpoint).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Checkpoint verifier key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """RFC 9162 consistency proof between two checkpoints, verified here."""
    from trustplane.server.runtime import load_verifier

    settings = _ctx(ctx).settings()
    verifier = load_verifier(settings, key)
    with _read_only_ledger(settings) as ledger:
        proof = ledger.consistency_proof(first, second)
        if first and proof["first_checkpoint"] is None:
            sizes = sorted(c.size for c in ledger.list_checkpoints(limit=10))
            raise CliError(
                f"no signed checkpoint at size {first}; recent checkpoint sizes: "
                f"{', '.join(map(str, sizes)) or 'none'}"
            )
    _report_proof(
        proof,
        _verify_consistency_doc(proof, verifier),
        as_json,
        f"tree {proof['first']} → {proof['second']}: consistency path of "
        f"{len(proof['consistency_path'])} hashes",
        "the newer checkpoint extends the older one",
        "consistency proof does not verify",
    )


@contextlib.contextmanager
def _read_only_ledger(settings: Settings) -> Iterator[Ledger]:
    """The store's ledger without its signing key: proofs and queries only."""
    from trustplane.telemetry.ledger import Ledger, LedgerError

    engine = _store_engine(settings)
    try:
        yield Ledger(engine, None, settings.ledger_origin)
    except LedgerError as exc:
        raise CliError(str(exc)) from None
    finally:
        engine.dispose()


def _report_proof(
    proof: dict[str, Any], verified: bool, as_json: bool, summary: str, good: str, bad: str
) -> None:
    if as_json:
        _emit_json({**proof, "verified": verified})
    else:
        out.print(summary)
        out.print(f"[green]✓ {good}[/]" if verified else f"[red]✗ {bad}[/]")
    if not verified:
        raise typer.Exit(1)


def _verify_inclusion_doc(proof: dict[str, Any], verifier: Any) -> bool:
    from trustplane.telemetry.checkpoint import CheckpointError, open_checkpoint
    from trustplane.telemetry.merkle import verify_inclusion

    if proof["checkpoint"] is None:
        return False
    try:
        checkpoint = open_checkpoint(proof["checkpoint"], verifier)
    except CheckpointError:
        return False
    path = [base64.b64decode(h) for h in proof["inclusion_path"]]
    return checkpoint.size == proof["tree_size"] and verify_inclusion(
        base64.b64decode(proof["leaf_hash"]),
        proof["leaf_index"],
        checkpoint.size,
        path,
        checkpoint.root_hash,
    )


def _verify_consistency_doc(proof: dict[str, Any], verifier: Any) -> bool:
    from trustplane.telemetry.checkpoint import CheckpointError, open_checkpoint
    from trustplane.telemetry.merkle import verify_consistency

    try:
        old = open_checkpoint(proof["first_checkpoint"], verifier) if proof["first"] else None
        new = open_checkpoint(proof["second_checkpoint"], verifier)
    except (CheckpointError, TypeError):
        return False
    old_root = old.root_hash if old else base64.b64decode(proof["first_root"])
    path = [base64.b64decode(h) for h in proof["consistency_path"]]
    return verify_consistency(proof["first"], new.size, old_root, new.root_hash, path)


@audit_app.command("rotate-key")
def audit_rotate_key(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Replace the checkpoint signing key; checkpoints the old key signed keep verifying (its
    verifier key stays in state_dir/ledger.pub). Restart serving processes to sign with it."""
    from trustplane.server.runtime import rotate_ledger_key
    from trustplane.telemetry.checkpoint import CheckpointError

    settings = _ctx(ctx).settings()
    try:
        old, new = rotate_ledger_key(settings)
    except CheckpointError as exc:
        raise CliError(f"bad ledger key at {settings.ledger_key_file}: {exc}") from None
    if as_json:
        _emit_json({"old_verifier_key": old, "verifier_key": new})
        return
    out.print(f"[green]✓[/] checkpoint key rotated: new verifier key {new}")
    out.print(f"  the old key {old} still verifies the checkpoints it signed")
    out.print("  restart serving processes so they sign with the new key")


@audit_app.command("export")
def audit_export(
    ctx: typer.Context,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="JSONL file (default: stdout).")
    ] = None,
) -> None:
    """Write every ledger record as JSON Lines, in ledger order."""
    from trustplane.telemetry.ledger import iter_records

    settings = _ctx(ctx).settings()
    engine = _store_engine(settings)
    count = 0
    handle = output.open("wb") if output else sys.stdout.buffer
    try:
        for record in iter_records(engine):
            handle.write(record + b"\n")
            count += 1
    finally:
        if output:
            handle.close()
        engine.dispose()
    if output:
        err.print(f"[green]✓[/] exported {count} records to {output}")


@audit_app.command("tail")
def audit_tail(
    ctx: typer.Context,
    lines: Annotated[int, typer.Option("-n", help="How many recent records to show.")] = 10,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new records.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The most recent ledger records; with -f, follow new ones."""
    from trustplane.telemetry.ledger import DecisionQuery, query_decisions

    settings = _ctx(ctx).settings()
    engine = _store_engine(settings)
    newest = query_decisions(engine, DecisionQuery(limit=1))
    last = newest[0]["seq"] if newest else -1  # follow from here, whatever -n says
    rows = list(reversed(query_decisions(engine, DecisionQuery(limit=lines)))) if lines else []
    _print_records(rows, as_json)
    try:
        while follow:
            time.sleep(0.5)
            rows = query_decisions(
                engine, DecisionQuery(after_seq=last, limit=1000, ascending=True)
            )
            if rows:
                last = rows[-1]["seq"]
                _print_records(rows, as_json)
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()


@app.command("decisions")
def decisions_cmd(
    ctx: typer.Context,
    principal: Annotated[str | None, typer.Option(help='Principal, e.g. User::"alice".')] = None,
    decision: Annotated[str | None, typer.Option(help="allow or deny.")] = None,
    policy: Annotated[str | None, typer.Option(help="Determining or shadow policy id.")] = None,
    shadow_mismatch: Annotated[
        bool, typer.Option("--shadow-mismatch", help="Only decisions whose shadow answer differs.")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Query recent decisions from the store."""
    from trustplane.decision.requests import RequestError, parse_entity
    from trustplane.telemetry.ledger import DecisionQuery, query_decisions

    if decision not in (None, "allow", "deny"):
        raise CliError("--decision must be allow or deny")
    settings = _ctx(ctx).settings()
    engine = _store_engine(settings)
    principal_key = None
    if principal:
        try:
            principal_key = str(parse_entity(principal, "--principal"))
        except RequestError as exc:
            raise CliError(str(exc)) from None
    rows = query_decisions(
        engine,
        DecisionQuery(
            principal=principal_key,
            decision=decision,
            policy=policy,
            shadow_mismatch=True if shadow_mismatch else None,
            limit=limit,
        ),
    )
    engine.dispose()
    _print_records(rows, as_json)


@app.command("revoke")
def revoke_cmd(
    ctx: typer.Context,
    kind: Annotated[
        str,
        typer.Argument(help="principal, credential, certificate, grant, exception or session."),
    ],
    target: Annotated[
        str,
        typer.Argument(
            help='The principal (User::"alice"), a JWT id, a certificate serial (hex), or a '
            "grant, exception or break-glass session id."
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why: kept with the revocation.")] = "",
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a principal, a credential, a certificate, a grant, an exception or a break-glass
    session on the running server; every replica stops honouring it within about a second."""
    kinds = ("principal", "credential", "certificate", "grant", "exception", "session")
    if kind not in kinds:
        raise CliError(f"KIND must be one of {', '.join(kinds)}")
    if not reason.strip():
        raise CliError("--reason is required: it is what the audit trail shows")
    settings = _ctx(ctx).settings()
    body = {"kind": kind, "target": target, "reason": reason}
    result = _http("POST", _server(settings, url), "/v1/revocations", _token(settings), body)
    document = result.json()
    if as_json:
        _emit_json(document)
        return
    already = "" if document.get("created") else " (it already was)"
    out.print(f"[green]✓[/] revoked {document['kind']} {document['target']}{already}")


@app.command("revocations")
def revocations_cmd(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the revocations in force."""
    settings = _ctx(ctx).settings()
    document = _admin(settings, "GET", "/v1/revocations", url)
    if as_json:
        _emit_json(document)
        return
    table = Table("kind", "target", "reason", "by", "since")
    for item in document["revocations"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(item["created_at"]))
        table.add_row(item["kind"], item["target"], item["reason"], item["actor"], since)
    out.print(table)
    out.print(f"epoch {document['epoch']}")


def _print_records(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row, default=str) + "\n")
        return
    table = Table("seq", "time", "principal", "action", "resource", "decision", "shadow")
    table.add_column("policies", overflow="fold")
    for row in rows:
        request = row.get("request", {})
        shadow = row.get("shadow", "")
        shadow_cell = shadow if shadow == row.get("decision") else f"[yellow]{shadow}[/]"
        colour = "green" if row.get("decision") == "allow" else "red"
        table.add_row(
            str(row["seq"]),
            row.get("time", "")[:23],
            _ref(request.get("principal")),
            str(request.get("action", {}).get("id", "")),
            _ref(request.get("resource")),
            f"[{colour}]{row.get('decision')}[/]",
            shadow_cell,
            ", ".join(row.get("reasons", []) + row.get("would_change", [])),
        )
    out.print(table)


def _ref(entity: dict[str, Any] | None) -> str:
    return "" if not entity else f"{entity.get('type')}::{entity.get('id')}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


# -- entry point ------------------------------------------------------------------------------

from trustplane.cli.identity import identity_app  # noqa: E402  (it uses the helpers above)
from trustplane.cli.image_attestations import attest_cmd, attestations_app  # noqa: E402  (same)

app.add_typer(identity_app, name="identity")
app.command("attest")(attest_cmd)
app.add_typer(attestations_app, name="attestations")

from trustplane.cli.access import access_app, break_glass_app, exceptions_app  # noqa: E402

app.add_typer(access_app, name="access")
app.add_typer(break_glass_app, name="break-glass")
app.add_typer(exceptions_app, name="exceptions")


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {message}", highlight=False)
    raise SystemExit(2)


# The errors `main` prints as one line (exit 2), named rather than imported: each lives in a
# module that a command loads only when it needs it, and an exception can only be an instance
# of a class whose module is already loaded, so nothing is imported to test for one.
_ONE_LINE_ERRORS = (
    ("trustplane.config", "ConfigError"),
    ("trustplane.identity.kek", "KekError"),
    ("trustplane.store.database", "StoreError"),
    ("trustplane.server.runtime", "NotInitialisedError"),
    ("trustplane.decision.signing", "SigningError"),
    ("trustplane.telemetry.checkpoint", "CheckpointError"),
    ("trustplane.telemetry.ledger", "LedgerError"),
    ("trustplane.server.admin_auth", "AdminPolicyError"),
)


def _is_loaded_error(exc: BaseException, module: str, name: str) -> bool:
    loaded = sys.modules.get(module)
    cls = getattr(loaded, name, None) if loaded is not None else None
    return isinstance(cls, type) and isinstance(exc, cls)


def main() -> None:
    try:
        app()
    except Exception as exc:
        if _is_loaded_error(exc, "trustplane.decision.policy_bundle", "BundleError"):
            problems = exc.problems  # type: ignore[attr-defined]
            err.print(f"[red]bundle refused[/] ({len(problems)} problem(s)):", highlight=False)
            for problem in problems:
                err.print(f"  {problem}", highlight=False, markup=False)
            raise SystemExit(1) from None
        if isinstance(exc, CliError) or any(
            _is_loaded_error(exc, module, name) for module, name in _ONE_LINE_ERRORS
        ):
            _fail(str(exc))
        if isinstance(exc, BrokenPipeError):
            raise SystemExit(0) from None
        raise


from trustplane.cli.pep import pep_app  # noqa: E402  (same)

app.add_typer(pep_app, name="pep")
