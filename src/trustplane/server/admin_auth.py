"""The admin API's own zero trust: who is calling (authentication) and may they (Cedar).

Callers prove who they are with, in order of preference:
- a JWT-SVID of this trust domain with audience `admin.audience` (a workload; never one minted
  by token exchange, which refuses that audience and whose SVIDs carry `trust_rule`),
- an OIDC token from one of `admin.issuers` (a person: `admin.subject_type::"<sub>"`),
- mTLS terminated by a trusted proxy, which forwards the client certificate's SPIFFE ID in
  `X-Forwarded-Client-Cert` (a workload; when the proxy forwards the certificate too, `Cert=`,
  its serial number is checked against certificate revocations),
- the bootstrap token of `trustplane init` (first setup only; `admin.bootstrap_token = false` turns
  it off).
A revoked principal or credential (JWT id) is refused here as at the enforcement points.

Every admin action is then a Cedar question against the admin policy set: the one shipped in
`admin_policy/` or the operator's (`admin.policy_dir`), validated against the shipped schema
at start so a broken set stops the server instead of opening it. Errors deny.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cedarpy

from trustplane.config import AdminSettings
from trustplane.decision.requests import RequestError, parse_entity
from trustplane.enforcement.credentials import (
    CredentialRejected,
    ProxyTrust,
    certificate_serial,
    xfcc_certificate,
    xfcc_spiffe_id,
)
from trustplane.errors import TrustplaneError
from trustplane.identity.svid import SvidError, validate_jwt_svid
from trustplane.identity.tokens import TokenRejected, TokenVerifier, verifier_from_settings

BOOTSTRAP_PREFIX = "tpa_"


class AdminPolicyError(TrustplaneError):
    """The admin policy set cannot be used; the server refuses to start with it."""


class AdminUnauthenticated(Exception):
    def __init__(self, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.error = error


@dataclass(frozen=True)
class AdminCaller:
    kind: str  # person | workload | bootstrap
    name: str  # what the ledger shows: User::"alice", spiffe://..., bootstrap
    principal: str | None = None  # the estate entity a person is
    groups: tuple[str, ...] = ()
    token_id: str | None = field(default=None, compare=False)
    certificate_serial: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Target:
    kind: str
    id: str = ""
    requester: str = ""
    opened_by: str = ""
    tier: str = ""
    owner: str = ""

    def label(self) -> str:
        return f"{self.kind}:{self.id}" if self.id else self.kind


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policies: tuple[str, ...]
    errors: tuple[str, ...]


def _shipped(name: str) -> str:
    return resources.files("trustplane.server").joinpath("admin_policy", name).read_text()


class AdminAuthorizer:
    """Cedar over admin actions. Thread-safe: holds only compiled, immutable state."""

    def __init__(self, policy_dir: Path | None = None) -> None:
        self._schema_text = _shipped("schema.cedarschema")
        self._schema = cedarpy.Schema.from_str(self._schema_text)
        if policy_dir is None:
            text = _shipped("admin.cedar")
            origin = "the shipped admin policies"
        else:
            files = sorted(policy_dir.glob("*.cedar")) if policy_dir.is_dir() else []
            if not files:
                raise AdminPolicyError(f"admin.policy_dir {policy_dir} holds no *.cedar files")
            text = "\n".join(f.read_text() for f in files)
            origin = str(policy_dir)
        try:
            result = cedarpy.validate_policies(text, self._schema_text)
        except ValueError as exc:
            raise AdminPolicyError(f"{origin}: {exc}") from None
        if not result.validation_passed:
            problems = "; ".join(str(e) for e in result.errors[:5])
            raise AdminPolicyError(f"{origin} do not validate against the admin schema: {problems}")
        self._policies = cedarpy.PolicySet.from_str(text)
        # Cedar numbers policies parsed from text (policy0, ...); refusals name them by @id.
        static = json.loads(cedarpy.policies_to_json_str(text)).get("staticPolicies", {})
        self._names = {
            pid: str((body.get("annotations") or {}).get("id", pid)) for pid, body in static.items()
        }
        self.origin = origin

    def authorize(self, caller: AdminCaller, action: str, target: Target) -> Verdict:
        entities: list[dict[str, Any]] = [
            {"uid": {"type": "Group", "id": g}, "attrs": {}, "parents": []} for g in caller.groups
        ]
        entities.append(
            {
                "uid": {"type": "Caller", "id": caller.name},
                "attrs": {"kind": caller.kind, "name": caller.name},
                "parents": [{"type": "Group", "id": g} for g in caller.groups],
            }
        )
        entities.append(
            {
                "uid": {"type": "Target", "id": target.label()},
                "attrs": {
                    "kind": target.kind,
                    "requester": target.requester,
                    "opened_by": target.opened_by,
                    "tier": target.tier,
                    "owner": target.owner,
                },
                "parents": [],
            }
        )
        request = {
            "principal": {"type": "Caller", "id": caller.name},
            "action": {"type": "Action", "id": action},
            "resource": {"type": "Target", "id": target.label()},
            "context": {},
        }
        try:
            result = cedarpy.is_authorized(request, self._policies, entities, self._schema)
        except Exception as exc:  # fail closed
            return Verdict(False, (), (f"{type(exc).__name__}: {exc}",))
        errors = tuple(result.diagnostics.errors)
        allowed = result.decision == cedarpy.Decision.Allow and not errors
        names = tuple(self._names.get(p, p) for p in result.diagnostics.reasons)
        return Verdict(allowed, names, errors)


class AdminAuthenticator:
    def __init__(
        self,
        settings: AdminSettings,
        proxies: ProxyTrust,
        check_bootstrap: Any,
        identity: Any = None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        """`check_bootstrap(token) -> bool`; `identity`: the identity plane (JWT-SVIDs);
        `proxies`: whose forwarded client certificates are believed."""
        self._settings = settings
        self._check_bootstrap = check_bootstrap
        self._identity = identity
        self._proxies = proxies
        if verifier is None:
            verifier = verifier_from_settings(settings.issuers)
        self._verifier = verifier

    def trusts_proxy(self, peer: str | None) -> bool:
        """Whether `peer` is a proxy whose forwarded client certificate is believed."""
        return self._proxies.trusts(peer)

    def authenticate(
        self, headers: Mapping[str, str], peer: str | None, roles: Any = None
    ) -> AdminCaller:
        """The caller, or AdminUnauthenticated. `roles(principal)`: the principal's ancestors
        in the active bundle (entity text), which become groups. Blocking (JWKS fetch)."""
        header = headers.get("authorization", "").strip()
        if header:
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise AdminUnauthenticated("send Authorization: Bearer <token>")
            if token.startswith(BOOTSTRAP_PREFIX):
                return self._bootstrap(token)
            return self._jwt(token, roles)
        if self._proxies.trusts(peer):
            xfcc = headers.get("x-forwarded-client-cert", "")
            spiffe_id = xfcc_spiffe_id(xfcc)
            if spiffe_id:
                return AdminCaller("workload", spiffe_id, certificate_serial=xfcc_serial(xfcc))
        raise AdminUnauthenticated(
            "authentication required: an OIDC token or JWT-SVID (Authorization: Bearer), "
            "mTLS through a trusted proxy, or the bootstrap token"
        )

    def _bootstrap(self, token: str) -> AdminCaller:
        if not self._settings.bootstrap_token:
            raise AdminUnauthenticated(
                "the bootstrap token is turned off (admin.bootstrap_token = false)", "invalid_token"
            )
        if not self._check_bootstrap(token):
            raise AdminUnauthenticated("the admin token is not valid", "invalid_token")
        return AdminCaller("bootstrap", "bootstrap", None, ("bootstrap",))

    def _jwt(self, token: str, roles: Any) -> AdminCaller:
        if self._identity is not None:
            try:
                svid = validate_jwt_svid(self._identity.keys, token, self._settings.audience)
            except SvidError as exc:
                if exc.code not in ("token_unknown_key", "token_alg_not_allowed"):
                    raise AdminUnauthenticated(
                        f"JWT-SVID refused: {exc.detail}", "invalid_token"
                    ) from None
            else:
                if "trust_rule" in svid.claims:  # minted by token exchange: never an admin
                    raise AdminUnauthenticated(
                        "a JWT-SVID from token exchange (POST /v1/token) is not an admin API "
                        "credential",
                        "invalid_token",
                    )
                jti = svid.claims.get("jti")
                return AdminCaller(
                    "workload", str(svid.spiffe_id), token_id=jti if isinstance(jti, str) else None
                )
        if self._verifier is None:
            raise AdminUnauthenticated(
                "token not accepted: no admin.issuers are configured for OIDC sign-in",
                "invalid_token",
            )
        try:
            verified = self._verifier.verify(token)
        except TokenRejected as exc:
            raise AdminUnauthenticated(f"{exc.code}: {exc.detail}", "invalid_token") from None
        try:
            ref = parse_entity({"type": self._settings.subject_type, "id": verified.subject}, "sub")
        except RequestError as exc:
            raise AdminUnauthenticated(f"token subject unusable: {exc}", "invalid_token") from None
        principal = str(ref)
        claimed = verified.claims.get(self._settings.groups_claim) or []
        groups = (
            {g for g in claimed if isinstance(g, str) and g} if isinstance(claimed, list) else set()
        )
        for role in roles(principal) if roles is not None else ():
            try:
                groups.add(parse_entity(role, "role").id)
            except RequestError:
                continue
        jti = verified.claims.get("jti")
        return AdminCaller(
            "person",
            principal,
            principal,
            tuple(sorted(groups)),
            token_id=jti if isinstance(jti, str) else None,
        )


def xfcc_serial(value: str) -> int | None:
    """The serial number of the closest client's certificate in `X-Forwarded-Client-Cert`
    (`Cert=` holds it URL-encoded, PEM), when the proxy forwards it."""
    encoded = xfcc_certificate(value)
    if encoded is None:
        return None
    try:
        return certificate_serial(encoded)
    except CredentialRejected:
        raise AdminUnauthenticated(
            "X-Forwarded-Client-Cert: Cert is not a PEM certificate"
        ) from None
