"""Reading the trust plane's work back from the ledger: one decision's score explained signal by
signal (`trustplane trust explain`, `GET /v1/trust/decisions/{id}`), and what fired over a
period, for whom and how often (`trustplane trust signals`, `GET /v1/trust/signals`).

Both read only decision records, so what they show is what the ledger proves; observed signals
are there too, which is how a signal's false-positive rate is read before it is enforced.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from trustplane.errors import TrustplaneError
from trustplane.store.tables import decisions
from trustplane.telemetry.ledger import get_decision, query_decisions
from trustplane.telemetry.query import DecisionQuery

MAX_SCANNED = 200_000  # records a summary reads at most; the answer says when it stopped
_PAGE = 5000


class ReportError(TrustplaneError):
    """A decision reference that names none or several; `status` as the admin API answers."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def find_decision(engine: Engine, reference: str) -> dict[str, Any]:
    """The decision record a full id or a unique prefix names."""
    reference = reference.strip().lower()
    if not reference:
        raise ReportError("a decision id is empty", 422)
    found = get_decision(engine, reference)
    if found is not None:
        return found
    with engine.connect() as connection:
        ids = (
            connection.execute(
                select(decisions.c.decision_id)
                .where(decisions.c.decision_id.startswith(reference, autoescape=True))
                .limit(4)
            )
            .scalars()
            .all()
        )
    if not ids:
        raise ReportError(f"no decision {reference} in the ledger", 404)
    if len(ids) > 1:
        some = ", ".join(ids[:3]) + (", …" if len(ids) > 3 else "")
        raise ReportError(
            f"decision id prefix {reference!r} is ambiguous: it starts {some}; give more "
            "characters",
            409,
        )
    record = get_decision(engine, ids[0])
    if record is None:  # pragma: no cover - deleted between the two reads
        raise ReportError(f"no decision {reference} in the ledger", 404)
    return record


def _entity(doc: Any) -> str:
    if isinstance(doc, dict) and "type" in doc and "id" in doc:
        return f'{doc["type"]}::"{doc["id"]}"'
    return str(doc)


def explain(record: dict[str, Any]) -> dict[str, Any]:
    """The score of one decision record, each signal with its value, weight, contribution
    (points counted), source and whether it is enforced or observed."""
    request = record.get("request") or {}
    trust = record.get("trust")
    doc: dict[str, Any] = {
        "decision_id": record.get("decision_id"),
        "time": record.get("time"),
        "principal": _entity(request.get("principal")),
        "action": _entity(request.get("action")),
        "resource": _entity(request.get("resource")),
        "decision": record.get("decision"),
        "reasons": record.get("reasons", []),
    }
    if record.get("kind") != "decision" or not isinstance(trust, dict):
        doc["trust"] = None
        doc["note"] = (
            "an admin record: no trust assessment"
            if record.get("kind") == "admin"
            else "no trust assessment (refused before any policy, or recorded before the trust "
            "plane existed)"
        )
        return doc
    signals = []
    for row in trust.get("signals", []):
        enforced = row.get("mode") == "enforce"
        signals.append(
            {
                "name": row.get("name"),
                "value": row.get("value"),
                "weight": row.get("weight"),
                "points": row.get("points"),
                "contribution": row.get("points", 0) if enforced else 0,
                "mode": "enforced" if enforced else "observed",
                "source": row.get("source"),
                "observed": row.get("observed"),
                "explanation": row.get("explanation"),
                **({"error": row["error"]} if "error" in row else {}),
            }
        )
    signals.sort(key=lambda s: (-abs(s["contribution"] or 0), -abs(s["points"] or 0)))
    doc["trust"] = {
        "score": trust.get("score"),
        "level": trust.get("level"),
        "summary": trust.get("summary"),
        "signals": signals,
        "quiet": trust.get("quiet", []),
        **({"ignored": trust["ignored"]} if "ignored" in trust else {}),
        **({"error": trust["error"]} if "error" in trust else {}),
    }
    return doc


@dataclass
class _Tally:
    fired: int = 0
    enforced: int = 0
    observed: int = 0
    errors: int = 0
    denied: int = 0
    points: int = 0


def summarise(engine: Engine, since: float, until: float | None = None) -> dict[str, Any]:
    """Every signal that fired (moved the score, or would have in observe mode, or failed)
    in the decisions recorded from `since`: how often, enforced or observed, how many of those
    decisions were denies, and the principals it fired for most."""
    tallies: dict[str, _Tally] = {}
    principals: dict[str, Counter[str]] = {}
    levels: Counter[str] = Counter()
    scanned = scored = 0
    after: int | None = None
    complete = True
    while True:
        page = query_decisions(
            engine,
            DecisionQuery(
                kind="decision",
                since=since,
                until=until,
                after_seq=after,
                ascending=True,
                limit=_PAGE,
            ),
        )
        for record in page:
            scanned += 1
            trust = record.get("trust")
            if not isinstance(trust, dict):
                continue
            scored += 1
            levels[str(trust.get("level"))] += 1
            who = _entity((record.get("request") or {}).get("principal"))
            for row in trust.get("signals", []):
                name = str(row.get("name"))
                tally = tallies.setdefault(name, _Tally())
                tally.fired += 1
                if row.get("mode") == "enforce":
                    tally.enforced += 1
                    tally.points += int(row.get("points") or 0)
                else:
                    tally.observed += 1
                if "error" in row:
                    tally.errors += 1
                if record.get("decision") == "deny":
                    tally.denied += 1
                principals.setdefault(name, Counter())[who] += 1
        if len(page) < _PAGE:
            break
        after = int(page[-1]["seq"])
        if scanned >= MAX_SCANNED:
            complete = False
            break
    rows = [
        {
            "signal": name,
            "fired": t.fired,
            "enforced": t.enforced,
            "observed": t.observed,
            "errors": t.errors,
            "denied": t.denied,
            "mean_points": round(t.points / t.enforced, 1) if t.enforced else 0,
            "principals": len(principals[name]),
            "top": [{"principal": p, "count": n} for p, n in principals[name].most_common(5)],
        }
        for name, t in sorted(tallies.items(), key=lambda kv: -kv[1].fired)
    ]
    return {
        "since": since,
        "until": until,
        "decisions": scanned,
        "scored": scored,
        "levels": dict(levels),
        "signals": rows,
        "complete": complete,
    }
