"""HTTP face of the identity plane.

Public (verifiers and pipelines need them without an admin token):
- `GET /v1/identity/bundle`: the SPIFFE bundle of the trust domain;
- `GET /.well-known/openid-configuration` and `GET /v1/identity/jwks`: OIDC discovery, so any
  OIDC library can verify JWT-SVIDs;
- `POST /v1/token`: RFC 8693 token exchange for CI (errors in RFC 6749 form, never problem+json,
  because OAuth clients parse `error`).

Admin (behind the admin gate, `server/admin_gate.py`): registration entries, keys and rotation,
the inventory.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.identity.entries import EntryError
from trustplane.identity.exchange import ExchangeError, TokenExchange
from trustplane.identity.inventory import DriftCheck, inventory_report
from trustplane.identity.keys import KeyKind, RotationError
from trustplane.identity.service import IdentityService
from trustplane.identity.tokens import TokenVerifier
from trustplane.identity.trust_bundle import oidc_discovery, oidc_jwks, spiffe_bundle
from trustplane.problems import Problem, json_response, parse_model, read_body
from trustplane.server.admin_gate import AdminCall, AdminGate
from trustplane.server.runtime import Runtime

FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class EntryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spiffe_id: StrictStr = Field(min_length=1, max_length=2048)
    selectors: list[StrictStr] = Field(min_length=1, max_length=32)
    owner: StrictStr = Field("", max_length=256)
    x509_ttl_seconds: StrictInt | None = None
    jwt_ttl_seconds: StrictInt | None = None


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: StrictStr = Field("next", pattern="^(next|prepare|activate|retire|emergency)$")
    kind: KeyKind | None = None
    # emergency only: the compromised key (default: the active key of `kind`, or of both)
    kid: StrictStr | None = Field(None, min_length=1, max_length=64)


def rotate_step(
    service: IdentityService, step: str, kind: KeyKind | None, kid: str | None = None
) -> list[str]:
    """One rotation step for `kind` (both kinds when None). `next` prepares where nothing is
    prepared and activates where something is; every step also retires what is due.
    `emergency` retires a compromised key (`kid`, else the active one) at once."""
    keys = service.key_store
    if step == "emergency":  # a compromised key leaves the bundles now, not when due
        done = keys.emergency(kind, kid)
        service.refresh_keys()
        return done
    kinds = [kind] if kind else list(KeyKind)
    done = []
    prepared = {r.kind for r in keys.records() if r.state.value == "prepared"}
    for k in kinds:
        action = step if step != "next" else ("activate" if k in prepared else "prepare")
        if action == "prepare":
            done.append(f"prepared {k.value} key {keys.prepare(k).kid}")
        elif action == "activate":
            done.append(f"activated {k.value} key {keys.activate(k).kid}")
    done.extend(f"retired {r.kind.value} key {r.kid}" for r in keys.retire(kind))
    service.refresh_keys()
    return done


class IdentityApi:
    def __init__(self, runtime: Runtime, verifier: TokenVerifier | None) -> None:
        self._runtime = runtime
        self._limit = runtime.settings.server.max_body_bytes
        self._exchange: TokenExchange | None = None
        if runtime.identity is not None:
            self._exchange = TokenExchange(
                runtime.identity,
                verifier,
                runtime.settings.identity.exchange_rules,
                self._revoked,
                reserved_audiences=(runtime.settings.admin.audience,),
            )

    def _revoked(self, token_id: str | None, spiffe_id: str) -> str | None:
        found = self._runtime.revocations.credential(token_id)
        return f"{found.target} ({found.reason})" if found is not None else None

    def _service(self) -> IdentityService:
        if self._runtime.identity is None:
            raise Problem(
                404,
                "identity-disabled",
                "Identity plane not configured",
                "set identity.kek_file (or TRUSTPLANE_IDENTITY__KEK) and run `trustplane init`",
            )
        return self._runtime.identity

    # -- public --------------------------------------------------------------------------------

    async def bundle(self, request: Request) -> Response:
        return json_response(spiffe_bundle(self._service().keys))

    async def discovery(self, request: Request) -> Response:
        issuer = self._service().issuer
        return json_response(oidc_discovery(issuer, issuer.rstrip("/") + "/v1/identity/jwks"))

    async def jwks(self, request: Request) -> Response:
        return json_response(oidc_jwks(self._service().keys))

    async def token(self, request: Request) -> Response:
        try:
            if self._exchange is None:
                self._service()
                raise ExchangeError("invalid_request", "token exchange is not configured")
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != FORM:
                raise ExchangeError("invalid_request", f"the body must be {FORM}")
            try:
                raw = (await read_body(request, self._limit)).decode()
                fields = parse_qs(raw, keep_blank_values=True, strict_parsing=bool(raw))
            except (UnicodeDecodeError, ValueError):
                raise ExchangeError("invalid_request", "the form body is malformed") from None
            # RFC 8693 2.1: `audience` and `resource` may repeat; nothing else may (RFC 6749 3.2)
            repeated = sorted(
                k for k, v in fields.items() if len(v) > 1 and k not in ("audience", "resource")
            )
            if repeated:
                raise ExchangeError("invalid_request", f"parameter {repeated[0]} is repeated")
            form = {k: v[0] for k, v in fields.items()}
            audiences = fields.get("audience", [])
            result = await run_in_threadpool(self._exchange.exchange, form, audiences)
        except ExchangeError as exc:
            return json_response(exc.body(), exc.status, headers=NO_STORE)
        return json_response(result.body(), headers=NO_STORE)

    # -- admin ---------------------------------------------------------------------------------

    async def entries(self, request: Request, call: AdminCall) -> Response:
        items = await run_in_threadpool(self._service().entry_store.list)
        return json_response({"entries": [e.as_dict() for e in items]})

    async def create_entry(self, request: Request, call: AdminCall) -> Response:
        actor = call.caller.name
        body = parse_model(EntryBody, await read_body(request, self._limit))
        service = self._service()
        try:
            entry = await run_in_threadpool(
                lambda: service.entry_store.create(
                    body.spiffe_id,
                    body.selectors,
                    owner=body.owner,
                    created_by=actor,
                    x509_ttl_seconds=body.x509_ttl_seconds,
                    jwt_ttl_seconds=body.jwt_ttl_seconds,
                )
            )
        except EntryError as exc:
            field = str(exc).split(":", 1)[0]
            pointer = "/" + field if field in EntryBody.model_fields else ""
            raise Problem(
                422,
                "invalid-request",
                "Invalid registration entry",
                str(exc),
                [{"pointer": pointer, "detail": str(exc), "code": "invalid"}],
            ) from None
        await run_in_threadpool(service.entries.refresh)
        call.note(entry=entry.id, spiffe_id=body.spiffe_id)
        return json_response(entry.as_dict(), 201)

    async def delete_entry(self, request: Request, call: AdminCall) -> Response:
        service = self._service()
        try:
            entry = await run_in_threadpool(
                service.entry_store.delete, request.path_params["entry_id"]
            )
        except EntryError as exc:
            raise Problem(404, "not-found", "Entry not found", str(exc)) from None
        await run_in_threadpool(service.entries.refresh)
        call.note(spiffe_id=str(entry.spiffe_id))
        return json_response(entry.as_dict())

    async def keys(self, request: Request, call: AdminCall) -> Response:
        service = self._service()
        records = await run_in_threadpool(service.key_store.records, include_retired=True)
        return json_response(
            {
                "trust_domain": service.trust_domain,
                "keys": [
                    {**r.as_dict(), "retirable_at": service.key_store.retirable_at(r)}
                    for r in records
                ],
            }
        )

    async def rotate(self, request: Request, call: AdminCall) -> Response:
        raw = await read_body(request, self._limit)
        body = parse_model(RotateBody, raw) if raw.strip() else RotateBody()
        service = self._service()
        try:
            if body.kid is not None and body.step != "emergency":
                raise RotationError("kid names a compromised key: only with step emergency")
            done = await run_in_threadpool(rotate_step, service, body.step, body.kind, body.kid)
        except RotationError as exc:
            raise Problem(409, "rotation-refused", "Rotation step refused", str(exc)) from None
        call.note(done=done)
        return json_response({"done": done})

    async def inventory(self, request: Request, call: AdminCall) -> Response:
        """Served with or without the identity plane: callers seen at the enforcement points
        are recorded either way."""
        params = request.query_params
        options: dict[str, Any] = {}
        for name, cast in (("unused_days", float), ("long_lived_seconds", int)):
            if name in params:
                try:
                    options[name] = cast(params[name])
                except ValueError:
                    raise Problem(
                        400,
                        "invalid-query",
                        "Invalid query",
                        f"{name} must be a number",
                        [{"pointer": name, "detail": "must be a number", "code": "invalid"}],
                    ) from None
        await run_in_threadpool(self._runtime.inventory.flush)
        service = self._runtime.identity
        if service is not None:  # drift: registered entries against identities in use
            entries = await run_in_threadpool(service.entry_store.list)
            options["registered"] = [(str(e.spiffe_id), e.owner) for e in entries]
            options["drift"] = DriftCheck(
                service.trust_domain,
                lambda: (0, [spiffe_id for spiffe_id, _ in options["registered"]]),
                [rule.spiffe_id for rule in self._runtime.settings.identity.exchange_rules],
            )
        items = await run_in_threadpool(lambda: inventory_report(self._runtime.engine, **options))
        return json_response({"identities": [i.as_dict() for i in items]})


def identity_routes(api: IdentityApi, gate: AdminGate) -> list[Route]:
    """The public routes, then the admin ones behind the gate."""
    return [
        Route("/v1/identity/bundle", api.bundle, methods=["GET"]),
        Route("/.well-known/openid-configuration", api.discovery, methods=["GET"]),
        Route("/v1/identity/jwks", api.jwks, methods=["GET"]),
        Route("/v1/token", api.token, methods=["POST"]),
        gate.route("GET", "/v1/identity/entries", api.entries),
        gate.route("POST", "/v1/identity/entries", api.create_entry),
        gate.route("DELETE", "/v1/identity/entries/{entry_id}", api.delete_entry),
        gate.route("GET", "/v1/identity/keys", api.keys),
        gate.route("POST", "/v1/identity/rotate", api.rotate),
        gate.route("GET", "/v1/identity/inventory", api.inventory),
    ]
