"""A token issuer for tests: real keys, and a JWKS served over loopback HTTP that a test can
rotate or take down."""

from __future__ import annotations

import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://idp.test.example"
AUDIENCE = "trustplane"


class Jwks:
    """A JWKS document served over loopback, which a test can rotate; counts fetches."""

    def __init__(self, port: int = 0) -> None:
        """`port`: 0 for any; a stopped issuer's port to start it again at the same URI."""
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.down = False
        self.clock_offset = 0.0  # seconds this issuer's clock (its Date header) is ahead
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def date_time_string(self, timestamp: float | None = None) -> str:
                return formatdate(time.time() + jwks.clock_offset, usegmt=True)

            def do_GET(self) -> None:
                jwks.fetches += 1
                if jwks.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"keys": jwks.keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Key:
    def __init__(self, kid: str, private: Any, algorithm: str) -> None:
        self.kid, self.private, self.algorithm = kid, private, algorithm

    def jwk(self) -> dict[str, Any]:
        algo = jwt.get_algorithm_by_name(self.algorithm)
        public = json.loads(algo.to_jwk(self.private.public_key()))  # type: ignore[arg-type]
        return {**public, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **header}
        )


def rsa_key(kid: str) -> Key:
    return Key(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for ISSUER/AUDIENCE, subject alice; None removes a claim."""
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def user_token(key: Key, user: str = "alice", mfa: bool = True, **overrides: Any) -> str:
    """A person's token signed in a minute ago, with a hardware key too when `mfa`."""
    amr = ["pwd", "hwk"] if mfa else ["pwd"]
    return key.sign(claims(sub=user, amr=amr, auth_time=int(time.time()) - 60, **overrides))


def issuer_settings(jwks: Jwks) -> list[dict[str, Any]]:
    """The `issuers` setting that trusts this issuer."""
    return [{"issuer": ISSUER, "jwks_uri": jwks.uri, "audiences": [AUDIENCE]}]
