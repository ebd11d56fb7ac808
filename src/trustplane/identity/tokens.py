"""Bearer JWT verification against configured issuers and their JWKS.

PyJWT does the cryptography and the claim checks; this module decides which key and which
algorithms may be used, keeps each issuer's keys cached, and turns every failure into a reason
code a PEP can put in its answer (`token_expired`, `token_wrong_audience`, ...).

Rules, from RFC 8725 (JWT best current practices):
- the algorithm comes from the issuer's allow-list, never from the token alone; `none` and HMAC
  are never accepted (the verifier only holds public keys, and an HMAC "signed" with a public
  key is a classic forgery);
- the key is chosen by `kid` from the token's own issuer's JWKS, and its type must fit the
  algorithm;
- an unknown `kid` triggers one JWKS refresh (the issuer may have rotated), at most once per
  `min_refresh_seconds`, so a stream of junk tokens cannot turn into a stream of fetches.

When the issuer cannot be reached (an identity-provider outage), the keys already fetched keep
verifying for a bounded time: until `jwks_max_stale_seconds` after the last successful fetch.
After that every token of that issuer is refused (`token_issuer_unreachable`): an attacker who
cuts the issuer off must not freeze a key set the issuer has meanwhile revoked. An unknown
`kid` while the issuer is down is refused with the same code, not `token_unknown_key`: the
key may well exist, trustplane cannot know, and the operator needs to see the outage.

Clocks: `exp`, `nbf` and `iat` are checked with the issuer's `leeway_seconds`; a refusal names
the claim and by how much it missed (`token_expired: exp was 90 s ago, beyond the leeway of
60 s`). Each JWKS response's `Date` header tells how far the issuer's clock is from ours; that
skew goes to `on_clock_skew` (the `trustplane_issuer_clock_skew_seconds{issuer}` gauge) and is
logged when it exceeds the leeway, since the issuer's fresh tokens will then be refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWKSet

# Asymmetric algorithms only. HS* is absent on purpose (see the module docstring).
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}

log = logging.getLogger("trustplane.identity.tokens")

ClockSkewObserver = Callable[[str, float], None]
"""Called with (issuer, seconds its clock is ahead of ours; negative when behind)."""


class TokenRejected(Exception):
    """A token that does not prove who the caller is; `code` says why, for the caller."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Issuer:
    """One trusted token issuer."""

    issuer: str
    jwks_uri: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    leeway_seconds: int = 60
    required_claims: tuple[str, ...] = ("exp", "iss", "aud", "sub")
    jwks_cache_seconds: float = 300
    jwks_max_stale_seconds: float = 3600

    def __post_init__(self) -> None:
        unsupported = sorted(set(self.algorithms) - SUPPORTED_ALGORITHMS)
        if unsupported:
            raise ValueError(
                f"issuer {self.issuer}: algorithms {unsupported} are not allowed "
                f"(allowed: {sorted(SUPPORTED_ALGORITHMS)})"
            )
        if not self.audiences:
            raise ValueError(f"issuer {self.issuer}: at least one audience is required")
        if self.leeway_seconds < 0 or self.leeway_seconds > 600:
            raise ValueError(f"issuer {self.issuer}: leeway_seconds must be within 0..600")
        if self.jwks_cache_seconds <= 0 or self.jwks_max_stale_seconds < 0:
            raise ValueError(
                f"issuer {self.issuer}: jwks_cache_seconds must be positive and "
                "jwks_max_stale_seconds not negative"
            )


@dataclass(frozen=True)
class VerifiedToken:
    issuer: str
    subject: str
    algorithm: str
    key_id: str | None
    claims: Mapping[str, Any] = field(repr=False)


class JwksCache:
    """The keys of one issuer, fetched from its JWKS URI and kept for `max_age_seconds`; while
    the issuer cannot be reached, used until `max_stale_seconds` after the last good fetch."""

    def __init__(
        self,
        uri: str,
        client: httpx.Client,
        *,
        max_age_seconds: float = 300,
        min_refresh_seconds: float = 30,
        max_stale_seconds: float = 3600,
        clock: Callable[[], float] = time.monotonic,
        on_date: Callable[[float], None] | None = None,
    ) -> None:
        """`on_date(skew)`: called after each JWKS response that carries a `Date` header, with
        how many seconds the server's clock is ahead of ours."""
        self.uri = uri
        self._on_date = on_date
        self._client = client
        self._max_age = max_age_seconds
        self._min_refresh = min_refresh_seconds
        # never shorter than the cache itself: keys are not dropped before a refresh is due
        self._max_stale = max(max_stale_seconds, max_age_seconds)
        self._clock = clock
        self._keys: dict[str | None, PyJWK] = {}
        self._fetched_at: float | None = None  # the last attempt (rate limit)
        self._loaded_at: float | None = None  # the last attempt that succeeded
        self._failure: str | None = None  # why the last attempt failed, None when it did not
        self._lock = threading.Lock()
        self.fetches = 0

    def would_fetch(self, kid: str | None) -> bool:
        """Whether `key(kid)` would go to the network now."""
        with self._lock:
            return self._due(self._clock(), kid)

    def _due(self, now: float, kid: str | None) -> bool:
        stale = self._fetched_at is None or now - self._fetched_at >= self._max_age
        unknown = kid not in self._keys
        may_refresh = self._fetched_at is None or now - self._fetched_at >= self._min_refresh
        return stale or (unknown and may_refresh)

    def key(self, kid: str | None) -> PyJWK:
        with self._lock:
            now = self._clock()
            if self._due(now, kid):
                self._refresh(now)
            failure, loaded_at = self._failure, self._loaded_at
            found = self._keys.get(kid)
        if loaded_at is None:
            raise TokenRejected("token_jwks_unavailable", f"cannot load {self.uri}: {failure}")
        if now - loaded_at >= self._max_stale:
            raise TokenRejected(
                "token_issuer_unreachable",
                f"the keys of {self.uri} were last loaded {int(now - loaded_at)} s ago, "
                f"longer than jwks_max_stale_seconds ({int(self._max_stale)}); "
                f"the issuer cannot be reached: {failure}",
            )
        if found is None and failure is not None:
            raise TokenRejected(
                "token_issuer_unreachable",
                f"key {kid!r} is not among the cached keys and {self.uri} cannot be reached "
                f"to look for it: {failure}",
            )
        if found is None:
            raise TokenRejected("token_unknown_key", f"no key {kid!r} in the JWKS of {self.uri}")
        return found

    def status(self) -> tuple[bool, float | None] | None:
        """(whether the last fetch succeeded, seconds since the last one that did), or None
        before the first fetch (keys are fetched when the first token needs them)."""
        with self._lock:
            if self._fetched_at is None:
                return None
            age = None if self._loaded_at is None else self._clock() - self._loaded_at
            return self._failure is None, age

    def _refresh(self, now: float) -> None:
        self.fetches += 1
        self._fetched_at = now  # failures count against the refresh rate limit too
        try:
            response = self._client.get(self.uri)
            response.raise_for_status()
            keys = PyJWKSet.from_dict(response.json()).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            # keep serving the keys we have (they are public) until they grow too stale
            self._failure = str(exc) or type(exc).__name__
            return
        self._keys = {k.key_id: k for k in keys}
        self._loaded_at = now
        self._failure = None
        self._observe_date(response)

    def _observe_date(self, response: httpx.Response) -> None:
        date = response.headers.get("date")
        if self._on_date is None or not date:
            return
        try:
            theirs = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return  # a Date header we cannot read tells nothing about the issuer's clock
        self._on_date(theirs - time.time())


class TokenVerifier:
    """Verifies bearer JWTs from any of `issuers`; thread-safe."""

    def __init__(
        self,
        issuers: Sequence[Issuer],
        client: httpx.Client | None = None,
        *,
        min_refresh_seconds: float = 30,
        clock: Callable[[], float] = time.monotonic,
        on_clock_skew: ClockSkewObserver | None = None,
    ) -> None:
        self._client = client or httpx.Client(timeout=5.0, follow_redirects=False)
        self._issuers = {i.issuer: i for i in issuers}
        self._on_clock_skew = on_clock_skew
        self._jwks = {
            i.issuer: JwksCache(
                i.jwks_uri,
                self._client,
                max_age_seconds=i.jwks_cache_seconds,
                min_refresh_seconds=min(min_refresh_seconds, i.jwks_cache_seconds),
                max_stale_seconds=i.jwks_max_stale_seconds,
                clock=clock,
                on_date=self._skew_observer(i),
            )
            for i in issuers
        }

    def jwks_status(self) -> dict[str, tuple[bool, float | None]]:
        """Each issuer's JWKS health (`JwksCache.status`), for those fetched at least once."""
        found = {}
        for issuer, cache in self._jwks.items():
            status = cache.status()
            if status is not None:
                found[issuer] = status
        return found

    def _skew_observer(self, issuer: Issuer) -> Callable[[float], None]:
        def observe(skew: float) -> None:
            if abs(skew) > issuer.leeway_seconds:
                log.warning(
                    "issuer %s: its clock is %d s %s ours, beyond its leeway of %d s: tokens "
                    "it issues are refused until the clocks agree (or leeway_seconds is raised)",
                    issuer.issuer,
                    abs(round(skew)),
                    "ahead of" if skew > 0 else "behind",
                    issuer.leeway_seconds,
                )
            if self._on_clock_skew is not None:
                self._on_clock_skew(issuer.issuer, skew)

        return observe

    def jwks(self, issuer: str) -> JwksCache:
        return self._jwks[issuer]

    def would_fetch(self, token: str) -> bool:
        """Whether verifying `token` now would fetch its issuer's JWKS (so an async caller
        knows to move the call off its event loop); False for tokens refused without I/O."""
        try:
            header = jwt.get_unverified_header(token)
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return False
        cache = self._jwks.get(issuer) if isinstance(issuer, str) else None
        kid = header.get("kid")
        return cache is not None and cache.would_fetch(kid if isinstance(kid, str) else None)

    def verify(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise TokenRejected("token_malformed", str(exc)) from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in SUPPORTED_ALGORITHMS:
            raise TokenRejected(
                "token_alg_not_allowed", f"algorithm {algorithm!r} is never accepted"
            )
        issuer = self._issuers.get(unverified.get("iss"))  # type: ignore[arg-type]
        if issuer is None:
            raise TokenRejected(
                "token_unknown_issuer", f"issuer {unverified.get('iss')!r} is not trusted"
            )
        if algorithm not in issuer.algorithms:
            raise TokenRejected(
                "token_alg_not_allowed",
                f"issuer {issuer.issuer} signs with {list(issuer.algorithms)}, not {algorithm}",
            )
        kid = header.get("kid")
        key = self._jwks[issuer.issuer].key(kid if isinstance(kid, str) else None)
        expected_type = _KEY_TYPES[algorithm[:2]]
        if key.key_type != expected_type:
            raise TokenRejected(
                "token_key_mismatch",
                f"key {kid!r} is {key.key_type}, {algorithm} needs {expected_type}",
            )
        claims = self._decode(token, key, algorithm, issuer, unverified)
        return VerifiedToken(
            issuer=issuer.issuer,
            subject=str(claims.get("sub", "")),
            algorithm=algorithm,
            key_id=kid if isinstance(kid, str) else None,
            claims=claims,
        )

    @staticmethod
    def _decode(
        token: str, key: PyJWK, algorithm: str, issuer: Issuer, unverified: Mapping[str, Any]
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                leeway=issuer.leeway_seconds,
                options={"require": list(issuer.required_claims)},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected(
                "token_expired", _time_claim(unverified, "exp", issuer.leeway_seconds)
            ) from None
        except jwt.ImmatureSignatureError as exc:
            claim = "iat" if "(iat)" in str(exc) else "nbf"
            raise TokenRejected(
                "token_not_yet_valid", _time_claim(unverified, claim, issuer.leeway_seconds)
            ) from None
        except jwt.InvalidIssuedAtError:
            raise TokenRejected("token_invalid", "iat is not a number") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(
                "token_wrong_audience", f"audience is not one of {list(issuer.audiences)}"
            ) from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("token_wrong_issuer", "issuer does not match") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected("token_missing_claim", str(exc)) from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("token_bad_signature", "the signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected("token_invalid", str(exc)) from None
        return claims


def _time_claim(claims: Mapping[str, Any], claim: str, leeway: int) -> str:
    """Which time claim missed, and by how much, for the refusal a person reads."""
    value = claims.get(claim)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return f"{claim} is not valid"
    delta = round(value - time.time())
    when = (
        f"{claim} is {delta} s ahead of this server's clock"
        if delta > 0
        else (f"{claim} was {-delta} s ago")
    )
    return f"{when}, beyond the leeway of {leeway} s"


def verifier_from_settings(
    issuers: Sequence[Any], on_clock_skew: ClockSkewObserver | None = None
) -> TokenVerifier | None:
    """A verifier for the configured `issuers` (config.IssuerSettings); None when there are
    none. `on_clock_skew`: where each issuer's observed clock skew goes (a metric)."""
    if not issuers:
        return None
    return TokenVerifier(
        [
            Issuer(
                issuer=i.issuer,
                jwks_uri=i.jwks_uri,
                audiences=tuple(i.audiences),
                algorithms=tuple(i.algorithms),
                leeway_seconds=i.leeway_seconds,
                jwks_cache_seconds=i.jwks_cache_seconds,
                jwks_max_stale_seconds=i.jwks_max_stale_seconds,
            )
            for i in issuers
        ],
        on_clock_skew=on_clock_skew,
    )
