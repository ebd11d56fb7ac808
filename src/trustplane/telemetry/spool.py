"""The ledger's disk spool: where answered decisions wait, durably and in order, while the store
cannot take them.

`batch` durability answers before the commit. When the store fails, or the in-memory queue
reaches `ledger.queue_max`, the recorder stops holding records in memory: each is appended to
this file and fsync'd before its answer leaves, and the writer replays the file into the store,
oldest first, once the store takes records again. A kill -9 during an outage loses nothing that
was answered: the next start replays what the file holds (records already stored are skipped by
decision id, so a replay cut short is never doubled).

One file per serving process, `state_dir/ledger-spool/spool-N.log`, held with an exclusive
`flock` (the lowest free N), and `spool-N.head`, the offset of the first record not yet in the
store. A process that starts adopts the records of spools no live process holds (a worker that
died), ahead of its own. Frames are `length, crc32, payload`; a torn frame at the end (a crash
mid-write, never acknowledged) is cut off on open.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from trustplane.telemetry.ledger import LedgerEntry

log = logging.getLogger("trustplane.ledger")

_FRAME = struct.Struct("!II")  # payload length, crc32 of the payload
_LEN = struct.Struct("!I")
_NONE = 0xFFFFFFFF
_SLOTS = 256


class SpoolError(Exception):
    """The spool cannot keep a record (full, or the disk refused it)."""


def encode_entry(entry: LedgerEntry) -> bytes:
    """Length-prefixed fields; text as UTF-8 with surrogates passed through, so every value a
    record can hold round-trips exactly."""
    parts = [struct.pack("!d", entry.ts)]
    for value in (
        entry.decision_id,
        entry.kind,
        entry.principal,
        entry.action,
        entry.resource,
        entry.decision,
        entry.shadow,
        entry.policies,
        entry.revision,
    ):
        if value is None:
            parts.append(_LEN.pack(_NONE))
        else:
            data = value.encode("utf-8", "surrogatepass")
            parts.append(_LEN.pack(len(data)) + data)
    for blob in (entry.record, entry.leaf_hash):
        parts.append(_LEN.pack(len(blob)) + blob)
    return b"".join(parts)


def decode_entry(payload: bytes) -> LedgerEntry:
    (ts,) = struct.unpack_from("!d", payload, 0)
    offset = 8
    fields: list[bytes | None] = []
    for _ in range(11):
        (size,) = _LEN.unpack_from(payload, offset)
        offset += 4
        if size == _NONE:
            fields.append(None)
            continue
        fields.append(payload[offset : offset + size])
        offset += size
    text = [None if f is None else f.decode("utf-8", "surrogatepass") for f in fields[:9]]
    record, leaf = fields[9], fields[10]
    assert record is not None and leaf is not None
    return LedgerEntry(
        decision_id=str(text[0]),
        ts=ts,
        kind=str(text[1]),
        principal=str(text[2]),
        action=str(text[3]),
        resource=str(text[4]),
        decision=str(text[5]),
        shadow=str(text[6]),
        policies=str(text[7]),
        revision=text[8],
        record=bytes(record),
        leaf_hash=bytes(leaf),
    )


class Spool:
    """An append-only, fsync'd file of ledger entries with a durable read position."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._log: BinaryIO | None = None
        self._head_fd = -1
        self.path: Path | None = None
        self._head = 0  # offset of the first frame not yet in the store
        self._size = 0  # offset after the last complete frame
        self.depth = 0  # frames between head and size

    # -- opening ------------------------------------------------------------------------------

    def open(self) -> None:
        """Take the lowest free slot, then adopt what dead processes left in the others."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        for slot in range(_SLOTS):
            path = self.directory / f"spool-{slot}.log"
            handle = _open_locked(path)
            if handle is None:
                continue
            self._log, self.path = handle, path
            break
        else:
            raise SpoolError(f"no free ledger spool slot in {self.directory}")
        assert self.path is not None
        self._head_fd = os.open(self.path.with_suffix(".head"), os.O_RDWR | os.O_CREAT, 0o600)
        self._head = _read_offset(self._head_fd)
        if self._head > os.fstat(self._log.fileno()).st_size:
            self._head = 0  # emptied, then stopped before the head was rewritten
        self._size, self.depth = _scan(self._log, self._head)
        self._log.truncate(self._size)  # a torn last frame was never acknowledged
        self._adopt()

    def _adopt(self) -> None:
        for path in sorted(self.directory.glob("spool-*.log")):
            if path == self.path:
                continue
            handle = _open_locked(path)
            if handle is None:
                continue  # a live process holds it
            with handle:
                head_path = path.with_suffix(".head")
                head = 0
                if head_path.exists():
                    fd = os.open(head_path, os.O_RDONLY)
                    try:
                        head = _read_offset(fd)
                    finally:
                        os.close(fd)
                entries = list(_frames(handle, head))
                if entries:
                    self.append([decode_entry(p) for p in entries])
                    log.warning(
                        "adopted %d ledger records from %s (a process that stopped)",
                        len(entries),
                        path.name,
                    )
                handle.truncate(0)
                os.fsync(handle.fileno())
                with contextlib.suppress(FileNotFoundError):
                    head_path.unlink()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()  # releases the lock
            self._log = None
        if self._head_fd >= 0:
            os.close(self._head_fd)
            self._head_fd = -1

    # -- writing and reading ------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        return self._size - self._head

    def append(self, entries: Sequence[LedgerEntry]) -> None:
        """Write `entries` after the others and fsync: durable when this returns."""
        if not entries:
            return
        assert self._log is not None
        frames = []
        for entry in entries:
            payload = encode_entry(entry)
            frames.append(_FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
        data = b"".join(frames)
        if self.size_bytes + len(data) > self.max_bytes:
            raise SpoolError(
                f"ledger spool full ({self.size_bytes} bytes, limit {self.max_bytes}): "
                "the store has not taken records for too long"
            )
        try:
            self._log.seek(self._size)
            self._log.write(data)
            self._log.flush()
            os.fsync(self._log.fileno())
        except OSError as exc:
            self._log.truncate(self._size)
            raise SpoolError(f"cannot write the ledger spool {self.path}: {exc}") from None
        self._size += len(data)
        self.depth += len(entries)

    def peek(self, limit: int) -> list[LedgerEntry]:
        """Up to `limit` entries from the head, oldest first (nothing is removed)."""
        assert self._log is not None
        out = []
        for payload in _frames(self._log, self._head):
            out.append(decode_entry(payload))
            if len(out) >= limit:
                break
        return out

    def advance(self, count: int) -> None:
        """The first `count` entries are in the store: move the head past them, durably; an
        empty spool is truncated."""
        assert self._log is not None
        self._log.seek(self._head)
        offset = self._head
        for _ in range(count):
            header = self._log.read(_FRAME.size)
            length, _crc = _FRAME.unpack(header)
            offset += _FRAME.size + length
            self._log.seek(offset)
        self.depth -= count
        if offset >= self._size:
            self._log.truncate(0)
            os.fsync(self._log.fileno())
            self._head = self._size = 0
            self.depth = 0
        else:
            self._head = offset
        os.pwrite(self._head_fd, struct.pack("!Q", self._head), 0)
        os.fsync(self._head_fd)


def _open_locked(path: Path) -> BinaryIO | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return os.fdopen(fd, "r+b", buffering=0)


def _read_offset(fd: int) -> int:
    data = os.pread(fd, 8, 0)
    return struct.unpack("!Q", data)[0] if len(data) == 8 else 0


def _frames(handle: BinaryIO, start: int) -> Iterator[bytes]:
    """Payloads of complete, intact frames from `start`."""
    handle.seek(start)
    while True:
        header = handle.read(_FRAME.size)
        if len(header) < _FRAME.size:
            return
        length, crc = _FRAME.unpack(header)
        payload = handle.read(length)
        if len(payload) < length or zlib.crc32(payload) != crc:
            return
        yield payload


def _scan(handle: BinaryIO, head: int) -> tuple[int, int]:
    """(offset after the last intact frame, frames after `head`)."""
    offset, count = head, 0
    for payload in _frames(handle, head):
        offset += _FRAME.size + len(payload)
        count += 1
    return offset, count
