"""The enforcement decision every HTTP-shaped adapter shares: authenticate the caller, map the
route, ask the PDP, and shape the answer (status, headers, JSON body) the adapters translate into
their protocol (forward-auth, Envoy HTTP and gRPC ext_authz)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from starlette.concurrency import run_in_threadpool

from trustplane.decision.point import PolicyDecisionPoint
from trustplane.decision.routes import HttpFacts, RouteMatch, RouteTable, split_path
from trustplane.decision.step_up import parse_step_up, step_up_challenge
from trustplane.enforcement.credentials import Authenticator, Credential, CredentialRejected
from trustplane.enforcement.devices import DeviceFinder
from trustplane.model import TRACE_ID, AccessRequest, Decision, EntityRef, Evidence
from trustplane.telemetry.tracing import TRACE_HEADER, Tracing

ANONYMOUS = EntityRef("Anonymous", "anonymous")
DECISION_HEADER = "X-Trustplane-Decision-Id"
PRINCIPAL_HEADER = "X-Trustplane-Principal"
USER_HEADER = "X-Auth-Request-User"
# How long a proxy or middleware may reuse an allow (decision/risk_cache.py), and the cache
# epoch it was given under (GET /access/v1/epoch moves past it when reuse must stop).
TTL_HEADER = "X-Trustplane-Cache-Ttl"
EPOCH_HEADER = "X-Trustplane-Cache-Epoch"


@dataclass(frozen=True)
class Verdict:
    """An enforcement point's answer, before it is put in any protocol's shape."""

    status: int  # 200, 401 or 403
    decision: Decision
    reasons: tuple[str, ...]
    principal: EntityRef
    credential: Credential | None
    challenge: str | None = None  # WWW-Authenticate value for a 401

    def headers(self) -> dict[str, str]:
        """Response headers: on allow, who the caller is (for the proxy to pass upstream) and
        how long the allow may be reused; on a 401, the challenge; always the decision id."""
        headers = {DECISION_HEADER: self.decision.decision_id}
        trace_id = TRACE_ID.get()
        if trace_id is not None:
            headers[TRACE_HEADER] = trace_id
        if self.status == 200:
            headers[TTL_HEADER] = str(self.decision.ttl_seconds)
            headers[EPOCH_HEADER] = str(self.decision.cache_epoch)
            if self.credential is not None:
                headers[USER_HEADER] = self.credential.subject
                headers[PRINCIPAL_HEADER] = str(self.principal)
        if self.challenge:
            headers["WWW-Authenticate"] = self.challenge
        return headers

    def body(self) -> dict[str, Any]:
        if self.status == 200:
            return {"decision": True, "decision_id": self.decision.decision_id}
        return {
            "decision": False,
            "decision_id": self.decision.decision_id,
            "reasons": list(self.reasons),
        }


class HttpEnforcer:
    """Authenticate, map the route, ask the PDP: the part every HTTP-shaped adapter shares."""

    def __init__(
        self,
        pdp: PolicyDecisionPoint,
        authenticator: Authenticator,
        seen: Callable[[Credential], None] | None = None,
        devices: DeviceFinder | None = None,
    ) -> None:
        """`seen` is told of every authenticated caller (the identity inventory); `devices`
        names the request's device for the trust plane."""
        self._pdp = pdp
        self._authenticator = authenticator
        self._seen = seen
        self._devices = devices
        self._workloads: tuple[str | None, dict[str, str]] = (None, {})

    @property
    def authenticator(self) -> Authenticator:
        return self._authenticator

    @property
    def tracing(self) -> Tracing | None:
        """The decision path's tracing (None: off)."""
        return self._pdp.tracing

    async def judge(
        self,
        facts: HttpFacts,
        headers: Mapping[str, str],
        peer: str | None,
        spiffe_id: str | None = None,
        peer_certificate: str | None = None,
    ) -> Verdict:
        """`peer`: the address of whoever asks (a proxy, Envoy); `spiffe_id`: the original
        caller's mTLS identity, when the asking proxy terminated mTLS and says so;
        `peer_certificate`: that caller's certificate (URL-encoded PEM), when it is passed on."""
        routes = self._pdp.routes()
        found = routes.match(facts.method, facts.host, facts.path) if routes else None
        authenticate = self._authenticator.authenticate
        rejected: CredentialRejected | None = None
        credential: Credential | None = None
        with self._pdp.span("trustplane.authenticate") as span:
            try:
                if self._authenticator.would_block(headers):  # a JWKS fetch: off the loop
                    credential = await run_in_threadpool(
                        authenticate, headers, peer, spiffe_id, peer_certificate
                    )
                else:  # cached keys, SPIFFE IDs, proxy headers: microseconds, no thread hop
                    credential = authenticate(headers, peer, spiffe_id, peer_certificate)
            except CredentialRejected as exc:
                rejected = exc
            if span is not None:  # what kind of credential, or why it was refused
                kind = "none"
                if rejected is not None:
                    kind = rejected.code
                elif credential is not None:
                    kind = "mtls" if credential.workload else credential.issuer
                span.set_attribute("trustplane.credential", kind)
        if rejected is not None:
            code = rejected.code
            request = _attempt(ANONYMOUS, facts, routes, found)
            decision = await self._pdp.refuse(request, f"{code}: {rejected.detail}")
            challenge = (
                f'Bearer realm="trustplane", error="invalid_token", error_description="{code}"'
            )
            return Verdict(401, decision, (code,), ANONYMOUS, None, challenge)
        revoked = None
        if credential is not None:
            revoked = self._pdp.revoked_credential(
                credential.token_id
            ) or self._pdp.revoked_certificate(credential.certificate_serial)
        if revoked is not None:  # signature and expiry may be fine: the credential is not
            request = _attempt(ANONYMOUS, facts, routes, found)
            decision = await self._pdp.refuse(
                request, f"credential_revoked: {revoked.target} ({revoked.reason})"
            )
            challenge = (
                'Bearer realm="trustplane", error="invalid_token", '
                'error_description="credential_revoked"'
            )
            return Verdict(401, decision, ("credential_revoked",), ANONYMOUS, None, challenge)
        if credential is None:
            request = _attempt(ANONYMOUS, facts, routes, found)
            decision = await self._pdp.refuse(request, "credential_missing: no credential")
            return Verdict(
                401, decision, ("credential_missing",), ANONYMOUS, None, 'Bearer realm="trustplane"'
            )
        if self._seen is not None:
            self._seen(credential)
        principal = self._principal(credential, routes)
        if routes is None or found is None:
            request = _attempt(principal, facts, routes, None)
            where = f"{facts.method} {facts.host}{split_path_text(facts.path)}"
            why = "the active bundle has no routes.yaml" if routes is None else "no route matched"
            decision = await self._pdp.refuse(request, f"no_route_matched: {why} ({where})")
            return Verdict(403, decision, ("no_route_matched",), principal, credential)
        request = routes.access_request(found, principal, facts, credential.facts())
        # What this PDP verified itself, for the trust plane (never the caller's word).
        vouched = "mtls" if credential.workload else "token" if credential.claims else "proxy"
        device, device_source = (
            self._devices.find(headers, peer, spiffe_id, peer_certificate)
            if self._devices is not None
            else (None, None)
        )
        evidence = Evidence(
            credential.claims,
            facts.source_ip or None,
            credential.workload,
            vouched,
            credential.subject,
            device,
            device_source,
        )
        request = replace(request, evidence=evidence)
        decision = await self._pdp.decide(request)
        if decision.allowed:
            return Verdict(200, decision, (), principal, credential)
        step_ups = [parse_step_up(r.step_up) for r in decision.reasons if r.step_up]
        if step_ups and not credential.workload:  # people can step up; workloads cannot
            reasons = ("insufficient_user_authentication", *reason_codes(decision))
            challenge = step_up_challenge(step_ups)
            return Verdict(401, decision, reasons, principal, credential, challenge)
        return Verdict(403, decision, reason_codes(decision), principal, credential)

    def _principal(self, credential: Credential, routes: RouteTable | None) -> EntityRef:
        """People: `principal_type` with the token's subject as id. Workloads: the static
        entity of `workload_type` whose `workload_id_attribute` is the SPIFFE ID (so policies
        name `Service::"checkout"`), or the SPIFFE ID itself when no entity claims it."""
        if not credential.workload:
            return EntityRef(routes.principal_type if routes else "User", credential.subject)
        if routes is None:
            return EntityRef("Service", credential.subject)
        known = self._workload_index(routes)
        return EntityRef(routes.workload_type, known.get(credential.subject, credential.subject))

    def _workload_index(self, routes: RouteTable) -> dict[str, str]:
        active = self._pdp.active_bundle()
        revision = active.revision if active is not None else None
        cached_revision, index = self._workloads
        if revision != cached_revision:
            index = {}
            for entity in active.entities if active is not None else []:
                uid = entity.get("uid", {})
                value = entity.get("attrs", {}).get(routes.workload_id_attribute)
                if uid.get("type") == routes.workload_type and isinstance(value, str):
                    index[value] = str(uid.get("id"))
            self._workloads = (revision, index)
        return index


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
