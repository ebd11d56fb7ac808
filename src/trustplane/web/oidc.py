"""Signing people in to the pages: OIDC's authorization code flow with PKCE (RFC 7636).

The pages are one more caller of the admin API: the issuer is one of `admin.issuers`, and the ID
token it returns is what the admin gate verifies on every page (signature against the issuer's
JWKS, `iss`, `aud`, expiry, revocations), exactly as for a bearer token sent to `/v1/...`. This
module only runs the exchange: it builds the authorization URL (state, nonce, S256 challenge),
swaps the code for tokens at the token endpoint over the back channel, and checks the nonce.
Endpoints come from settings or from the issuer's discovery document.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from trustplane.config import IssuerSettings, Settings, UiSettings
from trustplane.web.session import LoginState


class SignInError(Exception):
    """Signing in cannot go on; the message says why, for the person and the log."""


@dataclass(frozen=True)
class SignedIn:
    token: str
    subject: str
    expires: float | None


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OidcClient:
    """The authorization code flow against the configured admin issuer."""

    def __init__(self, settings: Settings) -> None:
        self._ui: UiSettings = settings.ui
        self.issuer: IssuerSettings | None = _issuer(settings)
        self._endpoints: tuple[str, str] | None = None
        self._lock = threading.Lock()

    def endpoints(self) -> tuple[str, str]:
        """(authorization, token) endpoints: from settings, else discovery (fetched once)."""
        if self.issuer is None:
            raise SignInError(
                "no admin issuer to sign in with: set admin.issuers (and ui.issuer to pick one)"
            )
        ui = self._ui
        if ui.authorization_endpoint and ui.token_endpoint:
            return ui.authorization_endpoint, ui.token_endpoint
        with self._lock:
            if self._endpoints is None:
                url = self.issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
                try:
                    document = httpx.get(url, timeout=5).raise_for_status().json()
                    found = (
                        ui.authorization_endpoint or str(document["authorization_endpoint"]),
                        ui.token_endpoint or str(document["token_endpoint"]),
                    )
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    raise SignInError(
                        f"the issuer's discovery document {url} could not be read ({exc}); "
                        "set ui.authorization_endpoint and ui.token_endpoint"
                    ) from None
                self._endpoints = found
            return self._endpoints

    def start(self, redirect_uri: str, after: str) -> tuple[str, LoginState]:
        """The issuer URL to send the browser to, and what the callback must find again."""
        authorize, _ = self.endpoints()
        login = LoginState(
            secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48), after
        )
        query = {
            "response_type": "code",
            "client_id": self._ui.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self._ui.scopes),
            "state": login.state,
            "nonce": login.nonce,
            "code_challenge": _challenge(login.verifier),
            "code_challenge_method": "S256",
        }
        separator = "&" if "?" in authorize else "?"
        return f"{authorize}{separator}{urlencode(query)}", login

    def finish(self, code: str, redirect_uri: str, login: LoginState) -> SignedIn:
        """Swap `code` for the ID token (blocking). The gate verifies the token itself on
        every page; here only what belongs to this exchange is checked: the nonce."""
        _, token_url = self.endpoints()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self._ui.client_id,
            "code_verifier": login.verifier,
        }
        auth = (self._ui.client_id, self._ui.client_secret) if self._ui.client_secret else None
        try:
            response = httpx.post(token_url, data=form, auth=auth, timeout=10)
            answer: Any = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SignInError(f"the issuer's token endpoint did not answer ({exc})") from None
        if response.status_code != 200 or not isinstance(answer, dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise SignInError(
                f"the issuer refused the code (HTTP {response.status_code}, {error or 'no error'})"
            )
        token = answer.get("id_token")
        if not isinstance(token, str) or not token:
            raise SignInError("the issuer's answer holds no id_token")
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise SignInError(f"the id_token is not a JWT ({exc})") from None
        if claims.get("nonce") != login.nonce:
            raise SignInError("the id_token's nonce is not this sign-in's")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise SignInError("the id_token names no subject")
        expires = claims.get("exp")
        return SignedIn(token, subject, float(expires) if isinstance(expires, int) else None)


def _issuer(settings: Settings) -> IssuerSettings | None:
    issuers = settings.admin.issuers
    if settings.ui.issuer is None:
        return issuers[0] if issuers else None
    for issuer in issuers:
        if issuer.issuer == settings.ui.issuer:
            return issuer
    return None
