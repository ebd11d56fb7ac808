"""`trustplane attest` (CI states something about an image digest) and `trustplane attestations
list` (what was stated, each re-verified by the server).

`attest` authenticates with a JWT-SVID of the trust domain: given directly (`--token`), or
obtained first by exchanging the pipeline's own OIDC token at `POST /v1/token` (`--ci-token`),
asking for no audience, so the JWT-SVID is addressed to the server itself. Tokens are best
passed in the environment (TRUSTPLANE_ATTEST_TOKEN, TRUSTPLANE_CI_TOKEN), not on the command
line where other local users can read them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import typer

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
    when,
)

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"

attestations_app: typer.Typer = typer.Typer(
    help="Image attestations recorded in trustplane.", no_args_is_help=True
)


def attest_cmd(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(help="The image pinned by digest: name@sha256:…")],
    predicate_type: Annotated[
        str,
        typer.Option(
            "--predicate-type",
            help="in-toto predicate type URI, e.g. https://slsa.dev/provenance/v1",
        ),
    ],
    predicate: Annotated[
        Path | None,
        typer.Option("--predicate", help="JSON file holding the predicate object ('-': stdin)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="TRUSTPLANE_ATTEST_TOKEN",
            help="A JWT-SVID of this trust domain addressed to the server.",
            show_default=False,
        ),
    ] = None,
    ci_token: Annotated[
        str | None,
        typer.Option(
            "--ci-token",
            envvar="TRUSTPLANE_CI_TOKEN",
            help="The pipeline's OIDC token, exchanged at POST /v1/token for a JWT-SVID first.",
            show_default=False,
        ),
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Attest an image digest with this pipeline's trustplane identity; admission's
    zero-trust/image-attested admits images attested by an allowed signer."""
    from trustplane.posture.image_attestations import AttestationError, ImageRef

    token, ci_token = token or None, ci_token or None  # an empty variable is no credential
    if (token is None) == (ci_token is None):
        raise CliError(
            "give one credential: --token (a JWT-SVID) or --ci-token (the pipeline's OIDC "
            "token, exchanged first); or TRUSTPLANE_ATTEST_TOKEN / TRUSTPLANE_CI_TOKEN"
        )
    try:
        ImageRef.parse(image)  # before any token is spent on it
    except AttestationError as exc:
        raise CliError(str(exc)) from None
    settings = root_context(ctx).settings()
    base = server_url(settings, url)
    body = {"image": image, "predicate_type": predicate_type, "predicate": _predicate(predicate)}
    svid = token if token is not None else _exchange(base, ci_token or "")
    found = http("POST", base, "/v1/attestations", svid, body).json()

    def render(found: Any) -> None:
        out.print(
            f"[green]✓[/] attested {found['image']} ({found['predicate_type']}) "
            f"as {found['signer']}",
            highlight=False,
        )
        out.print(f"  attestation {found['id']}, ledger decision {found['decision_id']}")

    emit(found, as_json, render)


def _predicate(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise CliError(f"--predicate {path}: cannot read: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--predicate {path}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError(f"--predicate {path}: the predicate must be a JSON object")
    return value


def _exchange(base: str, subject_token: str) -> str:
    import httpx

    form = {
        "grant_type": EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": JWT_TYPE,
    }
    try:
        response = httpx.post(
            base + "/v1/token",
            content=urlencode(form),
            headers={"content-type": "application/x-www-form-urlencoded"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the server at {base}: {exc}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200 or not isinstance(answer.get("access_token"), str):
        error = answer.get("error", response.status_code)
        detail = answer.get("error_description", response.text)
        raise CliError(f"token exchange refused: {error}: {detail}")
    return str(answer["access_token"])


@attestations_app.command("list")
def list_cmd(
    ctx: typer.Context,
    image: Annotated[str | None, typer.Option(help="Only this image (pinned by digest).")] = None,
    signer: Annotated[str | None, typer.Option(help="Only this signer's SPIFFE ID.")] = None,
    predicate_type: Annotated[
        str | None, typer.Option("--predicate-type", help="Only this predicate type.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 100,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Attestations recorded on the server, newest first, each re-verified by it."""
    settings = root_context(ctx).settings()
    query: dict[str, Any] = {"limit": limit}
    for name, value in (("image", image), ("signer", signer), ("predicate_type", predicate_type)):
        if value is not None:
            query[name] = value
    path = "/v1/attestations?" + urlencode(query)
    doc = admin(settings, "GET", path, url)

    def render(doc: Any) -> None:
        table = id_table(
            "id",
            "attested",
            "image",
            "predicate type",
            "signer",
            "verified",
            title=f"{len(doc['attestations'])} attestations",
            title_justify="left",
        )
        for item in doc["attestations"]:
            verified = "[green]yes[/]" if item["verified"] else f"[red]no[/]: {item.get('problem')}"
            table.add_row(
                item["id"],
                when(item["attested_at"]),
                item["image"],
                item["predicate_type"],
                item["signer"],
                verified,
            )
        out.print(table)

    emit(doc, as_json, render)


@attestations_app.command("withdraw")
def withdraw_cmd(
    ctx: typer.Context,
    attestation_id: Annotated[
        str, typer.Argument(help="Attestation id (from `list`), or a unique prefix of it.")
    ],
    reason: Annotated[str, typer.Option(help="Why: kept in the ledger.")] = "",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Withdraw an attestation (e.g. a build found compromised): its digest stops counting at
    admission on every node."""
    if not reason.strip():
        raise CliError("--reason is required: it is what the audit trail shows")
    settings = root_context(ctx).settings()
    attestation_id = resolve_admin_id(
        settings,
        url,
        attestation_id,
        "attestation",
        "/v1/attestations?limit=1000",
        lambda d: (a["id"] for a in d["attestations"]),
    )
    path = f"/v1/attestations/{attestation_id}"
    doc = http("DELETE", server_url(settings, url), path, admin_token(settings), {"reason": reason})
    result = doc.json()

    def render(result: Any) -> None:
        out.print(f"[green]✓[/] withdrew attestation {result['id']} of {result['image']}")

    emit(result, as_json, render)
