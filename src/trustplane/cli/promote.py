"""`trustplane policy promote POLICY_ID [--canary PERCENT]`: move an observe-mode (or canary)
policy to canary or enforce, on evidence.

The promotion gate (`rollout status`) is asked first: through the admin API with `--url` (the
server records the call, override and reason included), else from the local store (an override
is then recorded in the ledger here). A failing gate refuses the promotion, exit 1, unless
`--override --reason TEXT`. Then the policy's `@mode` is edited in the bundle's source directory
(the git working tree), the edited bundle is compiled and its tests run, the diff is printed,
and `--commit` commits the file on a new branch. The running server loads the edit like any
bundle change (tests first, the last good bundle kept).
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from trustplane.cli.common import (
    CliError,
    JsonOpt,
    UrlOpt,
    admin,
    admin_token,
    emit,
    err,
    http,
    load_options,
    out,
    root_context,
    server_url,
    store_engine,
)

if TYPE_CHECKING:
    from trustplane.config import Settings

GATE_REFUSED = 1
"""Exit code of a promotion refused by its gate (2 stays for errors)."""


def promote_cmd(
    ctx: typer.Context,
    policy_id: Annotated[str, typer.Argument(help="The observe-mode or canary policy's @id.")],
    canary: Annotated[
        float | None,
        typer.Option(
            "--canary",
            help="Enforce for this percentage of principals (stable by hash), observe for "
            "the rest; without it the policy is enforced for everyone.",
        ),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(help="The bundle's source directory (default: policy.bundle_dir)."),
    ] = None,
    override: Annotated[
        bool, typer.Option("--override", help="Promote although the gate fails (needs --reason).")
    ] = False,
    reason: Annotated[
        str, typer.Option(help="Why: recorded in the ledger with the promotion.")
    ] = "",
    commit: Annotated[
        bool, typer.Option("--commit", help="Commit the edit on a new git branch.")
    ] = False,
    branch: Annotated[
        str | None,
        typer.Option(help="The branch --commit creates (default promote/POLICY-MODE)."),
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Promote POLICY_ID to canary (--canary PERCENT) or enforce when its gate passes: edit its
    @mode in the bundle source, print the diff, and with --commit commit it on a branch. Exit 1
    when the gate refuses, 2 on errors."""
    from trustplane.decision.loader import load_bundle
    from trustplane.decision.policy_bundle import BundleSource
    from trustplane.rollout.promote import PromotionError, ensure_git, plan
    from trustplane.rollout.promote import commit as git_commit

    if override and not reason.strip():
        raise CliError("--override needs --reason: it is what the audit trail shows")
    settings = root_context(ctx).settings()
    directory = bundle or settings.policy.bundle_dir
    if directory is None:
        raise CliError("no bundle directory: pass --bundle DIR or set policy.bundle_dir")
    target = "enforce" if canary is None else "canary"
    try:
        edit = plan(Path(directory), policy_id, target, canary)
        if commit:
            ensure_git(Path(directory))
    except PromotionError as exc:
        raise CliError(str(exc)) from None
    # The edited bundle must load, tests included, before anything is asked or written.
    files = dict(BundleSource.from_dir(Path(directory)).files)
    files[edit.relative] = edit.after.encode("utf-8")
    load_bundle(BundleSource(files), load_options(settings))

    body = {
        "policy": policy_id,
        "to": target,
        "canary_percent": canary,
        "override": override,
        "reason": reason.strip(),
    }
    if url is not None:
        gate = _ask_server(settings, url, body)
    else:
        gate = _ask_store(settings, body)
    if gate["verdict"] != "pass" and not override:
        document = {"promoted": False, "policy": policy_id, "failing": gate["failing"]}
        if as_json:
            emit(document, True, lambda _: None)
        else:
            err.print(
                f"[red]refused:[/] the promotion gate of {policy_id} fails "
                "(--override --reason TEXT to promote anyway):",
                highlight=False,
            )
            for line in gate["failing"]:
                err.print(f"  {line}", highlight=False, markup=False)
        raise SystemExit(GATE_REFUSED)

    edit.write()
    diff = edit.diff()
    committed = None
    if commit:
        name = branch or f"promote/{policy_id}-{target}"
        message = f"policy {policy_id}: {edit.mode_before} → " + (
            f"canary {canary:g}%" if canary is not None else "enforce"
        )
        message += f" (gate {gate['verdict']}{'; override: ' + reason if override else ''})"
        try:
            committed = {"branch": name, "commit": git_commit(edit, Path(directory), name, message)}
        except PromotionError as exc:
            raise CliError(f"{exc} (the edit is made in {edit.path}, not committed)") from None
    document = {
        "promoted": True,
        "policy": policy_id,
        "from": edit.mode_before,
        "to": target,
        "canary_percent": canary,
        "file": str(edit.path),
        "line": edit.line,
        "gate": gate["verdict"],
        "override": override and gate["verdict"] != "pass",
        "diff": diff,
        "committed": committed,
    }
    emit(document, as_json, _print)


def _print(document: dict[str, Any]) -> None:
    shown = (
        f"canary {document['canary_percent']:g}%" if document["to"] == "canary" else document["to"]
    )
    gate = "gate overridden" if document["override"] else f"gate {document['gate']}"
    out.print(
        f"[green]✓[/] {document['policy']}: {document['from']} → {shown} ({gate}) in "
        f"{document['file']}:{document['line']}",
        highlight=False,
    )
    out.print(document["diff"], end="", highlight=False, markup=False)
    if document["committed"]:
        committed = document["committed"]
        out.print(
            f"committed {committed['commit'][:12]} on branch {committed['branch']}",
            highlight=False,
        )


def _ask_server(settings: Settings, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The gate as the server measures it; the server records the call (and any override)."""
    response = http(
        "POST",
        server_url(settings, url),
        "/v1/rollout/promotions",
        admin_token(settings),
        body,
        accept=(409,),
    )
    document = response.json()
    if response.status_code == 409:
        if (
            document.get("type", "").endswith("gate-fails")
            or "gate fails" in str(document.get("title", "")).lower()
        ):
            status = admin(settings, "GET", "/v1/rollout/status", url)
            for item in status["policies"]:
                if item["policy_id"] == body["policy"]:
                    return {"verdict": "fail", "failing": item["failing"]}
        raise CliError(f"POST /v1/rollout/promotions: 409: {document.get('detail')}")
    status = document["status"]
    return {"verdict": status["verdict"], "failing": status["failing"]}


def _ask_store(settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    """The gate measured from the local store against its active revision; an override is
    recorded in the ledger as an admin action of the local user."""
    from trustplane.decision.loader import load_bundle
    from trustplane.decision.policy_bundle import BundleSource
    from trustplane.rollout.gates import RolloutStatus
    from trustplane.rollout.labels import LabelStore
    from trustplane.store.policy_revisions import BundleStore
    from trustplane.telemetry.ledger import Ledger, admin_entry

    engine = store_engine(settings, remote=True)
    try:
        revisions = BundleStore(engine)
        history = revisions.history(limit=1)
        if not history:
            raise CliError("no bundle was ever activated in this store: nothing to measure")
        files = revisions.load_files(history[0].revision) or {}
        active = load_bundle(BundleSource(files), load_options(settings, False)).bundle
        statuses = RolloutStatus(LabelStore(engine), revisions).evaluate(active)
        found = next((s for s in statuses if s.policy_id == body["policy"]), None)
        if found is None:
            info = active.policy(body["policy"])
            raise CliError(
                f"{body['policy']} is in {info.mode} mode in the active revision: only observe "
                "and canary policies are promoted"
                if info
                else f"no policy {body['policy']} in the active revision"
            )
        if body["override"] and not found.passes:
            entry = admin_entry(
                f"local:{getpass.getuser()}",
                "rollout:promote",
                f"policy:{body['policy']}",
                body["reason"],
                True,
                {
                    "to": body["to"],
                    "canary_percent": body["canary_percent"],
                    "override": True,
                    "gate": "fail",
                    "failing": list(found.failing),
                },
            )
            Ledger(engine, None, settings.ledger.origin).append([entry])
        return {"verdict": "pass" if found.passes else "fail", "failing": list(found.failing)}
    finally:
        engine.dispose()
