"""The pages' session: a cookie holding the signed-in person's ID token and a CSRF secret.

The cookie is sealed with Fernet (AES-128-CBC with an HMAC-SHA256, from `cryptography`) under
a key kept in `state_dir/ui-session.key` (0600, made on first use), so every worker and every
replica on the same state directory reads the same sessions and nothing is stored server-side.
Sealing rather than only signing keeps the ID token (a bearer credential for the admin API)
unreadable to anything that sees the cookie. The cookie is HttpOnly, SameSite=Strict and Secure
when the page came over TLS; the admin gate verifies the token inside it on every request, so a
revoked person or an expired token ends the session at once.

Signing in carries its own short cookie (state, nonce, PKCE verifier, where to go after), also
sealed, SameSite=Lax because the issuer sends the browser back from another site.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

SESSION_COOKIE = "tp_session"
LOGIN_COOKIE = "tp_login"
LOGIN_SECONDS = 600  # time allowed at the issuer's sign-in page


@dataclass(frozen=True)
class Session:
    """A signed-in person: the ID token the gate verifies, the CSRF secret every form
    carries back, and when the session ends."""

    token: str
    csrf: str
    subject: str
    expires: float

    def as_dict(self) -> dict[str, Any]:
        return {"t": self.token, "c": self.csrf, "s": self.subject, "e": self.expires}


@dataclass(frozen=True)
class LoginState:
    """What signing in must find again when the issuer sends the browser back."""

    state: str
    nonce: str
    verifier: str
    next: str


def session_key(state_dir: Path) -> bytes:
    """The Fernet key in `state_dir/ui-session.key`, made (0600) on first use. Made with
    O_EXCL, so workers starting together agree on one key."""
    path = state_dir / "ui-session.key"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


class Sessions:
    """Seal and open the two cookies."""

    def __init__(self, key: bytes, hours: float) -> None:
        self._fernet = Fernet(key)
        self._seconds = int(hours * 3600)

    def new(self, token: str, subject: str, token_expires: float | None) -> Session:
        ends = time.time() + self._seconds
        if token_expires is not None:
            ends = min(ends, token_expires)
        return Session(token, secrets.token_urlsafe(32), subject, ends)

    def seal(self, session: Session) -> str:
        return self._fernet.encrypt(json.dumps(session.as_dict()).encode()).decode()

    def open(self, cookie: str | None) -> Session | None:
        """The session in `cookie`, None when absent, tampered with, or over."""
        data = self._open(cookie, self._seconds)
        if data is None:
            return None
        try:
            session = Session(str(data["t"]), str(data["c"]), str(data["s"]), float(data["e"]))
        except (KeyError, TypeError, ValueError):
            return None
        return session if session.expires > time.time() else None

    def seal_login(self, login: LoginState) -> str:
        document = {"st": login.state, "n": login.nonce, "v": login.verifier, "x": login.next}
        return self._fernet.encrypt(json.dumps(document).encode()).decode()

    def open_login(self, cookie: str | None) -> LoginState | None:
        data = self._open(cookie, LOGIN_SECONDS)
        if data is None:
            return None
        try:
            return LoginState(str(data["st"]), str(data["n"]), str(data["v"]), str(data["x"]))
        except KeyError:
            return None

    def _open(self, cookie: str | None, ttl: int) -> dict[str, Any] | None:
        if not cookie:
            return None
        try:
            data = json.loads(self._fernet.decrypt(cookie.encode(), ttl=ttl))
        except (InvalidToken, ValueError):
            return None
        return data if isinstance(data, dict) else None


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a form's CSRF token with the session's."""
    return bool(given) and secrets.compare_digest(str(given).encode(), expected.encode())
