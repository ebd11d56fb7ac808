"""People: how strongly and how recently they authenticated, and how to ask them for more.

`authentication_strength` turns an OIDC token's `amr` (RFC 8176), `acr` and `auth_time` into the
request context policies read: `mfa`, `mfa_strength` (`none`, `otp`, `phishing_resistant`) and
`auth_age_seconds`. Phishing-resistant means a hardware-bound key (`hwk`), a software key with
proof of possession (`swk` + `pop`), or an IdP that says so in `acr` (`phr`, `phrh`).

A policy that needs more says so with `@step_up("acr_values=phr max_age=300")`; a deny it
determines carries that obligation, and the HTTP enforcement points answer with RFC 9470's
`WWW-Authenticate: Bearer error="insufficient_user_authentication"`, `acr_values` and `max_age`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
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
_ACR_VALUE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # a token that needs no escaping in quotes


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


class StepUpError(ValueError):
    """A `@step_up` annotation that cannot be understood; the message says which part."""


@dataclass(frozen=True)
class StepUp:
    """What a person must do to be let in: authenticate with one of `acr_values`, within
    `max_age` seconds."""

    acr_values: tuple[str, ...]
    max_age: int | None


def parse_step_up(text: str) -> StepUp:
    """`acr_values=phr[,phrh] [max_age=SECONDS]`, as written in `@step_up("...")`."""
    acr: tuple[str, ...] = ()
    max_age: int | None = None
    for part in text.split():
        name, sep, value = part.partition("=")
        if not sep or not value:
            raise StepUpError(f"@step_up: {part!r} is not name=value")
        if name == "acr_values":
            acr = tuple(v for v in value.split(",") if v)
            bad = [v for v in acr if not _ACR_VALUE.fullmatch(v)]
            if bad:
                raise StepUpError(f"@step_up: acr value {bad[0]!r} has characters not allowed")
        elif name == "max_age":
            if not value.isdigit():
                raise StepUpError(f"@step_up: max_age {value!r} is not a number of seconds")
            max_age = int(value)
        else:
            raise StepUpError(f"@step_up: unknown parameter {name!r} (acr_values, max_age)")
    if not acr and max_age is None:
        raise StepUpError("@step_up needs acr_values=... and/or max_age=...")
    return StepUp(acr, max_age)


def step_up_challenge(step_ups: Sequence[StepUp]) -> str:
    """One RFC 9470 challenge for every step-up a deny asks for: the first policy's acr values,
    the shortest max_age."""
    acr = next((s.acr_values for s in step_ups if s.acr_values), ())
    ages = [s.max_age for s in step_ups if s.max_age is not None]
    parts = [
        'Bearer error="insufficient_user_authentication"',
        'error_description="a stronger or more recent authentication is required"',
    ]
    if acr:
        parts.append(f'acr_values="{" ".join(acr)}"')
    if ages:
        parts.append(f"max_age={min(ages)}")
    return ", ".join(parts)
