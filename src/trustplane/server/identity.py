"""HTTP face of the identity plane.

Public (verifiers and pipelines need them without an admin token):
- `GET /v1/identity/bundle`: the SPIFFE bundle of the trust domain;
- `GET /.well-known/openid-configuration` and `GET /v1/identity/jwks`: OIDC discovery, so any
  OIDC library can verify JWT-SVIDs;
- `POST /v1/token`: RFC 8693 token exchange for CI (errors in RFC 6749 form, never problem+json,
  because OAuth clients parse `error`).

The admin routes (registration entries, keys and rotation, the inventory) are in
`server/admin/identity.py`.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trustplane.identity.exchange import ExchangeError, TokenExchange
from trustplane.identity.service import IdentityService
from trustplane.identity.tokens import TokenVerifier
from trustplane.identity.trust_bundle import oidc_discovery, oidc_jwks, spiffe_bundle
from trustplane.problems import Problem, json_response, read_body
from trustplane.server.runtime import Runtime

FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


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


def identity_routes(api: IdentityApi) -> list[Route]:
    """The public routes; the admin ones are in `server/admin/identity.py`."""
    return [
        Route("/v1/identity/bundle", api.bundle, methods=["GET"]),
        Route("/.well-known/openid-configuration", api.discovery, methods=["GET"]),
        Route("/v1/identity/jwks", api.jwks, methods=["GET"]),
        Route("/v1/token", api.token, methods=["POST"]),
    ]
