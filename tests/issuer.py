"""A token issuer for tests: real keys, and a JWKS served over loopback HTTP that a test can
rotate or take down. It also signs people in with OIDC's authorization code flow (PKCE S256)
for the pages under /ui: `/authorize` signs in whoever `sign_in_as` names at once (no form) and
sends the browser back with a code, `/token` swaps the code for an ID token."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

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
        # Sign-in (authorization code flow): who /authorize signs in, with which key and claims.
        self.signer: Key | None = None
        self.sign_in_as: str | None = None
        self.sign_in_claims: dict[str, Any] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def date_time_string(self, timestamp: float | None = None) -> str:
                return formatdate(time.time() + jwks.clock_offset, usegmt=True)

            def answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                if urlsplit(self.path).path != "/token":
                    self.answer(404, {"error": "not_found"})
                    return
                length = int(self.headers.get("content-length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                self.answer(*jwks.exchange(form))

            def do_GET(self) -> None:
                if urlsplit(self.path).path == "/authorize":
                    query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                    status, location = jwks.authorize(query)
                    self.send_response(status)
                    if location:
                        self.send_header("location", location)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
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
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.uri = f"{self.base}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def authorize(self, query: dict[str, str]) -> tuple[int, str | None]:
        """Sign in `sign_in_as` at once: a redirect back with a code (403 when nobody)."""
        redirect = query.get("redirect_uri", "")
        if self.sign_in_as is None or not redirect or query.get("response_type") != "code":
            return 403, None
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return 302, f"{redirect}?{urlencode({'error': 'invalid_request'})}"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {**query, "user": self.sign_in_as}
        return 302, f"{redirect}?{urlencode({'code': code, 'state': query.get('state', '')})}"

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint: the code, once, with the PKCE verifier of its challenge."""
        asked = self.codes.pop(form.get("code", ""), None)
        if asked is None or self.signer is None:
            return 400, {"error": "invalid_grant"}
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if challenge != asked.get("code_challenge") or form.get("redirect_uri") != asked.get(
            "redirect_uri"
        ):
            return 400, {"error": "invalid_grant"}
        token = user_token(
            self.signer,
            asked["user"],
            aud=asked.get("client_id"),
            nonce=asked.get("nonce"),
            **self.sign_in_claims,
        )
        return 200, {"id_token": token, "token_type": "Bearer", "expires_in": 300}

    def ui_settings(self, client_id: str = "trustplane-ui") -> dict[str, Any]:
        """The `ui` settings that sign people in here."""
        return {
            "client_id": client_id,
            "authorization_endpoint": f"{self.base}/authorize",
            "token_endpoint": f"{self.base}/token",
        }

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
