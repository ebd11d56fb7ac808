"""People: how strongly and how recently they authenticated, and how to ask them for more.

`authentication_strength` turns an OIDC token's `amr` (RFC 8176), `acr` and `auth_time` into the
request context policies read: `mfa`, `mfa_strength` (`none`, `otp`, `phishing_resistant`) and
`auth_age_seconds`. Phishing-resistant means a hardware-bound key (`hwk`), a software key with
proof of possession (`swk` + `pop`), or an IdP that says so in `acr` (`phr`, `phrh`).

How a policy asks for more (`@step_up`) is decision/step_up.py.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# RFC 8176 authentication method references that count as a factor.
FACTORS = frozenset(
    {
        "pwd", "pin", "otp", "sms", "tel", "hwk", "swk", "sc", "fpt", "face", "iris",
        "retina", "vbm", "kba", "pop", "user",
    }
)  # fmt: skip
PHISHING_RESISTANT_ACR = frozenset(
    {"phr", "phrh", "http://schemas.openid.net/pape/policies/2007/06/phishing-resistant"}
)
STRENGTHS = ("none", "otp", "phishing_resistant")


@dataclass(frozen=True)
class AuthStrength:
    mfa: bool
    mfa_strength: str
    auth_age_seconds: int
    acr: str | None
    amr: tuple[str, ...]

    def context(self) -> dict[str, Any]:
        return {
            "mfa": self.mfa,
            "mfa_strength": self.mfa_strength,
            "auth_age_seconds": self.auth_age_seconds,
        }


def authentication_strength(claims: Mapping[str, Any], now: float | None = None) -> AuthStrength:
    amr = claims.get("amr")
    methods = {m for m in amr if isinstance(m, str)} if isinstance(amr, list) else set()
    acr = claims.get("acr") if isinstance(claims.get("acr"), str) else None
    phishing_resistant = (
        "hwk" in methods or {"swk", "pop"} <= methods or acr in PHISHING_RESISTANT_ACR
    )
    mfa = "mfa" in methods or len(methods & FACTORS) >= 2 or phishing_resistant
    strength = "phishing_resistant" if phishing_resistant else "otp" if mfa else "none"
    authenticated_at = claims.get("auth_time", claims.get("iat"))
    now = time.time() if now is None else now
    if isinstance(authenticated_at, int | float) and not isinstance(authenticated_at, bool):
        age = max(0, int(now - authenticated_at))
    else:
        age = 0
    return AuthStrength(mfa, strength, age, acr, tuple(sorted(methods)))
