#!/usr/bin/env python3
"""A throwaway OIDC issuer for trying governance locally: NOT for production.

    python3 scripts/dev-idp.py serve &          # JWKS on http://127.0.0.1:8899/jwks.json
    python3 scripts/dev-idp.py token bob        # an ID-token-like JWT for User::"bob"
    python3 scripts/dev-idp.py settings         # the admin.issuers value that trusts it

The signing key is kept in .trustplane/dev-idp.pem (created on first use), so tokens minted
by `token` verify against the JWKS `serve` publishes. Tokens say the person signed in a
minute ago with a password and a hardware key (`amr: ["pwd", "hwk"]`) and last 15 minutes.
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PORT = 8899
ISSUER = f"http://127.0.0.1:{PORT}"
AUDIENCE = "trustplane-admin"
KEY_FILE = Path(".trustplane") / "dev-idp.pem"
KID = "dev-idp-1"


def _key() -> ec.EllipticCurvePrivateKey:
    if KEY_FILE.exists():
        loaded = serialization.load_pem_private_key(KEY_FILE.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        return loaded
    key = ec.generate_private_key(ec.SECP256R1())
    KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    KEY_FILE.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    KEY_FILE.chmod(0o600)
    return key


def _jwks() -> dict[str, Any]:
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(_key().public_key()))
    return {"keys": [{**public, "kid": KID, "use": "sig", "alg": "ES256"}]}


def serve() -> None:
    body = json.dumps(_jwks()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()


def token(subject: str, groups: list[str]) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + 900,
        "auth_time": now - 60,
        "amr": ["pwd", "hwk"],
        "groups": groups,
    }
    return jwt.encode(claims, _key(), algorithm="ES256", headers={"kid": KID})


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve()
    elif argv[:1] == ["token"] and len(argv) >= 2:
        print(token(argv[1], argv[2:]))
    elif argv[:1] == ["settings"]:
        print(json.dumps([{"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks.json",
                           "audiences": [AUDIENCE], "algorithms": ["ES256"]}]))  # fmt: skip
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
