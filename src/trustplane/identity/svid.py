"""X.509-SVIDs and JWT-SVIDs, as the SPIFFE X509-SVID and JWT-SVID standards shape them.

X.509-SVID leaf: exactly one URI SAN (the SPIFFE ID), basicConstraints cA=false (critical),
keyUsage digitalSignature (critical, and never keyCertSign/cRLSign), extended key usage for
TLS server and client auth; never valid past its CA.

JWT-SVID: ES256, `kid` naming a key in the trust domain's JWT bundle, claims `sub` (the SPIFFE
ID), `aud` (one or more), `exp`, `iat`; `iss` when an issuer is configured.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustplane.identity.keys import ALGORITHM, KeySet
from trustplane.identity.spiffe_id import SpiffeId, SpiffeIdError

BACKDATE_SECONDS = 10  # tolerate verifiers whose clock is a little behind
_LEAF_NAME = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustplane")])
_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


class SvidError(Exception):
    """An SVID that cannot be issued or does not validate; `code` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class X509Svid:
    spiffe_id: SpiffeId
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    ca_certificate: x509.Certificate

    @property
    def expires_at(self) -> float:
        return self.certificate.not_valid_after_utc.timestamp()

    def chain_der(self) -> bytes:
        """Leaf first, as the Workload API's `x509_svid` field carries it (the root is in the
        bundle, not the chain)."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def key_der(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class JwtSvid:
    spiffe_id: SpiffeId
    token: str
    expires_at: float
    audience: tuple[str, ...]


def issue_x509_svid(
    keys: KeySet,
    spiffe_id: SpiffeId,
    ttl_seconds: int,
    *,
    now: float | None = None,
    private_key: ec.EllipticCurvePrivateKey | None = None,
) -> X509Svid:
    signer = keys.x509_signer
    if signer is None or signer.certificate is None:
        raise SvidError("no_active_ca", "the trust domain has no active CA: run identity init")
    if not spiffe_id.member_of(keys.trust_domain):
        raise SvidError(
            "wrong_trust_domain", f"{spiffe_id} is not in trust domain {keys.trust_domain}"
        )
    now = time.time() if now is None else now
    key = private_key or ec.generate_private_key(ec.SECP256R1())
    ca = signer.certificate
    not_after = min(now + ttl_seconds, ca.not_valid_after_utc.timestamp())
    if not_after <= now:
        raise SvidError("ca_expired", f"CA {signer.kid} has expired")
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_LEAF_NAME)
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - BACKDATE_SECONDS, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(not_after, dt.UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_KEY_USAGE, critical=True)
        .add_extension(_EKU, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key), critical=False
        )
        .sign(signer.private_key, hashes.SHA256())
    )
    return X509Svid(spiffe_id, certificate, key, ca)


def issue_jwt_svid(
    keys: KeySet,
    spiffe_id: SpiffeId,
    audience: Sequence[str],
    ttl_seconds: int,
    *,
    issuer: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> JwtSvid:
    signer = keys.jwt_signer
    if signer is None:
        raise SvidError("no_active_key", "the trust domain has no active JWT key")
    if not audience or any(not a for a in audience):
        raise SvidError("missing_audience", "a JWT-SVID needs at least one non-empty audience")
    if not spiffe_id.member_of(keys.trust_domain):
        raise SvidError(
            "wrong_trust_domain", f"{spiffe_id} is not in trust domain {keys.trust_domain}"
        )
    now = time.time() if now is None else now
    issued = int(now)
    expires = min(issued + ttl_seconds, int(signer.record.not_after))
    claims: dict[str, Any] = dict(extra_claims or {})
    claims.update(
        {
            "sub": str(spiffe_id),
            "aud": list(audience) if len(audience) > 1 else audience[0],
            "iat": issued,
            "exp": expires,
            "jti": secrets.token_urlsafe(16),
        }
    )
    if issuer:
        claims["iss"] = issuer
    token = jwt.encode(
        claims, signer.private_key, algorithm=ALGORITHM, headers={"kid": signer.kid, "typ": "JWT"}
    )
    return JwtSvid(spiffe_id, token, float(expires), tuple(audience))


@dataclass(frozen=True)
class ValidatedJwt:
    spiffe_id: SpiffeId
    claims: dict[str, Any]


def validate_jwt_svid(keys: KeySet, token: str, audience: str) -> ValidatedJwt:
    """Validate a JWT-SVID of this trust domain for `audience` (the ValidateJWTSVID rules)."""
    if not audience:
        raise SvidError("missing_audience", "an audience to validate against is required")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise SvidError("token_malformed", str(exc)) from None
    if header.get("alg") != ALGORITHM:
        raise SvidError("token_alg_not_allowed", f"algorithm {header.get('alg')!r} is not allowed")
    kid = header.get("kid")
    key = keys.jwt_key(kid) if isinstance(kid, str) else None
    if key is None:
        raise SvidError("token_unknown_key", f"no key {kid!r} in the JWT bundle")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.public_key,
            algorithms=[ALGORITHM],
            audience=audience,
            options={"require": ["sub", "aud", "exp"], "verify_iss": False},
        )
    except jwt.ExpiredSignatureError:
        raise SvidError("token_expired", "the JWT-SVID has expired") from None
    except jwt.InvalidAudienceError:
        raise SvidError("token_wrong_audience", f"audience {audience!r} is not in aud") from None
    except jwt.PyJWTError as exc:
        raise SvidError("token_invalid", str(exc)) from None
    try:
        spiffe_id = SpiffeId.parse(str(claims["sub"]))
    except SpiffeIdError as exc:
        raise SvidError("token_bad_subject", str(exc)) from None
    if not spiffe_id.member_of(keys.trust_domain):
        raise SvidError("wrong_trust_domain", f"{spiffe_id} is not in {keys.trust_domain}")
    return ValidatedJwt(spiffe_id, claims)
