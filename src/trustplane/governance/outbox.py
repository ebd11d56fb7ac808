"""Delivering notifications from the outbox: a generic JSON webhook or a Slack-compatible one.

Every governance change writes its notification into the `outbox` table in the same
transaction as the change, so a crash between the two loses neither. A background thread
(never the decision path) posts due rows, marks them delivered on a 2xx answer, and otherwise
retries with exponential backoff (1 s, 2 s, 4 s ... capped at five minutes). Several replicas
may run the deliverer: each claims a row by moving its next attempt forward in a conditional
update, so a row is posted by one of them at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, select, update

from trustplane.governance.records import Clock
from trustplane.retry import Backoff
from trustplane.store.tables import outbox

log = logging.getLogger("trustplane.outbox")

CLAIM_SECONDS = 30.0  # a claimed row is left alone this long by other deliverers
MAX_BACKOFF = 300.0
BATCH = 50


class WebhookFormat(StrEnum):
    GENERIC = "generic"  # {"event", "time", "text", "subject"}
    SLACK = "slack"  # {"text"}: Slack (and Mattermost, Teams workflows) incoming webhooks


BACKOFF = Backoff(first=1.0, cap=MAX_BACKOFF)


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failures (kept in the row, so that
    any replica's deliverer honours it)."""
    return BACKOFF.delay(attempts)


def webhook_body(payload: dict[str, Any], form: WebhookFormat) -> dict[str, Any]:
    if form is WebhookFormat.SLACK:
        return {"text": f"[trustplane] {payload['event']}: {payload['text']}"}
    return payload


class Outbox:
    def __init__(
        self,
        engine: Engine,
        url: str | None,
        form: WebhookFormat = WebhookFormat.GENERIC,
        *,
        post: Callable[[str, dict[str, Any]], int] | None = None,
        clock: Clock = time.time,
        timeout: float = 5.0,
    ) -> None:
        """`post(url, body) -> status` is injectable for tests; by default httpx."""
        self._engine = engine
        self._url = url
        self._form = form
        self._clock = clock
        self._client: httpx.Client | None = None
        if post is None:
            self._client = httpx.Client(timeout=timeout, follow_redirects=False)
            post = self._http_post
        self._post = post

    def _http_post(self, url: str, body: dict[str, Any]) -> int:
        assert self._client is not None
        return self._client.post(url, json=body).status_code

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def deliver_due(self) -> int:
        """Post every due notification once; returns how many were delivered."""
        now = self._clock()
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(outbox.c.id, outbox.c.payload, outbox.c.attempts)
                .where(outbox.c.delivered_at.is_(None), outbox.c.next_attempt_at <= now)
                .order_by(outbox.c.id)
                .limit(BATCH)
            ).all()
        delivered = 0
        for row in rows:
            if not self._claim(row.id, now):
                continue  # another replica has it
            delivered += self._deliver(row.id, orjson.loads(row.payload), int(row.attempts))
        return delivered

    def _claim(self, row_id: int, now: float) -> bool:
        with self._engine.begin() as connection:
            return bool(
                connection.execute(
                    update(outbox)
                    .where(
                        outbox.c.id == row_id,
                        outbox.c.delivered_at.is_(None),
                        outbox.c.next_attempt_at <= now,
                    )
                    .values(next_attempt_at=now + CLAIM_SECONDS)
                ).rowcount
            )

    def _deliver(self, row_id: int, payload: dict[str, Any], attempts: int) -> int:
        if not self._url:
            # Nowhere to send: kept as a record of what would have been said.
            self._finish(row_id, attempts, "no governance.webhook_url configured")
            return 0
        try:
            status = self._post(self._url, webhook_body(payload, self._form))
            error = None if 200 <= status < 300 else f"webhook answered {status}"
        except Exception as exc:  # any failure is retried; the decision path never waits
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self._finish(row_id, attempts + 1, None)
            return 1
        attempts += 1
        log.warning("notification %d not delivered (%s); attempt %d", row_id, error, attempts)
        with self._engine.begin() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.id == row_id)
                .values(
                    attempts=attempts,
                    next_attempt_at=self._clock() + backoff(attempts),
                    last_error=error[:2000],
                )
            )
        return 0

    def _finish(self, row_id: int, attempts: int, note: str | None) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.id == row_id)
                .values(delivered_at=self._clock(), attempts=attempts, last_error=note)
            )

    def pending(self) -> list[dict[str, Any]]:
        """Notifications not yet delivered (for operators and tests)."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(outbox).where(outbox.c.delivered_at.is_(None)).order_by(outbox.c.id)
            ).all()
        return [
            {
                "id": r.id,
                "event": r.event,
                "attempts": r.attempts,
                "next_attempt_at": r.next_attempt_at,
                "last_error": r.last_error,
            }
            for r in rows
        ]
