"""SPIFFE IDs (SPIFFE-ID standard, section 2): `spiffe://<trust domain>/<path>`.

Parsed strictly, because an ID is compared as a string everywhere else: a trust domain of
lowercase letters, digits, `.`, `-`, `_`; path segments of letters, digits, `.`, `-`, `_`, none
empty, `.` or `..`; no port, user info, query or fragment; at most 2048 bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trustplane.errors import TrustplaneError

SCHEME = "spiffe://"
MAX_LENGTH = 2048
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class SpiffeIdError(TrustplaneError, ValueError):
    """Not a valid SPIFFE ID; the message names the rule it breaks."""


def validate_trust_domain(name: str) -> str:
    if not name:
        raise SpiffeIdError("the trust domain is empty")
    if not _TRUST_DOMAIN.fullmatch(name):
        raise SpiffeIdError(
            f"trust domain {name!r} may only contain lowercase letters, digits, '.', '-' and '_'"
        )
    return name


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    path: str  # "" or "/seg/seg"

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        if len(text.encode()) > MAX_LENGTH:
            raise SpiffeIdError(f"a SPIFFE ID is at most {MAX_LENGTH} bytes")
        if not text.startswith(SCHEME):
            raise SpiffeIdError(f"{text!r} does not start with {SCHEME!r}")
        rest = text[len(SCHEME) :]
        domain, slash, path = rest.partition("/")
        for char, what in (("?", "a query"), ("#", "a fragment")):
            if char in rest:
                raise SpiffeIdError(f"{text!r} has {what}; SPIFFE IDs have none")
        if "@" in domain or ":" in domain:
            raise SpiffeIdError(f"{text!r}: no user info or port is allowed in the trust domain")
        validate_trust_domain(domain)
        if not slash:
            return cls(domain, "")
        for segment in path.split("/"):
            if not segment:
                raise SpiffeIdError(f"{text!r}: empty path segment (or a trailing '/')")
            if segment in (".", ".."):
                raise SpiffeIdError(f"{text!r}: path segments '.' and '..' are not allowed")
            if not _SEGMENT.fullmatch(segment):
                raise SpiffeIdError(
                    f"{text!r}: path segment {segment!r} may only contain letters, digits, "
                    "'.', '-' and '_'"
                )
        return cls(domain, "/" + path)

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain
