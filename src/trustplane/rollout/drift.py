"""Drift: the active revision against the source it was declared from.

Policy is code: what runs should be what the bundle directory (or a git ref) says. They part
when an edit is refused (a bundle whose tests fail is never activated, so the last good one
keeps serving while the directory says otherwise), when someone activates or rolls back a
stored revision by hand, or when the directory is changed where no watcher sees it. `compare`
names each file added, removed or changed (added: in the source, not active).

`DriftWatch` is the server's periodic check (`policy.drift_check_seconds`): it sets the gauge
`trustplane_policy_drift`, and on the first detection opens an incident in `policy_drift` and
writes a ledger record (`bundle:drift`, and `bundle:drift-cleared` when they match again). An
open incident is not opened again, by this process or another worker: one incident per stretch
of drift, which is what `trustplane policy drift --history` counts per month (M10).
"""

from __future__ import annotations

import json
import logging
import subprocess
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from trustplane.decision.loader import LoadedBundle
from trustplane.decision.policy_bundle import BundleError, BundleSource
from trustplane.store.tables import policy_drift
from trustplane.telemetry.ledger import LedgerEntry, admin_entry, rfc3339

log = logging.getLogger("trustplane.drift")

ACTOR = "trustplane:drift-check"


class DriftError(Exception):
    """The declared source cannot be read (no such directory, an unknown git ref)."""


@dataclass(frozen=True)
class Drift:
    """The active revision against its source; `error` when the source could not be read."""

    revision: str | None
    source: str
    source_revision: str | None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def in_sync(self) -> bool:
        return self.error is None and not (self.added or self.removed or self.changed)

    def files(self) -> dict[str, list[str]]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}

    def as_dict(self) -> dict[str, Any]:
        return {
            "in_sync": self.in_sync,
            "revision": self.revision,
            "source": self.source,
            "source_revision": self.source_revision,
            **self.files(),
            "error": self.error,
        }


def compare(
    active: Mapping[str, bytes], source: Mapping[str, bytes]
) -> tuple[list[str], list[str], list[str]]:
    """Files added (in `source` only), removed (in `active` only) and changed."""
    added = sorted(set(source) - set(active))
    removed = sorted(set(active) - set(source))
    changed = sorted(p for p in set(active) & set(source) if active[p] != source[p])
    return added, removed, changed


def drift_of(
    revision: str | None, active: Mapping[str, bytes], where: str, read: Callable[[], BundleSource]
) -> Drift:
    """`active` (the files of `revision`) against what `read` gives."""
    try:
        source = read()
    except (BundleError, DriftError, OSError) as exc:
        return Drift(revision, where, None, error=f"source unreadable: {exc}")
    added, removed, changed = compare(active, source.files)
    return Drift(revision, where, source.revision, added, removed, changed)


def read_dir(directory: Path) -> BundleSource:
    if not directory.is_dir():
        raise DriftError(f"{directory} is not a directory")
    return BundleSource.from_dir(directory)


def read_git(ref: str, directory: Path) -> BundleSource:
    """The bundle at `directory` (inside a git working tree) as `ref` has it, read with
    `git archive` into a temporary directory: the working tree is not touched."""

    def git(*args: str) -> bytes:
        done = subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip().splitlines()
            raise DriftError(f"git {args[0]}: {detail[-1] if detail else 'failed'}")
        return done.stdout

    if not directory.is_dir():
        raise DriftError(f"{directory} is not a directory")
    top = Path(git("rev-parse", "--show-toplevel").decode().strip())
    prefix = git("rev-parse", "--show-prefix").decode().strip().rstrip("/")
    git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    archive = ["archive", "--format=tar", ref]
    if prefix:
        archive += ["--", prefix]
    data = subprocess.run(
        ["git", "-C", str(top), *archive], capture_output=True, timeout=120, check=False
    )
    if data.returncode != 0:
        raise DriftError(f"git archive {ref}: {data.stderr.decode(errors='replace').strip()}")
    with tempfile.TemporaryDirectory(prefix="trustplane-drift-") as tmp:
        with tempfile.TemporaryFile() as tar:
            tar.write(data.stdout)
            tar.seek(0)
            with tarfile.open(fileobj=tar) as archive_file:
                archive_file.extractall(tmp, filter="data")
        bundle = Path(tmp) / prefix if prefix else Path(tmp)
        if not bundle.is_dir():
            raise DriftError(f"{ref} has no {prefix or 'files'}")
        return BundleSource.from_dir(bundle)


# -- incidents --------------------------------------------------------------------------------


class DriftLog:
    """Drift incidents in the store: opened on the first detection, cleared when in sync."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def open_incident(self) -> dict[str, Any] | None:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(policy_drift)
                .where(policy_drift.c.is_open.is_(True))
                .order_by(policy_drift.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else _incident(row._mapping)

    def note(self, drift: Drift, now: float | None = None) -> str | None:
        """Open an incident for a drift when none is open (`detected`), close the open one
        when in sync (`cleared`); None when nothing changed."""
        now = time.time() if now is None else now
        c = policy_drift.c
        if drift.in_sync:
            if self.open_incident() is None:  # the common case: read, never write
                return None
            with self._engine.begin() as connection:
                cleared = connection.execute(
                    update(policy_drift)
                    .where(c.is_open.is_(True))
                    .values(cleared_at=now, is_open=None)
                ).rowcount
            return "cleared" if cleared else None
        with self._engine.connect() as connection:
            if connection.execute(select(c.id).where(c.is_open.is_(True))).first() is not None:
                return None
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    insert(policy_drift).values(
                        detected_at=now,
                        revision=drift.revision or "",
                        source=drift.source,
                        source_revision=drift.source_revision,
                        files=json.dumps({**drift.files(), "error": drift.error}),
                        is_open=True,
                    )
                )
        except IntegrityError:
            return None  # another worker or replica opened it first
        return "detected"

    def history(self, since: float | None = None) -> dict[str, Any]:
        """Incidents (newest first) and how many began in each month (UTC)."""
        statement = select(policy_drift).order_by(policy_drift.c.id.desc())
        if since is not None:
            statement = statement.where(policy_drift.c.detected_at >= since)
        with self._engine.connect() as connection:
            rows = [_incident(row._mapping) for row in connection.execute(statement)]
        months = Counter(
            datetime.fromtimestamp(row["detected_at"], UTC).strftime("%Y-%m") for row in rows
        )
        return {
            "months": [{"month": m, "incidents": n} for m, n in sorted(months.items())],
            "incidents": rows,
        }


def _incident(row: Any) -> dict[str, Any]:
    files = json.loads(row["files"] or "{}")
    return {
        "id": row["id"],
        "detected_at": row["detected_at"],
        "cleared_at": row["cleared_at"],
        "revision": row["revision"],
        "source": row["source"],
        "source_revision": row["source_revision"],
        **files,
    }


# -- the server's periodic check --------------------------------------------------------------


class Served(Protocol):
    """What serves the bundle (decision/manager.BundleManager): the active one and the
    directory it follows."""

    active: LoadedBundle | None
    bundle_dir: Path | None


class DriftWatch:
    """Checks the served bundle against its directory every `interval` seconds in a thread."""

    def __init__(
        self,
        engine: Engine,
        served: Served,
        gauge: Callable[[float], None],
        record: Callable[[LedgerEntry], Any],
        interval: float,
    ) -> None:
        self._log = DriftLog(engine)
        self._served = served
        self._gauge = gauge
        self._record = record
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: Drift | None = None

    def check(self) -> Drift | None:
        active, directory = self._served.active, self._served.bundle_dir
        if active is None or directory is None:
            return None
        bundle = active.bundle
        drift = drift_of(
            bundle.revision, bundle.source.files, str(directory), lambda: read_dir(directory)
        )
        self.last = drift
        self._gauge(0.0 if drift.in_sync else 1.0)
        change = self._log.note(drift)
        if change == "detected":
            log.warning(
                "policy drift: active revision %s differs from %s (%s)",
                bundle.revision[:12],
                directory,
                drift.error or _summary(drift),
            )
            self._record(
                admin_entry(
                    ACTOR,
                    "bundle:drift",
                    f"bundle:{bundle.revision}",
                    "the active revision differs from its declared source",
                    True,
                    drift.as_dict(),
                )
            )
        elif change == "cleared":
            log.info("policy drift cleared: %s matches %s", bundle.revision[:12], directory)
            self._record(
                admin_entry(
                    ACTOR,
                    "bundle:drift-cleared",
                    f"bundle:{bundle.revision}",
                    "the active revision matches its declared source again",
                    True,
                    drift.as_dict(),
                )
            )
        return drift

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drift-check", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # a store outage: try again next interval, never crash serving
                log.exception("drift check failed")
            if self._stop.wait(self._interval):
                return


def _summary(drift: Drift) -> str:
    parts = [f"{len(v)} {k}" for k, v in drift.files().items() if v]
    return ", ".join(parts)


def when(ts: float | None) -> str | None:
    return None if ts is None else rfc3339(ts)
