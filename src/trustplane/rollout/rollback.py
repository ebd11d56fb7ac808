"""Automatic rollback: a bundle activation after which one route's deny rate jumps.

The deny-spike detector (telemetry/deny_spike.py) judges, after each activation, every route
and denying policy against the window before it and hands a `DenyJump` here once per
activation. Whatever the settings, the jump raises the alarm: the counter
`trustplane_deny_jumps{outcome}`, an admin record in the ledger (action `bundle:deny-jump`,
actor `trustplane:rollback-guard`, the figures in its details) and, when a governance webhook is
configured, a `bundle.deny_jump` notification through the outbox. With
`governance.auto_rollback` on, the guard also activates the revision active before the one that
jumped (`BundleManager.rollback`, recorded like an operator's rollback, reason `rollback`), unless
another activation has superseded it meanwhile. The work runs on its own thread: the decision
that tipped the judgement is answered without waiting for a bundle load.

The rolled-back bundle directory still holds the bad edit; the next reload or restart loads it
again. Fix the source (or `trustplane policy promote` back) before reloading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from sqlalchemy.engine import Engine

from trustplane.decision.manager import ActivationError, BundleManager
from trustplane.decision.policy_bundle import BundleError
from trustplane.governance.records import record_outbox
from trustplane.telemetry.deny_spike import DenyJump
from trustplane.telemetry.ledger import LedgerEntry, admin_entry

log = logging.getLogger("trustplane.bundle")

ACTOR = "trustplane:rollback-guard"
ACTION = "bundle:deny-jump"
EVENT = "bundle.deny_jump"


class RollbackGuard:
    """Turns a deny-rate jump into the alarm and, when `auto_rollback`, a rollback."""

    def __init__(
        self,
        bundles: BundleManager,
        counter: Counter,
        record: Callable[[LedgerEntry], None],
        *,
        auto_rollback: bool,
        outbox_engine: Engine | None = None,
    ) -> None:
        """`record` appends an admin entry to the ledger; `outbox_engine` (None: no webhook
        configured) queues the notification."""
        self._bundles = bundles
        self._counter = counter
        self._record = record
        self._auto = auto_rollback
        self._outbox = outbox_engine
        self.handled: list[dict[str, Any]] = []  # what was done, newest last (bundle status)
        self._lock = threading.Lock()

    def on_jump(self, jump: DenyJump) -> None:
        """Called on the decision path: hand the work to a thread."""
        threading.Thread(
            target=self.handle, args=(jump,), name="rollback-guard", daemon=True
        ).start()

    def handle(self, jump: DenyJump) -> dict[str, Any]:
        """Roll back (when on and still current), then record and announce what was done."""
        with self._lock:
            outcome, rolled_to, error = self._roll_back(jump)
            self._counter.labels(outcome).inc()
            details: dict[str, Any] = {**jump.as_dict(), "outcome": outcome}
            if rolled_to is not None:
                details["rolled_back_to"] = rolled_to
            if error is not None:
                details["error"] = error
            text = (
                jump.describe()
                + {
                    "rolled_back": f"; rolled back to revision {str(rolled_to)[:12]}",
                    "alarm_only": "; governance.auto_rollback is off: roll back with "
                    "`trustplane policy rollback`",
                    "rollback_failed": f"; the automatic rollback failed: {error}",
                    "superseded": "; another activation replaced it already",
                }[outcome]
            )
            try:
                self._record(
                    admin_entry(ACTOR, ACTION, f"bundle:{jump.revision}", text, True, details)
                )
            except Exception:  # the alarm's other channels still go out
                log.exception("deny-jump record not written")
            if self._outbox is not None:
                try:
                    with self._outbox.begin() as connection:
                        subject = {"revision": jump.revision, "route": jump.route}
                        record_outbox(connection, EVENT, subject | details, text, time.time())
                except Exception:
                    log.exception("deny-jump notification not queued")
            log.warning("deny-rate jump: %s", text)
            self.handled.append(details)
            del self.handled[:-20]
            return details

    def _roll_back(self, jump: DenyJump) -> tuple[str, str | None, str | None]:
        active = self._bundles.active
        if active is None or active.bundle.revision != jump.revision:
            return "superseded", None, None
        if not self._auto:
            return "alarm_only", None, None
        try:
            loaded = self._bundles.rollback(actor=ACTOR)
        except (ActivationError, BundleError) as exc:
            return "rollback_failed", None, str(exc)
        return "rolled_back", loaded.bundle.revision, None
