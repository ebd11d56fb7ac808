"""What a decision query may ask, parsed once for `trustplane decisions` and the admin API, and
how a ledger record reads as an answer: its reason code and determining policies.

The CLI queries a local store or a server (`--url`) with the same filters; both build a
`DecisionQuery` through `parse_time` and `entity_filter`, so a value one accepts the other
accepts too, and a refused value is named the same way (`QueryError.field`: the query
parameter, or the option with `--` in front). Nothing here touches the store, so the CLI can
parse a remote query without loading SQLAlchemy.

A record's reason code is derived from the signed record rather than stored beside it, so
records written before codes were shown read the same way. Refusals settled before any policy
(no credential, a token error, no route, a revoked principal or credential, no bundle) record
one error that starts with its code (`credential_missing: no credential`); an answer the
policies gave reads `policy_permits`, `policy_forbids` or `no_policy_permits`, and a deny that
an evaluation error caused `evaluation_error`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from trustplane.errors import TrustplaneError

__all__ = [
    "KINDS",
    "DecisionQuery",
    "EntityFilter",
    "QueryError",
    "determining_policies",
    "entity_filter",
    "parse_time",
    "reason_code",
]

KINDS = ("decision", "admin", "search")
"""Record kinds a query may ask for (`kind`)."""

_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NUMBER = re.compile(r"^\s*\d{1,12}(\.\d{1,9})?\s*$")


class QueryError(TrustplaneError, ValueError):
    """A filter value that cannot be used; `field` names the parameter or option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_time(text: str, field: str, now: float | None = None) -> float:
    """A point in time as a UNIX timestamp: RFC 3339 (`2026-12-03T10:00:00Z`, with `Z` or an
    offset; a date alone is midnight UTC), a duration before `now` (`15m`, `2h`, `7d`, `1w`;
    units s, m, h, d, w), or a UNIX timestamp in seconds."""
    now = time.time() if now is None else now
    relative = _DURATION.match(text)
    if relative:
        return now - int(relative[1]) * _UNIT_SECONDS[relative[2]]
    if _NUMBER.match(text):
        return float(text)
    stripped = text.strip()
    try:
        if len(stripped) == 10:  # a date alone
            day = date.fromisoformat(stripped)
            return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise QueryError(
            field,
            f"expected RFC 3339 (2026-12-03T10:00:00Z), a duration before now (15m, 2h, 7d) "
            f"or a UNIX timestamp, got {text!r}",
        ) from None
    if moment.tzinfo is None:
        raise QueryError(field, f"{text!r} has no time zone: add Z (UTC) or an offset (+02:00)")
    return moment.timestamp()


_TYPE = r"(?P<type>[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)"
_QUOTED = re.compile(_TYPE + r'::"(?P<id>.*)"$', re.DOTALL)
_SHORT = re.compile(_TYPE + r":(?P<id>[^:].*)$", re.DOTALL)


@dataclass(frozen=True)
class EntityFilter:
    """What a principal, action or resource filter matches in its column: any of `exact`, or,
    when `any_type` is set, that id under any entity type (`Type::"id"`)."""

    text: str  # as the caller wrote it
    exact: tuple[str, ...]
    any_type: str | None = None


def entity_filter(text: str, field: str) -> EntityFilter:
    """`Type::"id"` matches that entity; anything else matches the id under any type, and the
    value itself (admin records name actors, actions such as `bundle:read` and targets as
    they are). `Type:id` also matches `Type::"id"`."""
    if not text or len(text) > 400:
        raise QueryError(field, "must be 1 to 400 characters")
    if _QUOTED.match(text):
        return EntityFilter(text, (text,))
    exact = [text]
    short = _SHORT.match(text)
    if short:
        exact.append(f'{short["type"]}::"{short["id"]}"')
    return EntityFilter(text, tuple(exact), text)


@dataclass(frozen=True)
class DecisionQuery:
    """Every filter is optional; records match all that are given. `since` is inclusive,
    `until` exclusive (UNIX timestamps)."""

    principal: EntityFilter | str | None = None
    decision: str | None = None
    policy: str | None = None
    shadow_mismatch: bool | None = None
    since: float | None = None
    until: float | None = None
    action: EntityFilter | None = None
    resource: EntityFilter | None = None
    kind: str | None = None
    after_seq: int | None = None
    limit: int = 50
    ascending: bool = False

    def as_params(self) -> dict[str, str]:
        """The query as `GET /v1/decisions` parameters (times as RFC 3339, in UTC)."""
        params: dict[str, str] = {"limit": str(self.limit)}
        for name in ("principal", "action", "resource"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value if isinstance(value, str) else value.text
        for name in ("decision", "policy", "kind"):
            if getattr(self, name):
                params[name] = getattr(self, name)
        if self.shadow_mismatch is not None:
            params["shadow_mismatch"] = "true" if self.shadow_mismatch else "false"
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None:
                stamp = datetime.fromtimestamp(moment, UTC).isoformat(timespec="microseconds")
                params[name] = stamp.replace("+00:00", "Z")
        return params

    def check(self, name: Any = lambda field: field) -> DecisionQuery:
        """Refuse combinations no record can match; `name(field)` spells a field for the
        caller (an option `--until`, a parameter `until`)."""
        if self.decision not in (None, "allow", "deny"):
            raise QueryError(name("decision"), "must be allow or deny")
        if self.kind not in (None, *KINDS):
            raise QueryError(name("kind"), f"must be one of {', '.join(KINDS)}")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise QueryError(name("until"), "must be later than since")
        return self


def reason_code(record: Mapping[str, Any]) -> str:
    """Why a record's answer is what it is, as a code a person or a script can act on."""
    if record.get("kind") == "admin":
        details = record.get("details") or {}
        status = details.get("status") if isinstance(details, dict) else None
        if status == 401:
            return "admin_unauthenticated"
        return "admin_allowed" if record.get("decision") == "allow" else "admin_forbidden"
    if record.get("kind") == "search":
        return "search_results" if record.get("decision") == "allow" else "search_empty"
    allowed = record.get("decision") == "allow"
    errors = record.get("errors") or []
    if not allowed:
        for error in errors:
            code = _refusal_code(error) if isinstance(error, str) else None
            if code is not None:
                return code
    if allowed:
        return "policy_permits"
    if errors:
        return "evaluation_error"
    return "policy_forbids" if record.get("reasons") else "no_policy_permits"


_CODE = re.compile(r"^([a-z][a-z0-9_]*): ")
# What refusals recorded before they led with a code said.
_LEGACY = {"revoked": "principal_revoked", "no active policy bundle": "no_active_bundle"}


def _refusal_code(error: str) -> str | None:
    head = error.partition(":")[0]
    if head in _LEGACY:
        return _LEGACY[head]
    match = _CODE.match(error)
    return match[1] if match else None


def determining_policies(record: Mapping[str, Any]) -> list[str]:
    """The policies that determined the enforced answer (an admin refusal: the admin policies
    that refused it)."""
    if record.get("kind") == "admin":
        details = record.get("details") or {}
        policies = details.get("policies") if isinstance(details, dict) else None
        return [str(p) for p in policies] if isinstance(policies, list) else []
    reasons = record.get("reasons") or []
    return [str(r) for r in reasons]
