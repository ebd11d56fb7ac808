"""Forward-auth: the endpoint nginx `auth_request`, Traefik `ForwardAuth` and Caddy
`forward_auth` call before letting a request through.

The proxy describes the original request in headers: nginx by convention in `X-Original-URI`
and `X-Original-Method`, Traefik and Caddy in `X-Forwarded-Method`, `-Uri`, `-Host`, `-Proto`
and `-For`. Those headers are believed only from `trusted_proxies`; from anyone else the request
is judged as what it is (a call to this endpoint, which no route maps), so it is denied.

Answers: 200 to allow, with `X-Auth-Request-User`, `X-Trustplane-Principal` and
`X-Trustplane-Decision-Id` for the proxy to copy upstream; 401 with `WWW-Authenticate` when no
valid credential was presented; 403 with a JSON body (decision id, reason codes) otherwise. Each
answer, 401s included, is a recorded decision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from trustplane.decision.routes import HttpFacts, RouteMatch, RouteTable, split_path
from trustplane.enforcement.credentials import Authenticator, Credential, CredentialRejected
from trustplane.model import AccessRequest, Decision, EntityRef
from trustplane.server.pdp import PolicyDecisionPoint
from trustplane.server.problems import json_response

# Proxies call with the original method (Traefik) or GET (nginx, Caddy); accept them all.
FORWARD_AUTH_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ANONYMOUS = EntityRef("Anonymous", "anonymous")
DECISION_HEADER = "X-Trustplane-Decision-Id"
PRINCIPAL_HEADER = "X-Trustplane-Principal"
USER_HEADER = "X-Auth-Request-User"


@dataclass(frozen=True)
class Verdict:
    """An enforcement point's answer, before it is put in any protocol's shape."""

    status: int  # 200, 401 or 403
    decision: Decision
    reasons: tuple[str, ...]
    principal: EntityRef
    credential: Credential | None
    challenge: str | None = None  # WWW-Authenticate value for a 401


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
    return HttpFacts(method=method.upper(), host=host, path=path, source_ip=source, tls=tls)


class HttpEnforcer:
    """Authenticate, map the route, ask the PDP: the part every HTTP-shaped adapter shares."""

    def __init__(self, pdp: PolicyDecisionPoint, authenticator: Authenticator) -> None:
        self._pdp = pdp
        self._authenticator = authenticator

    @property
    def authenticator(self) -> Authenticator:
        return self._authenticator

    async def judge(
        self, facts: HttpFacts, headers: Mapping[str, str], peer: str | None
    ) -> Verdict:
        routes = self._pdp.routes()
        found = routes.match(facts.method, facts.host, facts.path) if routes else None
        try:
            credential = await run_in_threadpool(self._authenticator.authenticate, headers, peer)
        except CredentialRejected as exc:
            request = _attempt(ANONYMOUS, facts, routes, found)
            decision = await self._pdp.refuse(request, f"{exc.code}: {exc.detail}")
            challenge = (
                f'Bearer realm="trustplane", error="invalid_token", error_description="{exc.code}"'
            )
            return Verdict(401, decision, (exc.code,), ANONYMOUS, None, challenge)
        if credential is None:
            request = _attempt(ANONYMOUS, facts, routes, found)
            decision = await self._pdp.refuse(request, "credential_missing: no credential")
            return Verdict(
                401, decision, ("credential_missing",), ANONYMOUS, None, 'Bearer realm="trustplane"'
            )
        principal_type = routes.principal_type if routes else "User"
        principal = EntityRef(principal_type, credential.subject)
        if routes is None or found is None:
            request = _attempt(principal, facts, routes, None)
            where = f"{facts.method} {facts.host}{split_path_text(facts.path)}"
            why = "the active bundle has no routes.yaml" if routes is None else "no route matched"
            decision = await self._pdp.refuse(request, f"no_route_matched: {why} ({where})")
            return Verdict(403, decision, ("no_route_matched",), principal, credential)
        facts = dataclasses.replace(facts, credential=credential.facts())
        request = routes.access_request(found, principal, facts)
        decision = await self._pdp.decide(request)
        if decision.allowed:
            return Verdict(200, decision, (), principal, credential)
        return Verdict(403, decision, reason_codes(decision), principal, credential)


def reason_codes(decision: Decision) -> tuple[str, ...]:
    """Why a deny happened, in words a caller can act on without seeing the policies' text."""
    if decision.errors:
        return ("evaluation_error",)
    if decision.reasons:
        return tuple(r.policy_id for r in decision.reasons)
    return ("no_policy_permits",)


def split_path_text(path: str) -> str:
    return "/" + "/".join(split_path(path))


def _attempt(
    principal: EntityRef, facts: HttpFacts, routes: RouteTable | None, found: RouteMatch | None
) -> AccessRequest:
    """The request as recorded when no policy is asked: the route's action and resource when
    one matched, otherwise the raw method and path."""
    context = {"host": facts.host, "source_ip": facts.source_ip}
    if routes is not None and found is not None:
        mapped = routes.access_request(found, principal, facts)
        return AccessRequest(principal, mapped.action, mapped.resource, context)
    return AccessRequest(
        principal,
        EntityRef("Action", facts.method),
        EntityRef("HttpPath", split_path_text(facts.path)),
        context,
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
        decision_id = verdict.decision.decision_id
        if verdict.status == 200:
            assert verdict.credential is not None
            return json_response(
                {"decision": True, "decision_id": decision_id},
                headers={
                    DECISION_HEADER: decision_id,
                    USER_HEADER: verdict.credential.subject,
                    PRINCIPAL_HEADER: str(verdict.principal),
                },
            )
        response_headers = {DECISION_HEADER: decision_id}
        if verdict.challenge:
            response_headers["WWW-Authenticate"] = verdict.challenge
        return json_response(
            {"decision": False, "decision_id": decision_id, "reasons": list(verdict.reasons)},
            verdict.status,
            headers=response_headers,
        )
