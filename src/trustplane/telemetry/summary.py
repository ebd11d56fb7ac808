"""Counts over the ledger's query columns for the pages: allowed and denied decisions per time
bucket, and the newest denials after a sequence number (the on-call stream).

Every figure is a count of ledger rows, so each one corresponds to records `audit verify`
covers; nothing is counted that the ledger does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine, Integer, cast, func, select

from trustplane.store.tables import decisions


@dataclass(frozen=True)
class Bucket:
    start: float
    allowed: int
    denied: int

    @property
    def total(self) -> int:
        return self.allowed + self.denied


def decision_buckets(
    engine: Engine, since: float, until: float, seconds: int, kind: str = "decision"
) -> list[Bucket]:
    """Allowed and denied records of `kind` in [since, until), per `seconds`-wide bucket
    (every bucket present, empty ones as zeros)."""
    c = decisions.c
    offset = (c.ts - since) / seconds  # >= 0 in the window
    # PostgreSQL's cast to integer rounds, SQLite's truncates (and floor() is optional there).
    bucket = func.floor(offset) if engine.dialect.name == "postgresql" else cast(offset, Integer)
    statement = (
        select(bucket.label("b"), c.decision, func.count())
        .where(c.kind == kind, c.ts >= since, c.ts < until)
        .group_by(bucket, c.decision)
    )
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    count = max(1, int((until - since + seconds - 1) // seconds))
    allowed = [0] * count
    denied = [0] * count
    for index, effect, number in rows:
        slot = min(int(index), count - 1)
        if effect == "allow":
            allowed[slot] += int(number)
        else:
            denied[slot] += int(number)
    return [Bucket(since + i * seconds, allowed[i], denied[i]) for i in range(count)]


def recent_denials(
    engine: Engine, after_seq: int | None, limit: int = 100
) -> tuple[list[dict[str, Any]], int]:
    """Denied decisions and refused admin calls with seq > `after_seq` (the newest `limit` when
    None), oldest first, as (seq, record) dicts; and the highest seq seen, to ask from next."""
    c = decisions.c
    statement = select(c.seq, c.record).where(c.decision == "deny")
    if after_seq is None:
        statement = statement.order_by(c.seq.desc()).limit(limit)
    else:
        statement = statement.where(c.seq > after_seq).order_by(c.seq).limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
        if after_seq is None:
            rows = list(reversed(rows))
            top = connection.execute(select(func.max(c.seq))).scalar()
        else:
            top = rows[-1][0] if rows else after_seq
    items = [{"seq": int(seq), **orjson.loads(record)} for seq, record in rows]
    return items, int(top) if top is not None else -1


def service_of(record: dict[str, Any]) -> str:
    """The service a record concerns, for grouping: the resource when it is a `Service`
    entity (`Service::"checkout"` → checkout), else the resource's entity type (`Api`,
    `k8s::Pod`); every admin call is `admin`."""
    if record.get("kind") == "admin":
        return "admin"
    resource = (record.get("request") or {}).get("resource") or {}
    if not isinstance(resource, dict) or not resource.get("type"):
        return "unknown"
    if resource["type"] == "Service" and resource.get("id"):
        return str(resource["id"])
    return str(resource["type"])
