"""Unix workload attestation: who is on the other end of the Workload API socket, from the kernel.

The kernel says who connected (SO_PEERCRED: pid, uid, gid at connect time). The executable is
read from /proc/PID/exe and hashed (cached by device, inode, size and mtime, so a workload is
hashed once, not per call). A pid can be reused after its process exits, so each attestation
reads the process start time (/proc/PID/stat field 22) before and after reading the executable
and compares both with the start time recorded when the connection was accepted: a different
process behind the same pid is refused, never attested as the old one.

Reading another user's /proc/PID/exe needs the privilege SPIRE's agent has too (root or
CAP_SYS_PTRACE); without it only the uid and gid selectors are attested, and entries that ask
for a path or a hash do not match.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
from dataclasses import dataclass

_UCRED = struct.Struct("3i")


class AttestationError(Exception):
    """The caller cannot be attested (gone, or its pid now names another process)."""


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int
    start_time: int  # clock ticks since boot, from /proc/PID/stat


def process_start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        raise AttestationError(f"process {pid} is gone") from None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22 overall


def peer_credentials(sock: socket.socket) -> PeerCred:
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    if pid <= 0:
        raise AttestationError("the kernel gave no peer credentials for this connection")
    return PeerCred(pid, uid, gid, process_start_time(pid))


class Attestor:
    """Selectors for a connected peer. Thread-safe; keeps the hash of each executable seen."""

    def __init__(self) -> None:
        self._hashes: dict[tuple[int, int, int, int], str] = {}
        self._lock = threading.Lock()

    def attest(self, peer: PeerCred) -> frozenset[str]:
        if process_start_time(peer.pid) != peer.start_time:
            raise AttestationError(f"pid {peer.pid} now belongs to another process")
        selectors = {f"unix:uid:{peer.uid}", f"unix:gid:{peer.gid}"}
        exe = f"/proc/{peer.pid}/exe"
        path: str | None
        digest: str | None
        try:
            path = os.readlink(exe)
            info = os.stat(exe)
            digest = self._sha256(exe, (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
        except OSError:
            path = digest = None  # not readable: only uid/gid are attested
        if process_start_time(peer.pid) != peer.start_time:
            raise AttestationError(f"pid {peer.pid} changed while it was being attested")
        if path is not None and digest is not None and not path.endswith(" (deleted)"):
            selectors.add(f"unix:path:{path}")
            selectors.add(f"unix:sha256:{digest}")
        return frozenset(selectors)

    def _sha256(self, exe: str, key: tuple[int, int, int, int]) -> str:
        with self._lock:
            known = self._hashes.get(key)
        if known is not None:
            return known
        digest = hashlib.sha256()
        with open(exe, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        value = digest.hexdigest()
        with self._lock:
            self._hashes[key] = value
        return value
