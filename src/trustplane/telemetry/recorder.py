"""Records decisions into the ledger without holding callers longer than durability asks.

`batch`: the caller returns at once; a writer thread commits everything queued at least every
flush interval. `sync`: the caller waits for the group commit that contains its record (all
records queued while the previous commit ran go in the next one). A failed commit keeps the
records queued and retries; a graceful stop drains the queue before returning. A record the
store refuses is quarantined by the ledger (telemetry/ledger.py) rather than retried, so it never
blocks the records behind it; `health()` names a ledger that is not draining (/readyz).

Memory is bounded (`queue_max` records). Under `batch`, when the store fails or the queue is
full, the recorder is *degraded*: records go to the disk spool (telemetry/spool.py), each fsync'd
before its answer leaves (callers wait for the writer's group fsync, a few milliseconds), and the
writer replays the spool into the store in order once it takes records again (and at the next
start, after a crash). Under `sync` nothing is spooled: a full queue answers 503 at once, and a
caller that gives up waiting (503) abandons its record: never committed if it was still queued,
marked `undelivered` if its commit was already under way.

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
from pathlib import Path

from trustplane.config import Durability, LedgerSettings
from trustplane.model import AccessRequest, Decision
from trustplane.retry import Backoff, Retry
from trustplane.telemetry.appender import LedgerSink, LocalSink
from trustplane.telemetry.ledger import Ledger, LedgerEntry, decision_entry
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.metrics import Metrics
from trustplane.telemetry.spool import Spool

log = logging.getLogger("trustplane.ledger")

# Called on the writer's side once the record is committed (or spooled, for a degraded batch
# record); `_Pending.error` says when it could be neither.
Waiter = Callable[[], None]
_MAX_BATCH = 5000
_WRITER_BACKOFF = Backoff(first=0.05, cap=2.0)  # after a failed commit: 50 ms, doubled, at most 2 s


class RecordingError(Exception):
    """A decision could not be committed in time (sync durability), or kept at all."""


@dataclass(slots=True, eq=False)
class _Pending:
    entry: LedgerEntry
    enqueued: float
    waiter: Waiter | None
    spoolable: bool = False  # a batch record: on disk is enough for its caller
    abandoned: bool = False  # its caller was answered 503: never commit it
    settled: bool = False  # committed (or spooled) and its caller told
    error: str | None = None  # why it could not be kept (its caller answers 503)


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
        queue_max: int = 100_000,
        spool: Spool | None = None,
    ) -> None:
        """`sink` commits the batches: by default this process, through `ledger`. `max_lag`:
        how old the oldest uncommitted record may grow before `health()` reports it.
        `queue_max`: records held in memory; `spool`: where batch records go beyond that or
        while the store fails (without one, a full queue refuses records)."""
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
        self.queue_max = queue_max
        self._spool = spool
        self._spool_lock = threading.Lock()  # spool file order: take-and-append, peek, advance
        self._spooler: threading.Thread | None = None
        self._spooler_stop = False
        self._spooling = False  # degraded: batch records go to the spool, which is replayed
        self._spooling_since = 0.0
        self._failure: str | None = None  # the last commit's error, until one succeeds
        self._round_stopping = False  # whether the writer's current round saw a stop
        self._inflight: float | None = None  # enqueue time of the oldest record being committed
        self._undelivered: list[str] = []  # committed after their caller was answered 503
        self._quarantined = ledger.quarantined
        self.metrics.ledger_records.set(ledger.size)

    @classmethod
    def from_settings(
        cls,
        ledger: Ledger,
        masker: Masker,
        metrics: Metrics,
        settings: LedgerSettings,
        spool_dir: Path,
        sink: LedgerSink | None = None,
    ) -> DecisionRecorder:
        """The recorder the `[ledger]` settings describe, spooling under `spool_dir`."""
        return cls(
            ledger,
            masker,
            metrics,
            durability=settings.durability,
            flush_interval=settings.flush_interval_ms / 1000,
            checkpoint_interval=settings.checkpoint_interval_ms / 1000,
            sink=sink,
            max_lag=settings.ready_max_lag_ms / 1000,
            queue_max=settings.queue_max,
            spool=Spool(spool_dir, settings.spool_max_mb << 20),
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._spool is not None and self._spool.path is None:
            self._spool.open()
            if self._spool.depth:
                log.warning(
                    "replaying %d ledger records spooled while the store was unavailable",
                    self._spool.depth,
                )
                self._enter_spooling()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
            self._thread.start()
        if self._spooler is None and self._spool is not None:
            # Its own thread: callers waiting for the disk never wait behind a store commit
            # that hangs in the writer.
            self._spooler = threading.Thread(
                target=self._run_spooler, name="ledger-spooler", daemon=True
            )
            self._spooler.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain every queued record (into the store, or into the spool while the store is
        unavailable), sign a final checkpoint, stop the writer."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        else:
            self._flush()
        if self._spooler is not None:
            with self._cond:
                self._spooler_stop = True
                self._cond.notify_all()
            self._spooler.join(timeout)
            self._spooler = None
        try:
            self._sink.close()
        except Exception:
            log.exception("closing the ledger sink failed (the final checkpoint is not signed)")
        if self._spool is not None:
            self._spool.close()

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def degraded(self) -> bool:
        return self._spooling

    def health(self) -> str | None:
        """Why the ledger is not draining (None when it is): the writer is failing or gone, the
        ledger is degraded (records go to the disk spool until it is replayed), or the oldest
        record not yet committed is older than `max_lag`."""
        with self._cond:
            waiting = len(self._queue)
            oldest = [
                t for t in (self._inflight, self._queue[0].enqueued if waiting else None) if t
            ]
            thread = self._thread
            spooled = self._spool.depth if self._spool is not None else 0
            since = self._spooling_since if self._spooling else None
        held = f"{waiting} records waiting in memory" + (
            f", {spooled} spooled to disk" if spooled else ""
        )
        if thread is not None and not thread.is_alive():
            return "the ledger writer has stopped"
        now = time.monotonic()
        if since is not None:  # answers wait for the disk, not the store, until it is replayed
            why = f"commits failing: {self._failure}" if self._failure else "replaying the spool"
            return f"ledger degraded for {now - since:.0f}s ({why}); {held}"
        if self._failure is not None:
            return f"ledger commits are failing ({self._failure}); {held}"
        age = now - min(oldest) if oldest else 0.0
        if age > self.max_lag:
            return (
                f"ledger not draining: the oldest uncommitted record is {age:.0f}s old "
                f"(limit {self.max_lag:.0f}s); {held}"
            )
        return None

    # -- submitting ---------------------------------------------------------------------------

    def submit(
        self, request: AccessRequest, decision: Decision, waiter: Waiter | None = None
    ) -> None:
        entry = decision_entry(request, decision, self.masker)
        spoolable = self.durability is Durability.BATCH
        self._enqueue(_Pending(entry, time.monotonic(), waiter, spoolable=spoolable))

    def record_entry_blocking(
        self, entry: LedgerEntry, timeout: float = 10.0, wait: bool = True
    ) -> None:
        """Append a prepared entry (an admin action); with `wait`, return once it is committed
        whatever the durability: an admin action is acknowledged only once its record is
        stored. Without `wait` (callers on an event loop) it is queued like a decision."""
        with self._cond:
            running = self._thread is not None
        if not running:  # no writer (a CLI process): commit here
            self._sink.append([entry])
            return
        if not wait:
            self._enqueue(_Pending(entry, time.monotonic(), None, spoolable=True))
            return
        committed = threading.Event()
        pending = _Pending(entry, time.monotonic(), committed.set)
        self._enqueue(pending)
        self._wait_blocking(pending, committed, timeout, "admin action")

    async def record(
        self, request: AccessRequest, decision: Decision, timeout: float = 10.0
    ) -> None:
        """Record from async code; under `sync` durability (or a degraded ledger), return
        after the commit (or the spool's fsync)."""
        await self.record_entry(decision_entry(request, decision, self.masker), timeout)

    async def record_entry(self, entry: LedgerEntry, timeout: float = 10.0) -> None:
        """Record a prepared entry (a search) from async code, with a decision's durability."""
        if self.durability is Durability.BATCH and self._queue_batch(entry):
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            loop.call_soon_threadsafe(_settle, future)

        spoolable = self.durability is Durability.BATCH
        pending = _Pending(entry, time.monotonic(), done, spoolable=spoolable)
        self._enqueue(pending)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            if not self._abandon(pending):
                raise RecordingError(f"decision not committed within {timeout:.0f}s") from None
        if pending.error is not None:
            raise RecordingError(pending.error)

    def record_blocking(
        self, request: AccessRequest, decision: Decision, timeout: float = 10.0
    ) -> None:
        """Record from threaded code; under `sync` durability (or a degraded ledger), return
        after the commit (or the spool's fsync)."""
        entry = decision_entry(request, decision, self.masker)
        if self.durability is Durability.BATCH and self._queue_batch(entry):
            return
        committed = threading.Event()
        spoolable = self.durability is Durability.BATCH
        pending = _Pending(entry, time.monotonic(), committed.set, spoolable=spoolable)
        self._enqueue(pending)
        self._wait_blocking(pending, committed, timeout, "decision")

    def _wait_blocking(
        self, pending: _Pending, committed: threading.Event, timeout: float, what: str
    ) -> None:
        if not committed.wait(timeout) and not self._abandon(pending):
            raise RecordingError(f"{what} not committed within {timeout:.0f}s")
        if pending.error is not None:
            raise RecordingError(pending.error)

    def _queue_batch(self, entry: LedgerEntry) -> bool:
        """Queue a batch record for the caller not to wait on; False when the ledger is
        degraded or the queue is full (the caller then waits for the spool)."""
        with self._cond:
            if self._stopping and self._thread is None:
                raise RecordingError("recorder is stopped")
            if self._spooling or len(self._queue) >= self.queue_max:
                if self._spool is None:
                    raise RecordingError(
                        f"ledger queue full ({len(self._queue)} records waiting for the store)"
                    )
                if not self._spooling:
                    log.warning("ledger queue full (%d records): spooling to disk", self.queue_max)
                    self._enter_spooling()
                return False
            self._queue.append(_Pending(entry, time.monotonic(), None, spoolable=True))
            if len(self._queue) >= _MAX_BATCH:
                self._cond.notify()
            return True

    def _enqueue(self, pending: _Pending) -> None:
        with self._cond:
            if self._stopping and self._thread is None:
                raise RecordingError("recorder is stopped")
            full = len(self._queue) >= self.queue_max
            # A caller that waits bounds itself; one that does not must find room.
            if full and (pending.waiter is None or not pending.spoolable):
                if pending.spoolable and pending.waiter is None and self._spool is not None:
                    self._enter_spooling()
                else:
                    raise RecordingError(
                        f"ledger queue full ({len(self._queue)} records waiting for the store)"
                    )
            self._queue.append(pending)
            if self._spooling:  # the spooler, not only the writer, must hear of it
                self._cond.notify_all()
            elif (
                self.durability is Durability.SYNC
                or pending.waiter is not None
                or len(self._queue) >= _MAX_BATCH
            ):
                self._cond.notify()

    def _abandon(self, pending: _Pending) -> bool:
        """The caller stops waiting: True if its record was kept after all (just in time);
        otherwise the record is never committed, or marked undelivered if it already was."""
        with self._cond:
            if pending.settled:
                return True
            pending.abandoned = True
            return False

    def _enter_spooling(self) -> None:
        """(under the lock, or before the writer starts)"""
        if not self._spooling:
            self._spooling = True
            self._spooling_since = time.monotonic()
            self.metrics.ledger_degraded.set(1)

    # -- the writer ---------------------------------------------------------------------------

    def _run(self) -> None:
        retry = Retry(
            _WRITER_BACKOFF, retry_on=Exception, on_failure=self._failed, sleep=self._pause
        )
        while True:
            # A failed round keeps its records queued and is tried again after the backoff;
            # stopping while degraded ends it (every batch record is on disk by then).
            stopping = retry.call_until(self._commit_round, self._stopped_degraded)
            if stopping is None:
                return
            self._maybe_checkpoint()
            if stopping and not self._queue and not self._spooling:
                return

    def _commit_round(self) -> bool:
        """Wait for the next commit, then replay the spool or commit the queue; returns
        whether the recorder is stopping."""
        stopping = self._round_stopping = self._wait_for_work()
        if self._spooling:
            self._replay()
        if not self._spooling:
            self._flush()
            self._mark_undelivered()  # after any replay: the rows exist now
        self._failure = None
        return stopping

    def _failed(self, exc: BaseException, failures: int) -> None:
        first = self._failure is None
        self._failure = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        self.metrics.ledger_write_failures.inc()
        if first:
            log.error("ledger commit failed; %d records kept for retry", self.pending, exc_info=exc)
        else:
            log.warning("ledger commit failed again: %s", self._failure)
        with self._cond:
            if self._spool is not None and self.durability is Durability.BATCH:
                self._enter_spooling()
                self._cond.notify_all()  # the spooler takes the queue to disk

    def _stopped_degraded(self) -> bool:
        """Records that needed the store itself were answered 503 by now; the spooler's last
        round puts every batch record on disk."""
        return self._round_stopping and self._spooling

    def _pause(self, seconds: float) -> None:
        """The whole backoff, cut short only by a stop: arrivals wake the spooler, not another
        attempt."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stopping and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)

    def _run_spooler(self) -> None:
        """While the ledger is degraded, move batch records from memory to the spool (one
        fsync per round) and tell their waiting callers; a last round at stop."""
        while True:
            with self._cond:
                if not (self._spooling and self._queue) and not self._spooler_stop:
                    self._cond.wait(self.flush_interval)
                stop = self._spooler_stop
                active = self._spooling
            moved = 0
            if active or stop:
                try:
                    moved = self._spool_queue(force=stop)
                except Exception:
                    log.exception("writing the ledger spool failed")
            if stop:
                return
            if active and not moved:
                with self._cond:  # only records that need the store itself are queued
                    self._cond.wait(self.flush_interval)

    def _wait_for_work(self) -> bool:
        """Block until the next commit is due; returns whether the recorder is stopping.

        `sync` (and a degraded ledger, whose callers wait for the spool): as soon as anything is
        queued (records queued while a commit runs form the next group). `batch`: one commit
        per flush interval, started at most `flush_interval` after the previous one, earlier
        only for a full batch or a stop. Committing whatever arrived the moment the last commit
        ended would turn steady load into many tiny transactions, each costing the serving
        threads CPU and GIL time.
        """
        with self._cond:
            if self._spooling:  # the writer replays; the backoff after a failure paces it
                return self._stopping
            if self.durability is Durability.SYNC:
                if not self._queue and not self._stopping:
                    self._cond.wait(self.flush_interval)  # the timeout paces idle checkpoints
                return self._stopping
            due = self._last_flush + self.flush_interval
            while (
                not self._stopping
                and len(self._queue) < _MAX_BATCH
                and not any(p.waiter is not None for p in _head(self._queue))
            ):
                remaining = due - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._last_flush = time.monotonic()
            return self._stopping

    def _take(self, limit: int, spoolable_only: bool = False) -> list[_Pending]:
        """(under the lock) Up to `limit` records from the head of the queue, leaving out
        records whose caller gave up; with `spoolable_only`, only batch records (the rest keep
        their order in the queue)."""
        batch: list[_Pending] = []
        kept: list[_Pending] = []
        while self._queue and len(batch) < limit:
            pending = self._queue.popleft()
            if pending.abandoned:
                continue
            if spoolable_only and not pending.spoolable:
                kept.append(pending)
                continue
            batch.append(pending)
        self._queue.extendleft(reversed(kept))
        return batch

    def _flush(self) -> None:
        """Commit what is queued now, in batches of at most _MAX_BATCH; later arrivals wait for
        the next commit. Stops when the queue is empty before that: once the queue overflows,
        the spooler takes from it too (it may take what was counted here), and the next round
        replays the spool."""
        due = len(self._queue)
        while due > 0:
            with self._cond:
                take = min(len(self._queue), _MAX_BATCH, due)
                if take == 0:
                    break
                batch = self._take(take)
                self._inflight = batch[0].enqueued if batch else None
            due -= take
            if not batch:
                continue
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
            self._committed(size)
            self._settle(batch)
            self._maybe_checkpoint()  # a long backlog still gets checkpoints on time
        self._update_gauges()

    def _settle(self, batch: list[_Pending], error: str | None = None) -> None:
        with self._cond:
            for pending in batch:
                if pending.abandoned:  # answered 503 while its commit was under way
                    if error is None:
                        self._undelivered.append(pending.entry.decision_id)
                    continue
                pending.settled = error is None
                pending.error = error
                if pending.waiter is not None:
                    pending.waiter()

    def _committed(self, size: int) -> None:
        self.metrics.ledger_records.set(size)
        if self.ledger.quarantined != self._quarantined:
            self.metrics.ledger_quarantined.inc(self.ledger.quarantined - self._quarantined)
            self._quarantined = self.ledger.quarantined

    def _mark_undelivered(self) -> None:
        if not self._undelivered:
            return
        ids = list(self._undelivered)
        self.ledger.mark_undelivered(ids)
        del self._undelivered[: len(ids)]
        log.warning("%d decisions committed after their callers were answered 503", len(ids))

    # -- degraded: the spool ------------------------------------------------------------------

    def _spool_queue(self, force: bool = False) -> int:
        """Move the batch records queued in memory to the spool (one fsync), then tell their
        callers; returns how many. Records that must reach the store itself (sync, admin) stay
        queued. Only while degraded, unless `force` (the last round at stop)."""
        spool = self._spool
        if spool is None:
            return 0
        moved = 0
        while True:
            with self._spool_lock:
                with self._cond:
                    if not (self._spooling or force):
                        return moved
                    batch = self._take(_MAX_BATCH, spoolable_only=True)
                if not batch:
                    return moved
                try:
                    spool.append([p.entry for p in batch])
                except Exception as exc:
                    waiting = [p for p in batch if p.waiter is not None]
                    kept = [p for p in batch if p.waiter is None]  # answered already: keep
                    with self._cond:
                        self._queue.extendleft(reversed(kept))
                    self._settle(waiting, f"decision not recorded: {exc}")
                    self._update_gauges()
                    raise
            moved += len(batch)
            self._settle(batch)
            self._update_gauges()

    def _replay(self) -> None:
        """Commit the spool to the store, oldest first; leave the degraded state once it is
        empty. Records committed before a crash cut a replay short are skipped by id."""
        spool = self._spool
        while True:
            with self._spool_lock:
                if spool is None or spool.depth == 0:
                    with self._cond:
                        self._leave_spooling()
                    return
                entries = spool.peek(_MAX_BATCH)
            size = self._sink.append(entries, skip_recorded=True)
            with self._spool_lock:
                spool.advance(len(entries))
            self._committed(size)
            self._update_gauges()
            self._maybe_checkpoint()

    def _leave_spooling(self) -> None:
        """(under the lock)"""
        if self._spooling:
            log.info("ledger spool replayed: the store takes records again")
        self._spooling = False
        self.metrics.ledger_degraded.set(0)

    def _update_gauges(self) -> None:
        self.metrics.ledger_pending.set(len(self._queue))
        if self._spool is not None:
            self.metrics.ledger_spooled.set(self._spool.depth)
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
            # Signed now, or the newest checkpoint already covers the tree: either way every
            # committed record is covered as of this instant (an idle ledger is not stale).
            self.metrics.ledger_checkpoint_time.set(time.time())
        except Exception:
            log.exception("signing a ledger checkpoint failed; will retry")


def _head(queue: deque[_Pending]) -> list[_Pending]:
    """The newest record: a waiting caller (an admin action) makes the commit due at once."""
    return [queue[-1]] if queue else []


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
