"""The query columns of a ledger row, derived from the signed record they index.

The `decisions` table keeps, beside each record's canonical bytes (the Merkle leaf), columns that
queries filter on: `trustplane decisions --principal/--decision/--policy/--shadow-mismatch`,
`--since`, lookups by decision id, `access activity` (policies `grant:…`). The leaf hash and the
signed checkpoints prove the record; nothing proved the columns, so an edited `principal` or
`decision` hid or misfiled a record while `audit verify` said intact.

`query_columns` is the one definition of those columns: the writer (`ledger.decision_entry`,
`ledger.admin_entry`) stores exactly what it returns for the record it signs, and `audit verify`
recomputes it from each stored record and names every column that differs. Any change to what a
column holds (a new column, sanitising a value for a backend) belongs here, or verification and
the writer drift apart. `ts` is a float the record carries as an RFC 3339 string rounded to the
microsecond, so it is checked by formatting (`ts_matches`) rather than derived.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trustplane.store.text import column_text

__all__ = ["COLUMN_LIMIT", "QUERY_COLUMNS", "RecordError", "evidence", "query_columns"]

COLUMN_LIMIT = 400
"""Characters kept of principal, action and resource (their columns are String(400))."""

QUERY_COLUMNS = (
    "decision_id",
    "kind",
    "principal",
    "action",
    "resource",
    "decision",
    "shadow",
    "policies",
    "revision",
)
"""The columns `query_columns` returns, in its order (`ts` and `seq` are checked apart)."""


class RecordError(ValueError):
    """A stored record is not a ledger record this version can read; the message says what."""


def query_columns(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """The query-column values, in `QUERY_COLUMNS` order, for a decision, admin or search record.

    Written flat (no per-member helpers): `audit verify` calls it for every stored record, and
    helper calls tripled its cost. Raises `RecordError` for what is not a ledger record."""
    try:
        kind = record["kind"]
        if kind == "decision":
            request = record["request"]
            named = record["reasons"] + record["shadow_reasons"] + record["would_change"]
            grants = record.get("grants")
            if grants:  # decisions under a grant: `access activity GRANT` finds them
                named = named + [f"grant:{g}" for g in grants]
            exceptions = record.get("exceptions")
            if exceptions:
                named = named + [f"exception:{e}" for e in exceptions]
            columns = (
                record["decision_id"],
                kind,
                _entity(request, "principal"),
                _entity(request, "action"),
                _entity(request, "resource"),
                record["decision"],
                record["shadow"],
                # ' id1 id2 ' (each id once, in order): `--policy X` matches on ' X '.
                column_text(" " + " ".join(dict.fromkeys(named)) + " ") if named else " ",
                None if record["revision"] is None else column_text(record["revision"], 64),
            )
        elif kind == "admin":
            action, effect = record["action"], record["decision"]
            columns = (
                record["decision_id"],
                kind,
                column_text(record["actor"], COLUMN_LIMIT),
                column_text(action, COLUMN_LIMIT),
                column_text(record["target"], COLUMN_LIMIT),
                effect,
                effect,
                # Not de-duplicated, unlike a decision's: what admin records have always held.
                " " + " ".join(f"admin:{action}".split()) + " ",
                None,
            )
        elif kind == "search":
            request, effect = record["request"], record["decision"]
            columns = (
                record["decision_id"],
                kind,
                _entity(request, "principal"),
                _entity(request, "action"),
                _entity(request, "resource"),
                effect,
                effect,
                f" search:{record['search']} ",
                None if record["revision"] is None else column_text(record["revision"], 64),
            )
        else:
            raise RecordError(f"unknown record kind {kind!r}")
    except (KeyError, TypeError, AttributeError) as exc:
        raise RecordError(f"not a ledger record ({type(exc).__name__}: {exc})") from None
    return columns


def evidence(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The `rollout_evidence` rows of a record, as (policy id, cohort): a would-deny (allowed,
    shadow denied) counts for each policy in `would_change`, in the cohort the record gives it
    (`observed` when none: an observe-mode policy); a denial counts for each canary policy
    among its reasons whose cohort was `enforced`. Nothing for admin records or others."""
    if record.get("kind") != "decision":
        return []
    cohorts = record.get("canary") or {}
    if not isinstance(cohorts, dict):
        return []
    effect, shadow = record.get("decision"), record.get("shadow")
    if effect == "allow" and shadow == "deny":
        changed = record.get("would_change") or []
        return [(p, str(cohorts.get(p, "observed"))) for p in dict.fromkeys(changed)]
    if effect == "deny" and cohorts:
        reasons = record.get("reasons") or []
        return [(p, "enforced") for p in dict.fromkeys(reasons) if cohorts.get(p) == "enforced"]
    return []


def _entity(request: Mapping[str, Any], name: str) -> str:
    """`Type::"id"` as the request named it; empty when masking erased the type or id (what
    the ledger does not hold, a query cannot find)."""
    try:
        doc = request[name]
        return column_text(f'{doc["type"]}::"{doc["id"]}"', COLUMN_LIMIT)
    except (KeyError, TypeError):
        return ""
