"""`trustplane identity …`: the trust domain's keys, registration entries, the Workload API agent
and the identity inventory.

Changes go through the running server's admin API (the KEK stays with the server); `init`,
`new-kek` and `agent` work on the local state directory and store.
"""

from __future__ import annotations

import base64
import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from trustplane.cli.common import (
    CliError,
    JsonOpt,
    UrlOpt,
    admin,
    admin_token,
    emit,
    http,
    id_table,
    out,
    resolve_admin_id,
    root_context,
    server_url,
    store_engine,
    when,
)

identity_app: typer.Typer = typer.Typer(
    help="SPIFFE identities: trust-domain keys, registration entries, Workload API, inventory.",
    no_args_is_help=True,
)
entry_app = typer.Typer(help="Workload registration entries.", no_args_is_help=True)
identity_app.add_typer(entry_app, name="entry")


@contextlib.contextmanager
def _identity_errors() -> Any:
    from trustplane.identity.entries import EntryError
    from trustplane.identity.kek import KekError
    from trustplane.identity.keys import RotationError
    from trustplane.identity.service import IdentityNotInitialised
    from trustplane.identity.spiffe_id import SpiffeIdError

    try:
        yield
    except (KekError, EntryError, IdentityNotInitialised, SpiffeIdError, RotationError) as exc:
        raise CliError(str(exc)) from None


@identity_app.command("new-kek")
def new_kek_cmd(
    output: Annotated[Path, typer.Option("--out", "-o", help="File to create (mode 0600).")],
) -> None:
    """Create a key-encryption key file for identity_kek_file (never overwrites)."""
    from trustplane.identity.kek import write_kek_file

    with _identity_errors():
        write_kek_file(output)
    out.print(f"[green]✓[/] key-encryption key written to {output} (0600); keep a backup")


@identity_app.command("init")
def init_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Create the trust domain's CA and JWT signing key in the store (idempotent)."""
    from trustplane.identity.service import IdentityService

    settings = root_context(ctx).settings()
    engine = store_engine(settings)
    try:
        with _identity_errors():
            service = IdentityService.from_settings(settings, engine)
            created = service.key_store.initialise()
            records = service.key_store.records()
    finally:
        engine.dispose()

    def render(_: Any) -> None:
        for record in created:
            out.print(f"[green]✓[/] created {record.kind.value} key {record.kid}")
        if not created:
            out.print(f"trust domain {settings.identity.trust_domain} already has active keys")

    emit(
        {
            "trust_domain": settings.identity.trust_domain,
            "created": [r.as_dict() for r in created],
            "keys": [r.as_dict() for r in records],
        },
        as_json,
        render,
    )


@identity_app.command("import")
def import_cmd(
    ctx: typer.Context,
    key: Annotated[Path, typer.Option("--key", help="Unencrypted PEM P-256 private key.")],
    cert: Annotated[
        Path | None, typer.Option("--cert", help="The CA certificate (PEM); omit for a JWT key.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import an existing CA (--cert and --key) or JWT signing key (--key): active when the
    trust domain has none of that kind yet, else prepared for the next `rotate`."""
    from trustplane.identity.keys import KeyKind
    from trustplane.identity.service import IdentityService

    settings = root_context(ctx).settings()
    try:
        key_pem = key.read_bytes()
        cert_pem = cert.read_bytes() if cert else None
    except OSError as exc:
        raise CliError(f"cannot read {exc.filename}: {exc.strerror}") from None
    engine = store_engine(settings)
    try:
        with _identity_errors():
            service = IdentityService.from_settings(settings, engine)
            kind = KeyKind.X509 if cert_pem is not None else KeyKind.JWT
            record = service.key_store.import_key(kind, key_pem, cert_pem)
    finally:
        engine.dispose()

    def render(_: Any) -> None:
        out.print(
            f"[green]✓[/] imported {record.kind.value} key {record.kid} ({record.state.value})"
        )

    emit(record.as_dict(), as_json, render)


@identity_app.command("bundle")
def bundle_cmd(
    ctx: typer.Context,
    pem: Annotated[bool, typer.Option("--pem", help="PEM certificates (the default).")] = False,
    b64: Annotated[
        bool, typer.Option("--base64", help="One line of base64 PEM, as caBundle takes it.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The trust domain's CA certificates, read from the store: what a client trusts to talk
    to trustplane's CA-issued HTTPS certificate (tls.from_ca), e.g. the caBundle of a
    ValidatingWebhookConfiguration. Every published CA is included, the prepared one too, so
    a bundle taken after a rotation's prepare step keeps working once it activates."""
    from trustplane.identity.keys import published_ca_certificates

    if pem and b64:
        raise CliError("give --pem or --base64, not both")
    settings = root_context(ctx).settings()
    engine = store_engine(settings)
    try:
        certificates = published_ca_certificates(engine)
    finally:
        engine.dispose()
    if not certificates:
        raise CliError(
            f"trust domain {settings.identity.trust_domain} has no CA yet: configure a KEK and run "
            "`trustplane identity init`"
        )
    text = "".join(c if c.endswith("\n") else c + "\n" for c in certificates)
    encoded = base64.b64encode(text.encode()).decode()
    doc = {
        "trust_domain": settings.identity.trust_domain,
        "certificates": len(certificates),
        "pem": text,
        "ca_bundle": encoded,
    }

    def render(doc: dict[str, Any]) -> None:
        sys.stdout.write(doc["ca_bundle"] + "\n" if b64 else doc["pem"])

    emit(doc, as_json, render)


@identity_app.command("keys")
def keys_cmd(ctx: typer.Context, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """The trust domain's keys and their rotation states."""
    settings = root_context(ctx).settings()
    doc = admin(settings, "GET", "/v1/identity/keys", url)

    def render(doc: Any) -> None:
        table = id_table("kid", "kind", "state", "created", "expires", "retirable")
        for key in doc["keys"]:
            retirable = key.get("retirable_at")
            table.add_row(
                key["kid"],
                key["kind"],
                key["state"],
                when(key["created_at"]),
                when(key["not_after"]),
                when(retirable) if retirable else "",
            )
        out.print(table)

    emit(doc, as_json, render)


@identity_app.command("rotate")
def rotate_cmd(
    ctx: typer.Context,
    step: Annotated[
        str,
        typer.Option(
            help="next (prepare, or activate what is prepared), prepare, activate, retire."
        ),
    ] = "next",
    kind: Annotated[str | None, typer.Option(help="x509 or jwt (default: both).")] = None,
    emergency: Annotated[
        bool,
        typer.Option(
            "--emergency",
            help="A key is compromised: retire it now (every SVID it signed stops verifying) "
            "and activate a fresh one.",
        ),
    ] = False,
    kid: Annotated[
        str | None,
        typer.Option(help="With --emergency: the compromised key (default: the active one)."),
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One rotation step: prepare (publish a new key) → activate (it signs) → retire (the old
    key leaves the bundles once everything it signed has expired). --emergency skips the wait."""
    if step not in ("next", "prepare", "activate", "retire"):
        raise CliError("--step must be next, prepare, activate or retire")
    if kind not in (None, "x509", "jwt"):
        raise CliError("--kind must be x509 or jwt")
    if kid is not None and not emergency:
        raise CliError("--kid names a compromised key: use it with --emergency")
    if emergency and step != "next":
        raise CliError("--emergency is a step of its own: leave out --step")
    settings = root_context(ctx).settings()
    body: dict[str, Any] = {
        "step": "emergency" if emergency else step,
        **({"kind": kind} if kind else {}),
        **({"kid": kid} if kid else {}),
    }
    doc = http(
        "POST", server_url(settings, url), "/v1/identity/rotate", admin_token(settings), body
    )
    result = doc.json()

    def render(result: Any) -> None:
        for line in result["done"] or ["nothing was due"]:
            out.print(f"[green]✓[/] {line}")

    emit(result, as_json, render)


@entry_app.command("create")
def entry_create(
    ctx: typer.Context,
    spiffe_id: Annotated[str, typer.Argument(help="spiffe://trust-domain/path")],
    selector: Annotated[
        list[str],
        typer.Option(
            "--selector", "-s", help="unix:uid:N, unix:gid:N, unix:path:/x, unix:sha256:HEX"
        ),
    ],
    owner: Annotated[str, typer.Option(help="Who answers for this workload.")] = "",
    x509_ttl: Annotated[int | None, typer.Option(help="X.509-SVID lifetime (s).")] = None,
    jwt_ttl: Annotated[int | None, typer.Option(help="JWT-SVID lifetime (s).")] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a workload: callers matching every selector get SPIFFE_ID."""
    settings = root_context(ctx).settings()
    body = {
        "spiffe_id": spiffe_id,
        "selectors": selector,
        "owner": owner,
        "x509_ttl_seconds": x509_ttl,
        "jwt_ttl_seconds": jwt_ttl,
    }
    entry = admin(settings, "POST", "/v1/identity/entries", url, body)

    def render(entry: Any) -> None:
        out.print(f"[green]✓[/] entry {entry['id']} → {entry['spiffe_id']}")

    emit(entry, as_json, render)


@entry_app.command("list")
def entry_list(ctx: typer.Context, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """The registration entries."""
    settings = root_context(ctx).settings()
    doc = admin(settings, "GET", "/v1/identity/entries", url)

    def render(doc: Any) -> None:
        table = id_table("id", "spiffe id", "selectors", "owner", "ttl x509/jwt")
        for e in doc["entries"]:
            ttls = f"{e['x509_ttl_seconds'] or '-'}/{e['jwt_ttl_seconds'] or '-'}"
            table.add_row(e["id"], e["spiffe_id"], "\n".join(e["selectors"]), e["owner"], ttls)
        out.print(table)

    emit(doc, as_json, render)


@entry_app.command("delete")
def entry_delete(
    ctx: typer.Context,
    entry_id: Annotated[
        str, typer.Argument(help="Entry id (from `entry list`), or a unique prefix of it.")
    ],
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a registration entry; its workloads get no new SVIDs."""
    settings = root_context(ctx).settings()
    entries = "/v1/identity/entries"
    entry_id = resolve_admin_id(
        settings, url, entry_id, "entry", entries, lambda d: (e["id"] for e in d["entries"])
    )
    path = f"{entries}/{entry_id}"
    entry = admin(settings, "DELETE", path, url)

    def render(entry: Any) -> None:
        out.print(f"[green]✓[/] deleted entry {entry['id']} ({entry['spiffe_id']})")

    emit(entry, as_json, render)


@identity_app.command("inventory")
def inventory_cmd(
    ctx: typer.Context,
    unused_days: Annotated[float, typer.Option(help="Flag identities unused this long.")] = 30,
    long_lived: Annotated[
        int, typer.Option(help="Flag credential lifetimes above this (seconds).")
    ] = 86_400,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every identity issued or seen, flagged: no owner, unused, long-lived credentials, and
    drift from the registration entries (unregistered, foreign_trust_domain, not_observed)."""
    settings = root_context(ctx).settings()
    path = f"/v1/identity/inventory?unused_days={unused_days}&long_lived_seconds={long_lived}"
    doc = admin(settings, "GET", path, url)

    def render(doc: Any) -> None:
        table = Table(title=f"{len(doc['identities'])} identities", title_justify="left")
        table.add_column("principal", overflow="fold", ratio=2)  # SPIFFE IDs are pasted: keep whole
        for column in ("kind", "owner", "first seen", "last seen", "lifetime", "flags"):
            table.add_column(column)
        for item in doc["identities"]:
            flags = ", ".join(item["flags"])
            table.add_row(
                item["principal"],
                item["kind"],
                item["owner"] or "",
                when(item["first_seen"]) if item["first_seen"] else "never",
                when(item["last_seen"]) if item["last_seen"] else "never",
                f"{item['max_lifetime_seconds']}s",
                f"[yellow]{flags}[/]" if flags else "",
            )
        out.print(table)
        flagged = sum(1 for i in doc["identities"] if i["flags"])
        out.print(f"{len(doc['identities'])} identities, {flagged} flagged")

    emit(doc, as_json, render)


@identity_app.command("agent")
def agent_cmd(
    ctx: typer.Context,
    socket_path: Annotated[
        Path | None, typer.Option("--socket", help="Unix socket (default: workload_socket).")
    ] = None,
) -> None:
    """Serve the SPIFFE Workload API on a unix socket from this store (as `serve` does when
    workload_socket is set), e.g. on each node beside a `serve --workers N` elsewhere."""
    import asyncio
    import signal

    from trustplane.identity.entries import TOPIC as ENTRIES_TOPIC
    from trustplane.identity.keys import TOPIC as KEYS_TOPIC
    from trustplane.identity.service import IdentityService
    from trustplane.identity.workload_api import WorkloadApiServer
    from trustplane.store.feed import ChangeFeed

    settings = root_context(ctx).settings()
    path = socket_path or settings.identity.workload_socket
    if path is None:
        raise CliError("no socket: pass --socket PATH or set workload_socket")
    engine = store_engine(settings)
    with _identity_errors():
        service = IdentityService.from_settings(settings, engine)
        service.load()
    feed = ChangeFeed(engine, poll_interval=settings.store.change_poll_ms / 1000)
    feed.subscribe(KEYS_TOPIC, service.refresh_keys)
    feed.subscribe(ENTRIES_TOPIC, service.entries.refresh)
    feed.start()
    service.start_background()

    async def run() -> None:
        server = WorkloadApiServer(service, path)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        out.print(
            f"SPIFFE Workload API on unix:{path} (trust domain {settings.identity.trust_domain})"
        )
        await stop.wait()
        await server.stop()

    try:
        asyncio.run(run())
    finally:
        feed.stop()
        service.stop()
        engine.dispose()
