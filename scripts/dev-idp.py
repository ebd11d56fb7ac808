#!/usr/bin/env python3
"""A throwaway OIDC issuer for trying governance locally: NOT for production.

    python3 scripts/dev-idp.py serve &          # JWKS on http://127.0.0.1:8899/jwks.json
    python3 scripts/dev-idp.py token bob        # an ID-token-like JWT for User::"bob"
    python3 scripts/dev-idp.py settings         # the admin.issuers value that trusts it

The signing key is kept in .trustplane/dev-idp.pem (created on first use), so tokens minted
by `token` verify against the JWKS `serve` publishes. Tokens say the person signed in a
minute ago with a password and a hardware key (`amr: ["pwd", "hwk"]`) and last 15 minutes.

`serve` also signs people in to the pages under /ui (OIDC authorization code flow with PKCE):
`/authorize` shows a form asking who you are (no password: this is a toy) and `/token` swaps
the code for an ID token whose `aud` is the client id (`trustplane-ui`). The discovery
document at `/.well-known/openid-configuration` names both, but the issuer string is the
loopback URL, so set `TRUSTPLANE_UI__AUTHORIZATION_ENDPOINT`/`__TOKEN_ENDPOINT` or let
trustplane discover them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

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


_FORM = """<!doctype html><title>dev-idp sign-in</title>
<form method="post" action="/authorize"><p>dev-idp (a toy issuer, no password)</p>
<label>user <input name="user" value="alice" autofocus></label>
<label>groups <input name="groups" placeholder="security platform"></label>
{hidden}<button type="submit">Sign in</button></form>"""


def serve() -> None:
    body = json.dumps(_jwks()).encode()
    discovery = json.dumps(
        {
            "issuer": ISSUER,
            "jwks_uri": ISSUER + "/jwks.json",
            "authorization_endpoint": ISSUER + "/authorize",
            "token_endpoint": ISSUER + "/token",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }
    ).encode()
    codes: dict[str, dict[str, str]] = {}

    class Handler(BaseHTTPRequestHandler):
        def send(self, status: int, data: bytes, kind: str, location: str = "") -> None:
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            if location:
                self.send_header("location", location)
            self.end_headers()
            self.wfile.write(data)

        def form(self) -> dict[str, str]:
            length = int(self.headers.get("content-length") or 0)
            return {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/authorize":
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                hidden = "".join(
                    f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                    for k, v in query.items()
                )
                self.send(200, _FORM.format(hidden=hidden).encode(), "text/html; charset=utf-8")
            elif url.path == "/.well-known/openid-configuration":
                self.send(200, discovery, "application/json")
            else:
                self.send(200, body, "application/json")

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            form = self.form()
            if path == "/authorize":  # the person said who they are: back with a code
                code = secrets.token_urlsafe(16)
                codes[code] = form
                back = {"code": code, "state": form.get("state", "")}
                self.send(303, b"", "text/plain", f"{form.get('redirect_uri')}?{urlencode(back)}")
                return
            asked = codes.pop(form.get("code", ""), None) if path == "/token" else None
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if asked is None or challenge != asked.get("code_challenge"):
                self.send(400, b'{"error": "invalid_grant"}', "application/json")
                return
            groups = asked.get("groups", "").split()
            extra = {"aud": asked.get("client_id", AUDIENCE), "nonce": asked.get("nonce")}
            answer = {"id_token": token(asked.get("user", "alice"), groups, extra)}
            self.send(200, json.dumps(answer).encode(), "application/json")

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()


def token(subject: str, groups: list[str], extra: dict[str, Any] | None = None) -> str:
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
        **(extra or {}),
    }
    return jwt.encode(claims, _key(), algorithm="ES256", headers={"kid": KID})


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve()
    elif argv[:1] == ["token"] and len(argv) >= 2:
        print(token(argv[1], argv[2:]))
    elif argv[:1] == ["settings"]:
        print(json.dumps([{"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks.json",
                           "audiences": [AUDIENCE, "trustplane-ui"],
                           "algorithms": ["ES256"]}]))  # fmt: skip
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
