"""Saved compromise simulations: the estate-wide figures of `trustplane simulate --all --save`,
which the scorecard reads for lateral-movement resistance and the paths left open."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select

from trustplane.store.tables import simulation_runs

__all__ = ["SimulationRun", "latest_run", "save_run"]


@dataclass(frozen=True)
class SimulationRun:
    run_at: float
    revision: str | None
    paths: int  # (start, tier-0 target) pairs reachable with service authorization off
    blocked: int  # ... of them the active policy blocks
    open_paths: list[dict[str, str]]  # the rest: scenario, start, target

    @property
    def resistance(self) -> float | None:
        return self.blocked / self.paths if self.paths else None


def save_run(
    engine: Engine, result: dict[str, Any], revision: str | None, now: float | None = None
) -> SimulationRun:
    """Store the figures of `outcomes.simulate.run`'s result (all scenarios of one run)."""
    figures = result["lateral_movement"]
    open_paths = [  # the tier-0 targets the policy still lets each start reach
        {"scenario": s["scenario"], "start": s["start"], "target": target}
        for s in result["scenarios"]
        for target in s["tier0_paths"]
    ]
    run = SimulationRun(
        time.time() if now is None else now,
        revision,
        int(figures["paths_without_authz"]),
        int(figures["blocked_by_authz"]),
        open_paths,
    )
    with engine.begin() as conn:
        conn.execute(
            insert(simulation_runs).values(
                run_at=run.run_at,
                revision=revision,
                paths=run.paths,
                blocked=run.blocked,
                summary=json.dumps({"open_paths": open_paths}, sort_keys=True),
            )
        )
    return run


def latest_run(engine: Engine, start: float, end: float) -> SimulationRun | None:
    """The newest run saved in [start, end), None when there was none."""
    with engine.connect() as conn:
        row = conn.execute(
            select(simulation_runs)
            .where(simulation_runs.c.run_at >= start, simulation_runs.c.run_at < end)
            .order_by(simulation_runs.c.run_at.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    summary = json.loads(row.summary)
    return SimulationRun(
        float(row.run_at),
        row.revision,
        int(row.paths),
        int(row.blocked),
        list(summary.get("open_paths", [])),
    )
