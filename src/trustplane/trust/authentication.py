"""Authentication signals: how strongly and how recently the caller authenticated.

`authentication_strength` turns an OIDC token's `amr` (RFC 8176), `acr` and `auth_time` into the
request context policies read: `mfa`, `mfa_strength` (`none`, `otp`, `phishing_resistant`) and
`auth_age_seconds`. Phishing-resistant means a hardware-bound key (`hwk`), a software key with
proof of possession (`swk` + `pop`), or an IdP that says so in `acr` (`phr`, `phrh`).

`AuthenticationSignals` weighs the same claims as signals: `mfa_strength`,
`phishing_resistance`, `auth_age`, `token_age` and `token_lifetime` (see docs/trust.md). How a
policy asks for more (`@step_up`) is decision/step_up.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from trustplane.trust.signals import Signal, TrustInputs, constant_signal

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
_EXACT = (int, type(None))  # claims whose ages are the same all through one clock second


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


def ramp(amount: float, low: float, high: float) -> float:
    """0 at or below `low`, 1 at or above `high`, linear between: how a duration becomes a
    signal value."""
    if amount <= low:
        return 0.0
    if amount >= high or high <= low:
        return 1.0
    return (amount - low) / (high - low)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class AuthenticationSignals:
    """Signals from a verified token's `amr`, `acr`, `auth_time`, `iat` and `exp`. Workloads
    (mTLS SPIFFE IDs) and callers without a token have nothing to weigh: their signals are 0
    and say why (docs/trust.md: what that misses)."""

    names: tuple[str, ...] = (
        "mfa_strength",
        "phishing_resistance",
        "auth_age",
        "token_age",
        "token_lifetime",
    )
    params: Mapping[str, Mapping[str, Any]] = {
        "mfa_strength": {"otp": 0.4},  # the value of a non-phishing-resistant second factor
        "auth_age": {"fresh_seconds": 900, "stale_seconds": 43200},
        "token_age": {"fresh_seconds": 300, "stale_seconds": 3600},
        "token_lifetime": {"short_seconds": 3600, "long_seconds": 86400},
    }

    def __init__(self) -> None:
        # The same token asks again and again: its signals are computed once per second of
        # the clock (every age here is in whole seconds) and trust.yaml parameter set.
        self._memo: dict[tuple[Any, ...], tuple[Mapping[str, Any], tuple[Signal, ...]]] = {}

    def signals(self, inputs: TrustInputs, wanted: frozenset[str]) -> Iterable[Signal]:
        claims = inputs.claims
        if claims is None or inputs.workload:
            return tuple(self._signals(inputs, wanted))
        amr = claims.get("amr")
        key = (
            tuple(amr) if isinstance(amr, list) else amr,
            claims.get("acr"),
            claims.get("auth_time"),
            claims.get("iat"),
            claims.get("exp"),
            int(inputs.now),
            inputs.source,
            wanted,
            id(inputs.params),
        )
        try:
            found = self._memo.get(key)
        except TypeError:  # an unhashable claim: nothing to share
            return tuple(self._signals(inputs, wanted))
        if found is not None and found[0] is inputs.params:
            return found[1]
        signals = tuple(self._signals(inputs, wanted))
        if all(type(v) in _EXACT for v in key[2:5]):  # whole-second claims: exact per second
            if len(self._memo) >= 4096:
                self._memo.clear()
            self._memo[key] = (inputs.params, signals)
        return signals

    def _signals(self, inputs: TrustInputs, wanted: frozenset[str]) -> Iterator[Signal]:
        claims = inputs.claims
        if claims is None or inputs.workload:
            # The same answer for every such request: shared objects, so that the assessor's
            # reuse of a weighing (keyed by the signals' identity) finds it, rather than each
            # request adding fresh objects to its memo for the garbage collector to walk.
            why = "a workload: no human authentication" if inputs.workload else "no token"
            for name in self.names:
                if name in wanted:
                    yield constant_signal(name, 0.0, why, inputs.source)
            return
        source = inputs.source
        strength = authentication_strength(claims, inputs.now)
        if "mfa_strength" in wanted:
            value = {"none": 1.0, "otp": float(inputs.param("mfa_strength", "otp", 0.4))}.get(
                strength.mfa_strength, 0.0
            )
            methods = ",".join(strength.amr) or "none"
            yield Signal(
                "mfa_strength",
                value,
                strength.mfa_strength,
                f"authenticated with {strength.mfa_strength} (amr: {methods})",
                source,
            )
        if "phishing_resistance" in wanted:
            resistant = strength.mfa_strength == "phishing_resistant"
            yield Signal(
                "phishing_resistance",
                0.0 if resistant else 1.0,
                resistant,
                "phishing-resistant authenticator"
                if resistant
                else "no phishing-resistant authenticator (hwk, swk+pop or acr phr)",
                source,
            )
        if "auth_age" in wanted:
            fresh = float(inputs.param("auth_age", "fresh_seconds", 900))
            stale = float(inputs.param("auth_age", "stale_seconds", 43200))
            age = strength.auth_age_seconds
            yield Signal(
                "auth_age",
                ramp(age, fresh, stale),
                age,
                f"authenticated {age} s ago (fresh below {fresh:.0f} s, stale from {stale:.0f} s)",
                source,
            )
        issued = _number(claims, "iat")
        if "token_age" in wanted:
            if issued is None:
                yield Signal("token_age", 0.0, None, "the token has no iat", source)
            else:
                age = max(0, int(inputs.now - issued))
                fresh = float(inputs.param("token_age", "fresh_seconds", 300))
                stale = float(inputs.param("token_age", "stale_seconds", 3600))
                yield Signal(
                    "token_age",
                    ramp(age, fresh, stale),
                    age,
                    f"token issued {age} s ago (stale from {stale:.0f} s)",
                    source,
                )
        if "token_lifetime" in wanted:
            expires = _number(claims, "exp")
            if issued is None or expires is None:
                yield Signal("token_lifetime", 0.0, None, "the token has no iat or exp", source)
            else:
                lifetime = max(0, int(expires - issued))
                short = float(inputs.param("token_lifetime", "short_seconds", 3600))
                long = float(inputs.param("token_lifetime", "long_seconds", 86400))
                yield Signal(
                    "token_lifetime",
                    ramp(lifetime, short, long),
                    lifetime,
                    f"token valid for {lifetime} s (long from {long:.0f} s)",
                    source,
                )
