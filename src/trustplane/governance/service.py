"""The governance plane as one object: access requests, break-glass, exceptions, the in-memory
state the decision path reads, and one background thread that tidies (expires pending
requests, announces grants that ran out, counts overdue reviews) and delivers notifications.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from trustplane.governance.access import AccessService
from trustplane.governance.breakglass import BreakGlassService
from trustplane.governance.catalog import AccessCatalog, access_catalog
from trustplane.governance.exceptions import ExceptionService
from trustplane.governance.outbox import Outbox, WebhookFormat
from trustplane.governance.records import Actor, Clock, GovernanceError
from trustplane.governance.state import GovernanceState
from trustplane.telemetry.metrics import Metrics

log = logging.getLogger("trustplane.governance")


class Governance:
    def __init__(
        self,
        engine: Engine,
        bundle: Callable[[], Any],
        metrics: Metrics,
        *,
        webhook_url: str | None = None,
        webhook_format: WebhookFormat = WebhookFormat.GENERIC,
        interval: float = 1.0,
        clock: Clock = time.time,
        post: Callable[[str, dict[str, Any]], int] | None = None,
    ) -> None:
        """`bundle()`: the active compiled bundle or None (its access.yaml and policies)."""
        self._metrics = metrics
        self._interval = interval

        def catalog() -> tuple[AccessCatalog, str] | None:
            active = bundle()
            if active is None:
                return None
            return access_catalog(active), str(active.revision)

        self.access = AccessService(engine, catalog, clock)
        self.break_glass = BreakGlassService(engine, catalog, clock)
        self.exceptions = ExceptionService(engine, bundle, clock)
        self.state = GovernanceState(engine, clock, self._held)
        self.outbox = Outbox(engine, webhook_url, webhook_format, post=post, clock=clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _held(self, grants: int, exceptions: int, break_glass: int) -> None:
        self._metrics.grants_active.labels("grant").set(grants)
        self._metrics.grants_active.labels("exception").set(exceptions)
        self._metrics.break_glass_open.set(break_glass)

    def opened_break_glass(self, profile: str) -> None:
        self._metrics.break_glass_opened.labels(profile).inc()

    def start(self) -> None:
        self.state.refresh()
        self._thread = threading.Thread(target=self._run, name="governance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.outbox.close()

    def revoke(
        self, what: str, target: str, reason: str, actor: Actor
    ) -> tuple[float, bool, dict[str, Any]]:
        """Revoke a grant, an exception or a break-glass session (`what`: grant, exception or
        session) for the revocation service (`recovery/service.py`): when it was revoked,
        whether by this call, and the record's document. This process applies it at once."""
        now = time.time()
        if what == "exception":
            item, created = self.exceptions.revoke(actor, target, reason)
            revoked_at, document = item.revoked_at, item.as_dict(now)
        else:
            if what == "session":  # refuse before revoking a grant that is not a session
                found = self.access.grant(target)
                if found.kind != "break-glass":
                    raise GovernanceError(f"{target} is not a break-glass session", "target")
            grant, created = self.access.revoke(actor, target, reason)
            revoked_at, document = grant.revoked_at, grant.as_dict(now)
        self.state.refresh()
        return revoked_at or now, created, document

    def tick(self) -> None:
        """One round of housekeeping and delivery (the thread's body; tests call it)."""
        self.access.expire_due()
        self._metrics.break_glass_reviews_overdue.set(self.break_glass.overdue_count())
        self.outbox.deliver_due()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:
                log.exception("governance housekeeping failed; will retry")
