"""Who is calling: a verified bearer JWT, or the identity header of a trusted proxy.

Forwarded headers are only believed from `server.trusted_proxies`; from anyone else they are ignored
and the request is judged without them (so a caller cannot name itself in `X-Forwarded-User`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any
from urllib.parse import unquote

from cryptography import x509

from trustplane.config import PepSettings
from trustplane.identity.tokens import (
    ClockSkewObserver,
    TokenRejected,
    TokenVerifier,
    VerifiedToken,
    verifier_from_settings,
)
from trustplane.trust.authentication import authentication_strength


class CredentialRejected(Exception):
    """A credential was presented but proves nothing; `code` is the reason for the caller."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Credential:
    """An authenticated caller."""

    subject: str
    issuer: str  # the token issuer; "proxy" for a trusted proxy's identity header; "spiffe"
    mfa: bool
    auth_age_seconds: int
    token_id: str | None = None
    workload: bool = False  # a SPIFFE ID from mTLS: the caller is a workload, not a person
    mfa_strength: str = "none"  # none | otp | phishing_resistant (trust/authentication.py)
    lifetime_seconds: int = 0  # exp - iat of a token (the identity inventory flags long ones)
    # The serial of the mTLS client certificate, when the proxy that verified it passed it on
    # (Envoy's `source.certificate`, `Cert=` in X-Forwarded-Client-Cert): revocable by serial.
    certificate_serial: int | None = None
    # The verified token's authentication claims (amr, acr, auth_time, iat, exp): what the
    # trust plane weighs (trust/authentication.py). None for mTLS and proxy callers.
    claims: dict[str, Any] | None = None

    def facts(self) -> dict[str, Any]:
        """What routes.yaml may reference as `${credential.*}`."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "mfa": self.mfa,
            "mfa_strength": self.mfa_strength,
            "auth_age_seconds": self.auth_age_seconds,
        }


AUTHENTICATION_CLAIMS = ("amr", "acr", "auth_time", "iat", "exp")


def credential_from_token(token: VerifiedToken, now: float | None = None) -> Credential:
    strength = authentication_strength(token.claims, now)
    jti = token.claims.get("jti")
    exp, iat = token.claims.get("exp"), token.claims.get("iat")
    lifetime = 0
    if isinstance(exp, int | float) and isinstance(iat, int | float):
        lifetime = max(0, int(exp - iat))
    return Credential(
        subject=token.subject,
        issuer=token.issuer,
        mfa=strength.mfa,
        auth_age_seconds=strength.auth_age_seconds,
        token_id=jti if isinstance(jti, str) else None,
        mfa_strength=strength.mfa_strength,
        lifetime_seconds=lifetime,
        claims={k: token.claims[k] for k in AUTHENTICATION_CLAIMS if k in token.claims},
    )


class ProxyTrust:
    """Which peers may speak for the original request through forwarded headers."""

    # Answers are remembered per peer address string: parsing the address costs more than the
    # rest of authentication, and the peers (proxies, Envoys) are few. The networks never
    # change for an instance, so an answer never goes stale; the bound only caps memory.
    CACHE_SIZE = 1024

    def __init__(self, networks: Sequence[IPv4Network | IPv6Network]) -> None:
        self._networks = tuple(networks)
        self._answers: dict[str, bool] = {}

    def trusts(self, peer: str | None) -> bool:
        if not peer or not self._networks:
            return False
        known = self._answers.get(peer)
        if known is not None:
            return known
        trusted = self._check(peer)
        if len(self._answers) >= self.CACHE_SIZE:
            self._answers.clear()
        self._answers[peer] = trusted
        return trusted

    def _check(self, peer: str) -> bool:
        try:
            address = ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._networks)


class Authenticator:
    def __init__(
        self,
        verifier: TokenVerifier | None,
        proxies: ProxyTrust,
        identity_header: str | None = None,
    ) -> None:
        self._verifier = verifier
        self._proxies = proxies
        self._identity_header = identity_header.lower() if identity_header else None

    def jwks_status(self) -> dict[str, tuple[bool, float | None]]:
        """The token issuers' JWKS health (identity/tokens.py), for the metrics."""
        return {} if self._verifier is None else self._verifier.jwks_status()

    @classmethod
    def from_settings(
        cls,
        settings: PepSettings,
        proxies: ProxyTrust,
        on_clock_skew: ClockSkewObserver | None = None,
    ) -> Authenticator:
        """The authenticator of the enforcement points: the `[pep]` issuers and identity
        header, forwarded headers believed from `proxies` (`server.trusted_proxies`)."""
        verifier = verifier_from_settings(settings.issuers, on_clock_skew)
        return cls(verifier, proxies, settings.identity_header)

    @property
    def proxies(self) -> ProxyTrust:
        return self._proxies

    def would_block(self, headers: Mapping[str, str]) -> bool:
        """Whether `authenticate` would do network I/O now (a JWKS fetch)."""
        authorization = headers.get("authorization")
        if not authorization or self._verifier is None:  # mTLS and proxy callers: no token
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if self._verifier is None or scheme.lower() != "bearer" or not token.strip():
            return False
        return self._verifier.would_fetch(token.strip())

    def authenticate(
        self,
        headers: Mapping[str, str],
        peer: str | None,
        spiffe_id: str | None = None,
        peer_certificate: str | None = None,
    ) -> Credential | None:
        """The caller's credential; None when none was presented. A bearer token names the
        caller first; then `spiffe_id` (the peer's mTLS identity as Envoy saw it), the client
        certificate a trusted proxy forwarded in `X-Forwarded-Client-Cert`, and the trusted
        proxy's identity header. `peer_certificate`: the URL-encoded PEM of the peer's
        certificate, when Envoy passes it on. Blocking: an unknown key id may fetch the issuer's
        JWKS (call from a worker thread)."""
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise CredentialRejected(
                    "credential_unsupported", "Authorization must be 'Bearer <token>'"
                )
            if self._verifier is None:
                raise CredentialRejected(
                    "token_unknown_issuer", "no token issuers are configured on this PDP"
                )
            try:
                return credential_from_token(self._verifier.verify(token.strip()))
            except TokenRejected as exc:
                raise CredentialRejected(exc.code, exc.detail) from None
        trusted = self._proxies.trusts(peer)
        if not spiffe_id and trusted:
            xfcc = headers.get("x-forwarded-client-cert", "")
            spiffe_id = xfcc_spiffe_id(xfcc)
            peer_certificate = xfcc_certificate(xfcc) if spiffe_id else None
        if spiffe_id:
            if not spiffe_id.startswith("spiffe://"):
                raise CredentialRejected("credential_unsupported", "peer identity is not SPIFFE")
            serial = certificate_serial(peer_certificate) if peer_certificate else None
            return Credential(
                subject=spiffe_id,
                issuer="spiffe",
                mfa=False,
                auth_age_seconds=0,
                workload=True,
                certificate_serial=serial,
            )
        if self._identity_header and trusted:
            name = headers.get(self._identity_header, "").strip()
            if name:
                return Credential(subject=name, issuer="proxy", mfa=False, auth_age_seconds=0)
        return None


def xfcc_spiffe_id(value: str) -> str | None:
    """The SPIFFE ID of the closest client in an Envoy `X-Forwarded-Client-Cert` header: the
    `URI=` of its last element (each proxy appends the client it saw)."""
    if not value:
        return None
    last = _split_outside_quotes(value, ",")[-1]
    for pair in _split_outside_quotes(last, ";"):
        key, _, item = pair.partition("=")
        if key.strip().lower() == "uri":
            uri = item.strip().strip('"')
            return uri if uri.startswith("spiffe://") else None
    return None


def xfcc_certificate(value: str) -> str | None:
    """The closest client's certificate in `X-Forwarded-Client-Cert` (`Cert=`, URL-encoded
    PEM), when the proxy forwards it."""
    if not value:
        return None
    last = _split_outside_quotes(value, ",")[-1]
    for pair in _split_outside_quotes(last, ";"):
        key, _, item = pair.partition("=")
        if key.strip().lower() == "cert":
            return item.strip().strip('"')
    return None


def certificate_serial(encoded_pem: str) -> int:
    """The serial number of a URL-encoded PEM certificate, as Envoy forwards one (in
    `source.certificate` and in XFCC's `Cert=`). A certificate that does not parse is refused
    rather than ignored: whoever sent it meant it to identify the caller."""
    try:
        pem = unquote(encoded_pem).encode()
        return int(x509.load_pem_x509_certificate(pem).serial_number)
    except ValueError:
        raise CredentialRejected(
            "certificate_invalid", "the forwarded client certificate is not a PEM certificate"
        ) from None


def _split_outside_quotes(value: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts
