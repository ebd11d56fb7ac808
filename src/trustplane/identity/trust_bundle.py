"""Trust bundles in the forms verifiers fetch them.

- The SPIFFE bundle (SPIFFE Trust Domain and Bundle standard, section 4): a JWKS whose keys
  carry `use: x509-svid` (with the CA in `x5c`) or `use: jwt-svid` (with `kid`), plus
  `spiffe_sequence` and `spiffe_refresh_hint`.
- The JWT bundle the Workload API hands out: a JWKS of the JWT authorities only.
- The X.509 bundle the Workload API hands out: the CA certificates, DER, concatenated.
- OIDC discovery and JWKS, so a third party with an OIDC library can verify JWT-SVIDs.

Prepared and superseded keys are published too: verifiers learn a new key before it signs
and keep an old one while SVIDs it signed are alive.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from trustplane.identity.keys import ALGORITHM, REFRESH_HINT_SECONDS, KeySet, SigningKey

_EC = jwt.get_algorithm_by_name(ALGORITHM)


def _public_jwk(key: SigningKey) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(_EC.to_jwk(key.public_key))
    return jwk


def jwt_authority_jwk(key: SigningKey) -> dict[str, Any]:
    return {**_public_jwk(key), "kid": key.kid, "use": "jwt-svid", "alg": ALGORITHM}


def x509_authority_jwk(key: SigningKey) -> dict[str, Any]:
    assert key.certificate is not None
    der = key.certificate.public_bytes(serialization.Encoding.DER)
    return {**_public_jwk(key), "use": "x509-svid", "x5c": [base64.b64encode(der).decode()]}


def spiffe_bundle(keys: KeySet) -> dict[str, Any]:
    return {
        "keys": [x509_authority_jwk(k) for k in keys.x509_authorities]
        + [jwt_authority_jwk(k) for k in keys.jwt_authorities],
        "spiffe_sequence": keys.sequence,
        "spiffe_refresh_hint": REFRESH_HINT_SECONDS,
    }


def jwt_bundle_json(keys: KeySet) -> bytes:
    return json.dumps({"keys": [jwt_authority_jwk(k) for k in keys.jwt_authorities]}).encode()


def x509_bundle_der(keys: KeySet) -> bytes:
    return b"".join(
        k.certificate.public_bytes(serialization.Encoding.DER)
        for k in keys.x509_authorities
        if k.certificate is not None
    )


def oidc_jwks(keys: KeySet) -> dict[str, Any]:
    """Plain JWKS (`use: sig`) for OIDC libraries that do not know SPIFFE's `use` values."""
    return {
        "keys": [
            {**_public_jwk(k), "kid": k.kid, "use": "sig", "alg": ALGORITHM}
            for k in keys.jwt_authorities
        ]
    }


def oidc_discovery(issuer: str, jwks_uri: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "token_endpoint": issuer.rstrip("/") + "/v1/token",
    }
