"""OAuth 2.0 Token Exchange (RFC 8693) for CI pipelines: a pipeline's OIDC token in, a short-lived
JWT-SVID out, only when a trust rule's conditions on the token's claims all hold.

The subject token is verified by `tokens.TokenVerifier` (issuer's JWKS, allowed algorithms,
audience, expiry). Trust rules come from the settings (`identity.exchange_rules`); each names an
issuer, conditions on claims (exact values, or a prefix ending in `*`), the SPIFFE ID to issue
(`{claim}` is replaced by the claim's value), a lifetime of at most 15 minutes and, optionally,
the only audiences it issues for. The first rule that matches wins; rules are tried in order.
The admin API's audience (`admin.audience`) is never granted: the settings refuse a rule that
lists it, and an exchange asking for it is refused (403 `invalid_target`) before the token is
even looked at. Errors are RFC 6749 section 5.2 codes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trustplane.config import ExchangeRuleSettings
from trustplane.identity.service import IdentityService
from trustplane.identity.spiffe_id import SpiffeId, SpiffeIdError
from trustplane.identity.svid import SvidError, issue_jwt_svid
from trustplane.identity.tokens import TokenRejected, TokenVerifier, VerifiedToken

log = logging.getLogger("trustplane.identity.exchange")

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
SUBJECT_TOKEN_TYPES = (JWT_TYPE, ID_TOKEN_TYPE)
MAX_TTL_SECONDS = 900
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.:-]+)\}")


class ExchangeError(Exception):
    """An RFC 6749 error response: `error` code, description, HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class ExchangeResult:
    token: str
    expires_in: int
    spiffe_id: str
    rule: str

    def body(self) -> dict[str, Any]:
        return {
            "access_token": self.token,
            "issued_token_type": JWT_TYPE,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }


def _matches(value: Any, accepted: str | list[str]) -> bool:
    if not isinstance(value, str):
        return False
    for option in [accepted] if isinstance(accepted, str) else accepted:
        if option.endswith("*") and value.startswith(option[:-1]):
            return True
        if value == option:
            return True
    return False


def rule_mismatch(rule: ExchangeRuleSettings, claims: Mapping[str, Any]) -> str | None:
    """The first condition of `rule` the claims fail, or None when all hold."""
    for claim, accepted in rule.claims.items():
        if not _matches(claims.get(claim), accepted):
            return f"{claim}={claims.get(claim)!r} is not {accepted!r}"
    return None


def render_spiffe_id(template: str, claims: Mapping[str, Any]) -> SpiffeId:
    def value(match: re.Match[str]) -> str:
        found = claims.get(match.group(1))
        if not isinstance(found, str) or not found:
            raise ExchangeError("invalid_grant", f"claim {match.group(1)!r} is missing")
        return found

    text = _PLACEHOLDER.sub(value, template)
    try:
        return SpiffeId.parse(text)
    except SpiffeIdError as exc:
        raise ExchangeError("invalid_grant", f"the rule's SPIFFE ID is not valid: {exc}") from None


class TokenExchange:
    def __init__(
        self,
        service: IdentityService,
        verifier: TokenVerifier | None,
        rules: Sequence[ExchangeRuleSettings],
        revoked: Callable[[str | None, str], str | None],
        reserved_audiences: Collection[str] = (),
    ) -> None:
        """`revoked(token_id, spiffe_id)` names a revocation that forbids the exchange;
        `reserved_audiences` (the admin API's) are never granted, whatever the rule."""
        self._service = service
        self._verifier = verifier
        self._rules = tuple(rules)
        self._revoked = revoked
        self._reserved = frozenset(reserved_audiences)

    def exchange(
        self, form: Mapping[str, str], audiences: Sequence[str] | None = None
    ) -> ExchangeResult:
        """`form`: one value per parameter; `audiences`: every `audience` given (it may be
        repeated). Blocking (a JWKS fetch may happen): call from a worker thread."""
        grant = form.get("grant_type")
        if grant != GRANT_TYPE:
            raise ExchangeError(
                "unsupported_grant_type", f"grant_type must be {GRANT_TYPE}, not {grant!r}"
            )
        subject_token = form.get("subject_token", "")
        if not subject_token:
            raise ExchangeError("invalid_request", "subject_token is required")
        token_type = form.get("subject_token_type")
        if token_type not in SUBJECT_TOKEN_TYPES:
            raise ExchangeError(
                "invalid_request",
                f"subject_token_type must be one of {list(SUBJECT_TOKEN_TYPES)}",
            )
        requested = form.get("requested_token_type")
        if requested not in (None, "", JWT_TYPE):
            raise ExchangeError("invalid_request", f"only {JWT_TYPE} can be issued")
        if "actor_token" in form:
            raise ExchangeError("invalid_request", "delegation (actor_token) is not supported")
        given = audiences if audiences is not None else [form.get("audience", "")]
        audience = [a for a in given if a] or [self._service.issuer]
        reserved = sorted(self._reserved.intersection(audience))
        if reserved:
            raise ExchangeError(
                "invalid_target",
                f"audience {reserved[0]!r} is reserved for the trustplane admin API: token "
                "exchange never grants it",
                403,
            )
        verified = self._verify(subject_token)
        rule, spiffe_id = self._match(verified)
        if rule.audiences is not None:
            outside = [a for a in audience if a not in rule.audiences]
            if outside:
                raise ExchangeError(
                    "invalid_target",
                    f"rule {rule.name} does not issue for audience {outside[0]!r} "
                    f"(it issues for {', '.join(rule.audiences)})",
                )
        revocation = self._revoked(
            verified.claims.get("jti") if isinstance(verified.claims.get("jti"), str) else None,
            str(spiffe_id),
        )
        if revocation is not None:
            raise ExchangeError("invalid_grant", f"credential_revoked: {revocation}")
        ttl = min(rule.ttl_seconds, MAX_TTL_SECONDS)
        ci = {k: v for k, v in verified.claims.items() if k in rule.claims or k in ("iss", "sub")}
        try:
            svid = issue_jwt_svid(
                self._service.keys,
                spiffe_id,
                audience,
                ttl,
                issuer=self._service.issuer,
                extra_claims={"ci": ci, "trust_rule": rule.name},
            )
        except SvidError as exc:
            raise ExchangeError("invalid_target", exc.detail) from None
        self._service.inventory.seen(str(spiffe_id), "ci", rule.owner, ttl)
        log.info("token exchange: %s via rule %s", spiffe_id, rule.name)
        return ExchangeResult(svid.token, ttl, str(spiffe_id), rule.name)

    def _verify(self, token: str) -> VerifiedToken:
        if self._verifier is None:
            raise ExchangeError("invalid_grant", "token_unknown_issuer: no issuers are configured")
        try:
            return self._verifier.verify(token)
        except TokenRejected as exc:
            raise ExchangeError("invalid_grant", f"{exc.code}: {exc.detail}") from None

    def _match(self, token: VerifiedToken) -> tuple[ExchangeRuleSettings, SpiffeId]:
        reasons = []
        for rule in self._rules:
            if rule.issuer != token.issuer:
                continue
            mismatch = rule_mismatch(rule, token.claims)
            if mismatch is None:
                spiffe_id = render_spiffe_id(rule.spiffe_id, token.claims)
                if not spiffe_id.member_of(self._service.trust_domain):
                    raise ExchangeError(
                        "invalid_grant", f"rule {rule.name} issues outside this trust domain"
                    )
                return rule, spiffe_id
            reasons.append(f"rule {rule.name}: {mismatch}")
        if not reasons:
            raise ExchangeError("invalid_grant", f"no trust rule for issuer {token.issuer}")
        raise ExchangeError("invalid_grant", "no trust rule matches: " + "; ".join(reasons))
