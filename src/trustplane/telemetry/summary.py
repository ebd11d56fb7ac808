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


LATENCY_EDGES = (100, 250, 500, 1000, 2500, 5000)  # µs; a last bucket holds the slower ones


@dataclass(frozen=True)
class LatencyGrid:
    """Decisions per (time bucket, evaluation-latency bucket): the on-call heatmap. `counts`
    is one row per time bucket, one column per latency bucket (`edges` upper bounds, then
    slower); `unmeasured` counts records without `eval_micros`."""

    starts: list[float]
    edges: tuple[int, ...]
    counts: list[list[int]]
    unmeasured: int

    @property
    def total(self) -> int:
        return sum(sum(row) for row in self.counts)


def latency_grid(
    engine: Engine,
    since: float,
    until: float,
    seconds: int,
    edges: tuple[int, ...] = LATENCY_EDGES,
) -> LatencyGrid:
    """Decision records in [since, until) counted by time bucket and by the evaluation time
    each recorded (`eval_micros`, the figure M2 of the scorecard reads): one query."""
    c = decisions.c
    statement = select(c.ts, c.record).where(c.kind == "decision", c.ts >= since, c.ts < until)
    count = max(1, int((until - since + seconds - 1) // seconds))
    counts = [[0] * (len(edges) + 1) for _ in range(count)]
    unmeasured = 0
    with engine.connect() as connection:
        for ts, record in connection.execute(statement.execution_options(yield_per=5000)):
            micros = orjson.loads(record).get("eval_micros")
            if not isinstance(micros, int):
                unmeasured += 1
                continue
            slot = min(int((ts - since) // seconds), count - 1)
            column = next((i for i, edge in enumerate(edges) if micros <= edge), len(edges))
            counts[slot][column] += 1
    return LatencyGrid([since + i * seconds for i in range(count)], edges, counts, unmeasured)


def admin_actions(engine: Engine, action: str, since: float) -> list[dict[str, Any]]:
    """The admin records of `action` since `since`, newest first (e.g. `bundle:deny-jump`,
    the rollback guard's record of a deny jump after an activation)."""
    c = decisions.c
    statement = (
        select(c.record)
        .where(c.kind == "admin", c.action == action, c.ts >= since)
        .order_by(c.seq.desc())
    )
    with engine.connect() as connection:
        return [orjson.loads(row[0]) for row in connection.execute(statement)]
