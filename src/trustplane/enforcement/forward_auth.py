"""Forward-auth: the endpoint nginx `auth_request`, Traefik `ForwardAuth` and Caddy
`forward_auth` call before letting a request through.

The proxy describes the original request in headers: nginx by convention in `X-Original-URI`
and `X-Original-Method`, Traefik and Caddy in `X-Forwarded-Method`, `-Uri`, `-Host`, `-Proto`
and `-For`. Those headers are believed only from `server.trusted_proxies`; from anyone else the
request is judged as what it is (a call to this endpoint, which no route maps), so it is denied.

Answers: 200 to allow, with `X-Auth-Request-User`, `X-Trustplane-Principal` and
`X-Trustplane-Decision-Id` for the proxy to copy upstream; 401 with `WWW-Authenticate` when no
valid credential was presented; 403 with a JSON body (decision id, reason codes) otherwise. Each
answer, 401s included, is a recorded decision.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

from trustplane.decision.routes import HttpFacts
from trustplane.enforcement.enforcer import HttpEnforcer
from trustplane.problems import json_response

# Proxies call with the original method (Traefik) or GET (nginx, Caddy); accept them all.
FORWARD_AUTH_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def original_request(
    method: str, path: str, headers: Mapping[str, str], peer: str | None, trusted: bool
) -> HttpFacts:
    """What the proxy says the original request was, if it is trusted to say so."""
    host = headers.get("host", "")
    source = peer or ""
    tls = False
    if trusted:
        method = headers.get("x-original-method") or headers.get("x-forwarded-method") or method
        path = headers.get("x-original-uri") or headers.get("x-forwarded-uri") or path
        host = headers.get("x-forwarded-host") or host
        forwarded_for = headers.get("x-forwarded-for", "").split(",")[0].strip()
        source = forwarded_for or headers.get("x-real-ip", "").strip() or source
        tls = headers.get("x-forwarded-proto", "").lower() == "https"
    return HttpFacts(
        method=method.upper(),
        host=host,
        path=path,
        source_ip=source,
        tls=tls,
        headers=dict(headers),
    )


class ForwardAuth:
    def __init__(self, enforcer: HttpEnforcer) -> None:
        self._enforcer = enforcer

    async def handle(self, request: Request) -> Response:
        peer = request.client.host if request.client else None
        headers = {k.lower(): v for k, v in request.headers.items()}
        trusted = self._enforcer.authenticator.proxies.trusts(peer)
        facts = original_request(request.method, request.url.path, headers, peer, trusted)
        verdict = await self._enforcer.judge(facts, headers, peer)
        return json_response(verdict.body(), verdict.status, headers=verdict.headers())
