"""Where the recorder's batches are committed: in this process, or in an appender process.

A serving process evaluates on its main thread, and Cedar releases the GIL while it evaluates.
A ledger writer thread in the same interpreter then competes with every evaluation for the GIL
around each SQLite call, which made each served decision cost ~200 µs more (docs/benchmarks.md,
finding 7). `AppenderProcess` moves the commit into a child process: the serving process only
pickles a batch onto a pipe and waits, without the GIL, for the child's answer.

The child owns an engine and a `Ledger` over the same store; the parent's `Ledger` (proofs,
queries) is told which leaves were committed. If the child dies, the batch stays queued in the
recorder and the next call starts a new child, which skips records already in the store, so a
record whose commit was not acknowledged is neither lost nor written twice.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

from trustplane.telemetry.ledger import Ledger, LedgerEntry

log = logging.getLogger("trustplane.ledger")

_START_TIMEOUT = 60.0


class AppenderError(Exception):
    """The appender process could not commit a batch (it died or reported a failure)."""


class LedgerSink(Protocol):
    def append(self, entries: Sequence[LedgerEntry], skip_recorded: bool = False) -> int:
        """Commit `entries` (with `skip_recorded`, those not already stored: a replay); returns
        the tree size this process now knows."""

    def checkpoint(self) -> bool:
        """Sign a checkpoint if the tree grew; True if one was signed."""

    def close(self) -> None:
        """Sign a final checkpoint and release resources."""


class LocalSink:
    """Commit from the calling thread (CLI, tests, in-process use)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def append(self, entries: Sequence[LedgerEntry], skip_recorded: bool = False) -> int:
        if skip_recorded:
            self._ledger.append_batch(entries, skip_recorded=True)
            return self._ledger.size
        return self._ledger.append(entries)

    def checkpoint(self) -> bool:
        return self._ledger.checkpoint() is not None

    def close(self) -> None:
        self._ledger.checkpoint()


class AppenderProcess:
    """Commit in a child process over its own connections to the same store."""

    def __init__(self, ledger: Ledger, database_url: str, signer_key: str) -> None:
        self._ledger = ledger
        self._database_url = database_url
        self._signer_key = signer_key
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._unsure = False  # a batch was sent without an answer: skip what is stored

    def start(self) -> None:
        with self._lock:
            self._ensure_child()

    def append(self, entries: Sequence[LedgerEntry], skip_recorded: bool = False) -> int:
        with self._lock:
            skip = self._unsure or skip_recorded
            self._unsure = True
            start, count, quarantined = self._call(("append", list(entries), skip))
            self._unsure = False
        self._ledger.quarantined += quarantined
        self._ledger.note_committed(entries, start, count)
        return self._ledger.size

    def checkpoint(self) -> bool:
        with self._lock:
            return bool(self._call(("checkpoint",)))

    def close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                self._call(("stop",))
            except AppenderError:
                log.exception("ledger appender did not stop cleanly")
            finally:
                self._reap()

    # -- the child ----------------------------------------------------------------------------

    def _call(self, message: tuple[Any, ...]) -> Any:
        conn = self._ensure_child()
        try:
            conn.send(message)
            status, value = conn.recv()
        except (EOFError, OSError) as exc:
            self._reap()
            raise AppenderError(f"ledger appender process died: {exc!r}") from None
        if status != "ok":
            raise AppenderError(str(value))
        return value

    def _ensure_child(self) -> Connection:
        if self._conn is not None and self._process is not None and self._process.poll() is None:
            return self._conn
        self._reap()
        ours, theirs = socket.socketpair()
        # A fresh interpreter running this module (not multiprocessing's spawn, which would
        # import the parent's __main__ again); the pipe is the only channel, and the signing
        # key travels over it, never on a command line.
        process = subprocess.Popen(
            [sys.executable, "-m", "trustplane.telemetry.appender", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        conn = Connection(ours.detach())
        try:
            conn.send(("init", self._database_url, self._signer_key, self._ledger.origin))
            if not conn.poll(_START_TIMEOUT):
                raise AppenderError("ledger appender process did not start")
            status, value = conn.recv()
        except (EOFError, OSError):
            status, value = "error", f"exited with {process.wait(10)}"
        except AppenderError:
            process.kill()
            process.wait(5)
            conn.close()
            raise
        if status != "ok":
            conn.close()
            process.wait(10)
            raise AppenderError(f"ledger appender process failed to start: {value}")
        self._process, self._conn = process, conn
        return conn

    def _reap(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = self._conn = None


def _serve(conn: Connection) -> None:
    """The appender process: append and checkpoint on request until told to stop or the
    parent goes away (end of file on the pipe)."""
    # A terminal's Ctrl-C or a supervisor's SIGTERM reaches the whole process group; the parent
    # drains the queue through this process before stopping it, so it must outlive that signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from trustplane.store.database import create_store_engine
    from trustplane.telemetry.checkpoint import NoteSigner

    try:
        _, database_url, signer_key, origin = conn.recv()
        engine = create_store_engine(database_url)
        ledger = Ledger(engine, NoteSigner.from_signer_key(signer_key), origin)
    except Exception as exc:
        conn.send(_failure(exc))
        return
    conn.send(("ok", ledger.size))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return  # the serving process is gone
            try:
                if message[0] == "append":
                    before = ledger.quarantined
                    start, count = ledger.append_batch(message[1], skip_recorded=message[2])
                    reply: Any = (start, count, ledger.quarantined - before)
                elif message[0] == "checkpoint":
                    reply = ledger.checkpoint() is not None
                else:
                    ledger.checkpoint()
                    conn.send(("ok", None))
                    return
            except Exception as exc:
                reply = exc
            conn.send(("ok", reply) if not isinstance(reply, Exception) else _failure(reply))
    except OSError:
        return  # the serving process went away before reading the answer
    finally:
        engine.dispose()


def _failure(exc: Exception) -> tuple[str, str]:
    return "error", f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
