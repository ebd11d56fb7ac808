"""Records decisions into the ledger without holding callers longer than durability asks.

`batch`: the caller returns at once; a writer thread commits everything queued at least every
flush interval. `sync`: the caller waits for the group commit that contains its record (all
records queued while the previous commit ran go in the next one). A failed commit keeps the
records queued and retries; a graceful stop drains the queue before returning. A record the
store refuses is quarantined by the ledger (telemetry/ledger.py) rather than retried, so it never
blocks the records behind it; `health()` names a ledger that is not draining (/readyz).

The caller builds its record (masking, canonical JSON, leaf hash) when it submits: that work is
spread evenly over requests, and the writer thread holds the GIL only briefly between SQLite
calls, so a server's event loop never stalls for a whole batch (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from trustplane.config import Durability
from trustplane.model import AccessRequest, Decision
from trustplane.telemetry.appender import LedgerSink, LocalSink
from trustplane.telemetry.ledger import Ledger, LedgerEntry, decision_entry
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.metrics import Metrics

log = logging.getLogger("trustplane.ledger")

# Called on the writer's side once the record is committed (failed commits are retried, so a
# waiter only ever hears of success; a caller that cannot wait any longer times out).
Waiter = Callable[[], None]
_MAX_BATCH = 5000


class RecordingError(Exception):
    """A decision could not be committed in time (sync durability)."""


@dataclass(slots=True)
class _Pending:
    entry: LedgerEntry
    enqueued: float
    waiter: Waiter | None


class DecisionRecorder:
    def __init__(
        self,
        ledger: Ledger,
        masker: Masker,
        metrics: Metrics,
        *,
        durability: Durability = Durability.BATCH,
        flush_interval: float = 0.05,
        checkpoint_interval: float = 1.0,
        sink: LedgerSink | None = None,
        max_lag: float = 10.0,
    ) -> None:
        """`sink` commits the batches: by default this process, through `ledger`. `max_lag`:
        how old the oldest uncommitted record may grow before `health()` reports it."""
        self.ledger = ledger
        self._sink = sink or LocalSink(ledger)
        self.masker = masker
        self.metrics = metrics
        self.durability = durability
        self.flush_interval = flush_interval
        self.checkpoint_interval = checkpoint_interval
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_checkpoint = 0.0
        self._last_flush = 0.0
        self.max_lag = max_lag
        self._failure: str | None = None  # the last commit's error, until one succeeds
        self._inflight: float | None = None  # enqueue time of the oldest record being committed
        self._quarantined = ledger.quarantined
        self.metrics.ledger_size.set(ledger.size)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain every queued record, sign a final checkpoint, stop the writer."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        else:
            self._flush()
        self._sink.close()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def health(self) -> str | None:
        """Why the ledger is not draining (None when it is): the writer is failing or gone, or
        the oldest record not yet committed is older than `max_lag`."""
        with self._cond:
            waiting = len(self._queue)
            oldest = [
                t for t in (self._inflight, self._queue[0].enqueued if waiting else None) if t
            ]
            thread = self._thread
        if thread is not None and not thread.is_alive():
            return "the ledger writer has stopped"
        if self._failure is not None:
            return f"ledger commits are failing ({self._failure}); {waiting} records waiting"
        age = time.monotonic() - min(oldest) if oldest else 0.0
        if age > self.max_lag:
            return (
                f"ledger not draining: the oldest uncommitted record is {age:.0f}s old "
                f"(limit {self.max_lag:.0f}s); {waiting} records waiting"
            )
        return None

    # -- submitting ---------------------------------------------------------------------------

    def submit(
        self, request: AccessRequest, decision: Decision, waiter: Waiter | None = None
    ) -> None:
        entry = decision_entry(request, decision, self.masker)
        self._enqueue(_Pending(entry, time.monotonic(), waiter))

    def record_entry_blocking(
        self, entry: LedgerEntry, timeout: float = 10.0, wait: bool = True
    ) -> None:
        """Append a prepared entry (an admin action); with `wait`, return once it is committed
        whatever the durability: an admin action is acknowledged only once its record is
        stored. Without `wait` (callers on an event loop) it is queued like a decision."""
        committed = threading.Event()
        with self._cond:
            running = self._thread is not None
        if not running:  # no writer (a CLI process): commit here
            self._sink.append([entry])
            return
        self._enqueue(_Pending(entry, time.monotonic(), committed.set if wait else None))
        if not wait:
            return
        with self._cond:
            self._cond.notify()
        if not committed.wait(timeout):
            raise RecordingError(f"admin action not committed within {timeout:.0f}s")

    async def record(
        self, request: AccessRequest, decision: Decision, timeout: float = 10.0
    ) -> None:
        """Record from async code; under `sync` durability, return after the commit."""
        if self.durability is Durability.BATCH:
            self.submit(request, decision)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            loop.call_soon_threadsafe(_settle, future)

        self.submit(request, decision, done)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise RecordingError(f"decision not committed within {timeout:.0f}s") from None

    def record_blocking(
        self, request: AccessRequest, decision: Decision, timeout: float = 10.0
    ) -> None:
        """Record from threaded code; under `sync` durability, return after the commit."""
        if self.durability is Durability.BATCH:
            self.submit(request, decision)
            return
        committed = threading.Event()
        self.submit(request, decision, committed.set)
        if not committed.wait(timeout):
            raise RecordingError(f"decision not committed within {timeout:.0f}s")

    def _enqueue(self, pending: _Pending) -> None:
        with self._cond:
            if self._stopping and self._thread is None:
                raise RecordingError("recorder is stopped")
            self._queue.append(pending)
            if self.durability is Durability.SYNC or len(self._queue) >= _MAX_BATCH:
                self._cond.notify()

    # -- the writer ---------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while True:
            stopping = self._wait_for_work()
            try:
                self._flush()
                backoff = 0.05
                self._failure = None
            except Exception as exc:
                self._failure = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                self.metrics.ledger_write_failures.inc()
                log.exception("ledger commit failed; %d records kept for retry", self.pending)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self._maybe_checkpoint()
            if stopping and not self._queue:
                return

    def _wait_for_work(self) -> bool:
        """Block until the next commit is due; returns whether the recorder is stopping.

        `sync`: as soon as anything is queued (records queued while a commit runs form the
        next group). `batch`: one commit per flush interval, started at most `flush_interval`
        after the previous one, earlier only for a full batch or a stop. Committing whatever
        arrived the moment the last commit ended would turn steady load into many tiny
        transactions, each costing the serving threads CPU and GIL time.
        """
        with self._cond:
            if self.durability is Durability.SYNC:
                if not self._queue and not self._stopping:
                    self._cond.wait(self.flush_interval)  # the timeout paces idle checkpoints
                return self._stopping
            due = self._last_flush + self.flush_interval
            while not self._stopping and len(self._queue) < _MAX_BATCH:
                remaining = due - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._last_flush = time.monotonic()
            return self._stopping

    def _flush(self) -> None:
        """Commit what is queued now, in batches of at most _MAX_BATCH; later arrivals wait for
        the next commit."""
        due = len(self._queue)
        while due > 0:
            with self._cond:
                take = min(len(self._queue), _MAX_BATCH, due)
                batch = [self._queue.popleft() for _ in range(take)]
                self._inflight = batch[0].enqueued if batch else None
            due -= take
            try:
                entries = [p.entry for p in batch]
                size = self._sink.append(entries)
            except Exception:
                with self._cond:
                    self._queue.extendleft(reversed(batch))  # keep order, retry later
                    self._inflight = None
                self._update_gauges()
                raise
            self._inflight = None
            self.metrics.ledger_size.set(size)
            if self.ledger.quarantined != self._quarantined:
                self.metrics.ledger_quarantined.inc(self.ledger.quarantined - self._quarantined)
                self._quarantined = self.ledger.quarantined
            for pending in batch:
                if pending.waiter is not None:
                    pending.waiter()
            self._maybe_checkpoint()  # a long backlog still gets checkpoints on time
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.ledger_pending.set(len(self._queue))
        oldest = self._queue[0].enqueued if self._queue else None
        self.metrics.ledger_lag_seconds.set(0 if oldest is None else time.monotonic() - oldest)

    def _maybe_checkpoint(self) -> None:
        now = time.monotonic()
        if now - self._last_checkpoint < self.checkpoint_interval:
            return
        try:
            if self._sink.checkpoint():
                self.metrics.checkpoints.inc()
            self._last_checkpoint = now
        except Exception:
            log.exception("signing a ledger checkpoint failed; will retry")


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
