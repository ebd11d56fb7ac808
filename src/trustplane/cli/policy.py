"""`trustplane policy …`: validate, test, scaffold, format, sign and verify bundles locally;
status, rollback and reload on a running server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from trustplane.cli.common import (
    CliError,
    JsonOpt,
    admin,
    bundle_source,
    emit,
    emit_json,
    err,
    load_options,
    out,
    print_warnings,
    resolve_prefix,
    root_context,
    when,
)

if TYPE_CHECKING:
    from trustplane.config import Settings
    from trustplane.decision.loader import LoadedBundle

policy_app = typer.Typer(
    help="Validate, test, format, sign and roll back policy bundles.", no_args_is_help=True
)

BundleArg = Annotated[Path, typer.Argument(help="Bundle directory.")]


def _load_for_json(directory: Path, settings: Settings, as_json: bool) -> LoadedBundle:
    """Load without running tests; with --json a refused bundle is a JSON document on stdout
    (`valid: false` and every problem) and exit 1, so scripts read one stream."""
    from trustplane.decision.loader import load_bundle
    from trustplane.decision.policy_bundle import BundleError

    try:
        return load_bundle(bundle_source(directory), load_options(settings, False))
    except BundleError as exc:
        if not as_json:
            raise
        emit_json({"valid": False, "problems": [p.as_dict() for p in exc.problems]})
        raise typer.Exit(1) from None


@policy_app.command("validate")
def policy_validate(ctx: typer.Context, directory: BundleArg, as_json: JsonOpt = False) -> None:
    """Parse, check annotations and validate against the schema (no tests)."""
    settings = root_context(ctx).settings()
    bundle = _load_for_json(directory, settings, as_json).bundle

    def render(_: Any) -> None:
        print_warnings([str(w) for w in bundle.warnings])
        out.print(f"[green]✓[/] {bundle.name}: {len(bundle.policies)} policies valid")
        out.print(f"  revision {bundle.revision}", highlight=False)

    emit(
        {
            "valid": True,
            "name": bundle.name,
            "revision": bundle.revision,
            "policies": [p.summary() for p in bundle.policies],
            "warnings": [w.as_dict() for w in bundle.warnings],
            "problems": [],
        },
        as_json,
        render,
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

    settings = root_context(ctx).settings()
    loaded = _load_for_json(directory, settings, as_json)
    tests = loaded.bundle.tests
    if keyword is not None:
        tests = [t for t in tests if keyword.lower() in t.name.lower()]
        if not tests:
            raise CliError(f"no test name contains {keyword!r} ({len(loaded.bundle.tests)} tests)")
    results = run_tests(loaded.evaluator, tests)
    failed = [r for r in results if not r.passed]
    covered = coverage(loaded.bundle.policies, results)
    doc = {
        "passed": len(results) - len(failed),
        "failed": len(failed),
        "results": [r.as_dict() for r in results],
        "coverage": covered.as_dict(),
    }

    def render(_: Any) -> None:
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

    emit(doc, as_json, render)
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
    source = bundle_source(directory)
    problems = verify_bundle(source, trusted)
    doc = {
        "verified": not problems,
        "revision": source.revision,
        "keys": [k.key_id for k in trusted],
        "problems": [p.as_dict() for p in problems],
    }

    def render(_: Any) -> None:
        for problem in problems:
            err.print(f"[red]✗[/] {problem}", highlight=False, markup=False)
        if not problems:
            out.print(
                f"[green]✓[/] signature valid: revision {source.revision} "
                f"({len(source.manifest())} files)",
                highlight=False,
            )

    emit(doc, as_json, render)
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
    source = bundle_source(directory)
    (directory / SIGNATURE_FILE).write_bytes(sign_bundle(source, private_key))
    out.print(f"[green]✓[/] signed {len(source.manifest())} files → {directory / SIGNATURE_FILE}")
    out.print(f"  revision {source.revision}", highlight=False)


@policy_app.command("status")
def policy_status(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The active bundle on a running server, its policies and the activation history."""
    settings = root_context(ctx).settings()
    status = admin(settings, "GET", "/v1/bundle", url)
    history = admin(settings, "GET", "/v1/bundle/revisions", url)

    def render(_: Any) -> None:
        active = status.get("active")
        if active is None:
            out.print("[red]no active bundle[/]")
        else:
            out.print(
                f"active: [bold]{active['name']}[/] — {len(active['policies'])} policies, tests "
                f"{active['tests']['passed']}/{active['tests']['total']}"
            )
            out.print(f"  revision {active['revision']}", highlight=False)
            table = Table("policy", "effect", "mode", "owner", "tier", "expires")
            # Policy ids are grepped and pasted: whole, on one line; the other cells wrap.
            widest = max((len(p["id"]) for p in active["policies"]), default=6)
            table.columns[0].no_wrap, table.columns[0].min_width = True, widest
            for p in active["policies"]:
                table.add_row(
                    p["id"], p["effect"], p["mode"], p["owner"], p["tier"] or "", p["expires"] or ""
                )
            out.print(table)
        if status.get("last_error"):
            out.print("[red]last load refused:[/]")
            for problem in status["last_error"]:
                out.print(f"  {problem['file']}:{problem['line'] or ''} {problem['message']}")
        # A revision is 64 hex digits: no table row holds one whole beside anything else in
        # 80 columns, so each activation is two lines.
        out.print("activations:" if history["activations"] else "no activations yet")
        for a in history["activations"][:10]:
            out.print(f"  {when(a['activated_at'])}  {a['name']}  {a['reason']}", highlight=False)
            out.print(f"    revision {a['revision']}", highlight=False)

    emit({**status, **history}, as_json, render)


@policy_app.command("rollback")
def policy_rollback(
    ctx: typer.Context,
    to: Annotated[str | None, typer.Option(help="Revision (or prefix) to return to.")] = None,
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Return the running server to the previously active revision (or --to one)."""
    settings = root_context(ctx).settings()
    body = {}
    if to:
        # Ambiguity is told here, listing the candidates; a revision stored but never active
        # is not in the history, so the server resolves what matches none of it.
        history = admin(settings, "GET", "/v1/bundle/revisions", url)["activations"]
        revisions = [a["revision"] for a in history]
        known = any(r.startswith(to.lower()) for r in revisions)
        body["to"] = resolve_prefix(to, revisions, "revision") if known else to
    result = admin(settings, "POST", "/v1/bundle/rollback", url, body)

    def render(result: Any) -> None:
        active = result["active"]
        out.print(f"[green]✓[/] rolled back: {active['name']} is active")
        out.print(f"  revision {active['revision']}", highlight=False)

    emit(result, as_json, render)


@policy_app.command("reload")
def policy_reload(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="Server URL.")] = None,
) -> None:
    """Ask the running server to reload its bundle directory."""
    settings = root_context(ctx).settings()
    result = admin(settings, "POST", "/v1/bundle/reload", url)
    out.print(f"[green]✓[/] active revision {result['active']['revision']}", highlight=False)


def _register_promote() -> None:
    """`policy promote` lives in cli/promote.py (the rollout program's commands)."""
    from trustplane.cli.promote import promote_cmd

    policy_app.command("promote")(promote_cmd)


_register_promote()
# -- before and after an activation: impact, drift, suggestions ------------------------------


def _since(text: str | None) -> float | None:
    from trustplane.telemetry.query import parse_time

    return None if text is None else parse_time(text, "--since")


def _fetcher(settings: Settings, url: str | None) -> Any:
    """GET one admin API path with query parameters, for commands that read a server."""
    from urllib.parse import urlencode

    from trustplane.cli.common import admin_token, http, server_url

    base, token = server_url(settings, url), admin_token(settings)

    def fetch(path: str, params: dict[str, str] | None = None) -> Any:
        query = f"?{urlencode(params)}" if params else ""
        return http("GET", base, path + query, token).json()

    return fetch


def _progress(what: str) -> Any:
    """A Rich progress bar on stderr (stdout stays the report); silent when stderr is not a
    terminal, as in CI logs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        f"[progress.description]{what}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


@policy_app.command("impact")
def policy_impact(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Option("--bundle", help="Candidate bundle directory.")],
    since: Annotated[
        str | None,
        typer.Option(help="Replay decisions recorded since then (7d, 24h, RFC 3339)."),
    ] = "7d",
    fail_on: Annotated[
        str | None,
        typer.Option(
            "--fail-on", help="Exit 1 on new-denies (allow→deny) or any-flip (either way)."
        ),
    ] = None,
    url: Annotated[str | None, typer.Option(help="Read the records from this server.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay recorded decisions against a candidate bundle (compiled and tested as for an
    activation) and report every answer that would flip, by policy, principal and resource;
    records that cannot be replayed are counted by reason."""
    from trustplane.decision.loader import load_bundle
    from trustplane.rollout.impact import (
        FAIL_ON,
        Grants,
        api_records,
        count_store_records,
        replay,
        store_records,
    )

    if fail_on is not None and fail_on not in FAIL_ON:
        raise CliError(f"--fail-on must be one of {', '.join(FAIL_ON)}, not {fail_on!r}")
    settings = root_context(ctx).settings()
    loaded = load_bundle(bundle_source(bundle), load_options(settings))
    start = _since(since)
    engine = None
    if url is not None:
        fetch = _fetcher(settings, url)
        grants = Grants.from_rows(
            fetch("/v1/access/grants")["grants"], fetch("/v1/exceptions")["exceptions"]
        )
        records: Any = api_records(fetch, start)
        total = None
    else:
        from trustplane.cli.common import store_engine

        engine = store_engine(settings, remote=True)
        grants = Grants.from_store(engine)
        total = count_store_records(engine, start)
        records = store_records(engine, start)
    try:
        with _progress("replaying") as bar:
            task = bar.add_task("replay", total=total)
            report = replay(
                records,
                loaded.evaluator,
                grants,
                since=start,
                progress=lambda n: bar.advance(task, n),
            )
    finally:
        if engine is not None:
            engine.dispose()
    doc = report.as_dict()
    doc["fail_on"] = fail_on
    doc["failed"] = report.fails(fail_on)
    emit(doc, as_json, _print_impact)
    if doc["failed"]:
        raise typer.Exit(1)


def _print_impact(doc: dict[str, Any]) -> None:
    out.print(
        f"candidate {doc['candidate'][:12]}: {doc['records']} decisions recorded, "
        f"{doc['replayed']} replayed, {doc['not_replayed']} not replayable; "
        f"{doc['flips']} flip(s): {doc['allow_to_deny']} allow→deny, "
        f"{doc['deny_to_allow']} deny→allow",
        highlight=False,
    )
    for title, key, name in (
        ("policy", "by_policy", "policy"),
        ("principal", "by_principal", "principal"),
        ("resource", "by_resource", "resource"),
    ):
        if not doc[key]:
            continue
        table = Table(title, "flips", "allow→deny", "deny→allow")
        table.columns[0].overflow = "fold"
        for group in doc[key][:20]:
            table.add_row(
                group[name],
                str(group["flips"]),
                str(group["allow_to_deny"]),
                str(group["deny_to_allow"]),
            )
        out.print(table)
    if doc["by_policy"]:
        out.print("examples:")
        for group in doc["by_policy"][:10]:
            for flip in group["examples"]:
                out.print(
                    f"  {flip['decision_id']}  {flip['from']}→{flip['to']}  {flip['principal']} "
                    f"{flip['action']} {flip['resource']}  ({group['policy']})",
                    highlight=False,
                    markup=False,
                )
    for item in doc["not_replayed_by_reason"]:
        out.print(
            f"  not replayed: {item['count']} × {item['reason']} "
            f"(e.g. {', '.join(item['examples'])})",
            highlight=False,
            markup=False,
        )
    if doc["failed"]:
        out.print(f"[red]✗[/] --fail-on {doc['fail_on']}: failing", highlight=False)


@policy_app.command("drift")
def policy_drift(
    ctx: typer.Context,
    source: Annotated[
        str | None,
        typer.Option(
            help="The declared source: a bundle directory, or a git ref of the bundle "
            "directory's repository (read with git archive). Default: the directory the "
            "server follows (policy.bundle_dir).",
        ),
    ] = None,
    history: Annotated[
        bool, typer.Option("--history", help="Drift incidents and their count per month.")
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="With --history: incidents since then (90d, RFC 3339).")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Ask this server.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare the active revision with its declared source, file by file; exit 1 on drift.
    With --history, the drift incidents the server's periodic check recorded."""
    settings = root_context(ctx).settings()
    start = _since(since)
    if url is not None:
        if source is not None:
            raise CliError("--source compares locally: leave out --url, or --source")
        doc = _fetcher(settings, url)("/v1/bundle/drift", {"since": since} if since else None)
        history_doc = doc.pop("history")
    else:
        from trustplane.cli.common import store_engine
        from trustplane.rollout.drift import DriftLog

        engine = store_engine(settings, remote=True)
        try:
            history_doc = DriftLog(engine).history(start)
            doc = None if history else _local_drift(settings, engine, source)
        finally:
            engine.dispose()
    if history:
        emit(history_doc, as_json, _print_drift_history)
        return
    assert doc is not None
    emit(doc, as_json, _print_drift)
    if not doc["in_sync"]:
        raise typer.Exit(1)


def _local_drift(settings: Settings, engine: Any, source: str | None) -> dict[str, Any]:
    from trustplane.rollout.drift import drift_of, read_dir, read_git
    from trustplane.store.policy_revisions import BundleStore

    store = BundleStore(engine)
    newest = store.history(limit=1)
    if not newest:
        raise CliError("no revision has been activated in this store")
    revision = newest[0].revision
    files = store.load_files(revision) or {}
    directory = settings.policy.bundle_dir
    if source is not None and Path(source).is_dir():
        where = Path(source)
        return drift_of(revision, files, str(where), lambda: read_dir(where)).as_dict()
    if directory is None:
        raise CliError(
            "no declared source: set policy.bundle_dir (the directory the server follows) or "
            "give --source DIR"
        )
    if source is None:
        return drift_of(revision, files, str(directory), lambda: read_dir(directory)).as_dict()
    ref = source
    return drift_of(revision, files, f"git:{ref}", lambda: read_git(ref, directory)).as_dict()


def _print_drift(doc: dict[str, Any]) -> None:
    revision = (doc["revision"] or "")[:12]
    if doc["in_sync"]:
        out.print(
            f"[green]✓[/] active revision {revision} matches {doc['source']}", highlight=False
        )
        return
    if doc["error"]:
        out.print(f"[red]✗[/] drift: {doc['error']}", highlight=False)
        return
    out.print(
        f"[red]✗[/] drift: active revision {revision} differs from {doc['source']} "
        f"(revision {(doc['source_revision'] or '')[:12]})",
        highlight=False,
    )
    for kind, mark in (("added", "+"), ("removed", "-"), ("changed", "~")):
        for path in doc[kind]:
            out.print(f"  {mark} {path} ({kind})", highlight=False, markup=False)


def _print_drift_history(doc: dict[str, Any]) -> None:
    if not doc["incidents"]:
        out.print("no drift incident recorded")
        return
    for month in doc["months"]:
        out.print(f"{month['month']}: {month['incidents']} incident(s)", highlight=False)
    for item in doc["incidents"]:
        cleared = when(item["cleared_at"]) if item["cleared_at"] else "open"
        changed = len(item.get("added", [])) + len(item.get("removed", []))
        changed += len(item.get("changed", []))
        out.print(
            f"  #{item['id']}  {when(item['detected_at'])} → {cleared}  revision "
            f"{item['revision'][:12]}  {changed} file(s)",
            highlight=False,
        )


@policy_app.command("suggest")
def policy_suggest(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option(help="Use decisions recorded since then (7d, 24h, RFC 3339).")
    ] = "7d",
    principal_type: Annotated[
        str | None,
        typer.Option("--principal-type", help="Only principals of this entity type (User)."),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the candidates to this .cedar file.")
    ] = None,
    owner: Annotated[
        str, typer.Option(help="@owner of every candidate (the team that will review them).")
    ] = "unassigned",
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="Bundle whose schema and entities to use (default: the store's active "
            "revision; with --url, policy.bundle_dir).",
        ),
    ] = None,
    url: Annotated[str | None, typer.Option(help="Read the records from this server.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Least-privilege permit candidates from recorded decisions (default denials and observed
    allows), each in observe mode with its evidence, validated against the bundle's schema and
    written to a file, never activated; and entitlement coverage: the share of observed
    action-resource pairs an explicit policy decided."""
    from trustplane.decision.loader import load_bundle
    from trustplane.decision.policy_bundle import BundleSource
    from trustplane.rollout.impact import api_records, store_records
    from trustplane.rollout.suggest import suggest

    if not owner.strip():
        raise CliError("--owner must name a team")
    settings = root_context(ctx).settings()
    served = settings.policy.bundle_dir
    if (
        out_file is not None
        and served is not None
        and out_file.resolve().is_relative_to(served.resolve())
    ):
        raise CliError(
            f"--out {out_file} is inside the bundle directory the server follows "
            f"({served}): it would be activated; write it elsewhere and add it by review"
        )
    start = _since(since)
    options = load_options(settings, run_tests=False)
    engine = None
    try:
        if url is None:
            from trustplane.cli.common import store_engine
            from trustplane.store.policy_revisions import BundleStore

            engine = store_engine(settings, remote=True)
        if bundle is not None:
            source = bundle_source(bundle)
        elif engine is not None:
            store = BundleStore(engine)
            newest = store.history(limit=1)
            if not newest:
                raise CliError("no revision has been activated in this store: give --bundle DIR")
            source = BundleSource(store.load_files(newest[0].revision) or {})
        elif settings.policy.bundle_dir is not None:
            source = bundle_source(settings.policy.bundle_dir)
        else:
            raise CliError("with --url, give --bundle DIR (the schema and entities to use)")
        loaded = load_bundle(source, options)
        records = (
            store_records(engine, start)
            if engine is not None
            else api_records(_fetcher(settings, url), start)
        )
        found = suggest(records, loaded.bundle, principal_type=principal_type, owner=owner)
    finally:
        if engine is not None:
            engine.dispose()
    doc = found.as_dict()
    doc["written"] = None
    if out_file is not None:
        if out_file.suffix != ".cedar":
            raise CliError(f"--out {out_file}: the file must end in .cedar")
        out_file.write_text(found.text())
        doc["written"] = str(out_file)
    else:
        doc["text"] = found.text()
    emit(doc, as_json, _print_suggestions)


def _print_suggestions(doc: dict[str, Any]) -> None:
    coverage = doc["coverage"]
    share = "-" if coverage["share"] is None else f"{coverage['share']:.1%}"
    out.print(
        f"{doc['used']} of {doc['records']} decisions used; {len(doc['candidates'])} "
        f"candidate(s), {sum(1 for c in doc['candidates'] if c['valid'])} valid",
        highlight=False,
    )
    out.print(
        f"entitlement coverage: {share} of {coverage['pairs']} observed action-resource pairs "
        f"decided by an explicit policy ({coverage['default_deny']} by default deny)",
        highlight=False,
    )
    for pair in coverage["uncovered"][:10]:
        out.print(f"  default deny: {pair['action']} on {pair['resource']}", highlight=False)
    for candidate in doc["candidates"]:
        if not candidate["valid"]:
            out.print(
                f"[red]✗[/] {candidate['id']} left out: {'; '.join(candidate['problems'])}",
                highlight=False,
            )
    if doc["written"]:
        out.print(f"[green]✓[/] written to {doc['written']} (not activated)", highlight=False)
    else:
        out.print(doc["text"], highlight=False, markup=False)
