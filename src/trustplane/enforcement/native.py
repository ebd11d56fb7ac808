"""Serving ext_authz gRPC through the compiled front, `trustplane-extauthz`.

grpcio's Python server spends about 250 µs of interpreter time on every unary call before
trustplane's handler runs; at 1,000 calls/s on a 2-core machine that per-call cost, not the
decision, sets the latency tail (docs/benchmarks.md, enforcement). The front
(`native/extauthz_front.cc`, built by scripts/bootstrap.sh against Debian's libgrpc++) terminates
gRPC and HTTP/2 and passes each Check's serialized bytes over a unix socketpair; this
module parses them with the xds-protos classes, answers with the same `EnvoyAuthorization`
the grpc.aio transport uses, and writes the serialized CheckResponse back. The front holds no
policy: a wrong answer cannot come from it, only no answer (UNAVAILABLE, a deny at Envoy).

The socketpair has no path: only the front this process started holds the other end. If the
front dies, a supervisor starts a new one on the same port with a new pair.

`start_ext_authz` picks the transport from settings (`grpc.transport`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Protocol, cast

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.message import DecodeError

from trustplane.config import ConfigError, GrpcSettings, GrpcTransport
from trustplane.enforcement.envoy import EnvoyAuthorization, grpc_address, start_grpc_server
from trustplane.retry import Backoff, Retry

log = logging.getLogger("trustplane.envoy")

BINARY_NAME = "trustplane-extauthz"
# length, call id, peer length; then peer, u16 credential length, credential (the call's
# `authorization` metadata: the calling PEP's), message
_CALL_HEAD = struct.Struct("<IQH")
_CREDENTIAL_HEAD = struct.Struct("<H")
_ANSWER_HEAD = struct.Struct("<IQB")  # length, call id, kind; then message
_ANSWER_OK, _ANSWER_INVALID = 0, 1
MAX_FRAME = 8 << 20
"""Longest frame either side accepts; grpc caps a message at 4 MiB before that. The front
is given it on its command line, so the limit is defined here only."""
_START_TIMEOUT = 10.0
_FRONT_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
_FIRST_RESTART = 0.2  # seconds after the front exited
_RESTART_BACKOFF = Backoff(first=0.4, cap=5.0)  # after each failed restart


class NativeFrontError(Exception):
    """The compiled front could not be found or started; the message says what to do."""


class ExtAuthzServer(Protocol):
    port: int

    async def stop(self) -> None: ...


def find_binary(configured: Path | None) -> Path | None:
    """`grpc.native_binary`, else trustplane-extauthz beside this interpreter (the venv's bin,
    where bootstrap puts it). Not looked up on PATH: whatever runs here answers every Envoy
    authorization call, so it is only ever the one built for this install or one named."""
    path = configured if configured is not None else Path(sys.executable).parent / BINARY_NAME
    return path if path.is_file() else None


def require_transport(settings: GrpcSettings) -> Path | None:
    """The front's binary when the settings will use it; refuses `native` without one."""
    if settings.transport is GrpcTransport.PYTHON:
        return None
    binary = find_binary(settings.native_binary)
    if settings.transport is GrpcTransport.NATIVE and binary is None:
        where = settings.native_binary or f"{Path(sys.executable).parent}/{BINARY_NAME}"
        raise ConfigError(
            f"grpc.transport is native but {where} does not exist: run scripts/bootstrap.sh "
            "(it builds the front with g++, pkg-config and libgrpc++-dev), or set "
            "grpc.transport = python"
        )
    return binary


async def start_ext_authz(
    settings: GrpcSettings, host: str, service: EnvoyAuthorization
) -> tuple[ExtAuthzServer, str]:
    """The ext_authz server the `[grpc]` settings ask for on `host`:`grpc.port`, started; and
    the transport's name."""
    port = settings.port
    binary = require_transport(settings)
    if binary is None:
        if settings.transport is GrpcTransport.AUTO:
            log.info("%s is not installed: ext_authz gRPC is served by grpcio", BINARY_NAME)
        aio = await _AioServer.start(service, host, port)
        return aio, "python"
    front = NativeFront(service, binary, host, port, settings.answer_timeout_ms)
    await front.start()
    return front, "native"


class _AioServer:
    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self._server = server
        self.port = port

    @classmethod
    async def start(cls, service: EnvoyAuthorization, host: str, port: int) -> _AioServer:
        server, bound = await start_grpc_server(service, host, port)
        return cls(server, bound)

    async def stop(self) -> None:
        await self._server.stop(grace=5)  # answers in flight are recorded before close


class NativeFront:
    """The front process, the socket it calls, and a supervisor that starts a new front on the
    same port if it dies (calls fail closed meanwhile: Envoy cannot connect)."""

    def __init__(
        self,
        service: EnvoyAuthorization,
        binary: Path,
        host: str,
        port: int,
        answer_timeout_ms: int = 10_000,
    ) -> None:
        self._service = service
        self._binary = binary
        self._host = host
        self.port = port
        self._answer_timeout_ms = answer_timeout_ms
        self._process: asyncio.subprocess.Process | None = None
        self._bridge: _Bridge | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="extauthz-front")

    def _address(self) -> str:
        return grpc_address(self._host, self.port)

    async def _spawn(self) -> None:
        # A socketpair, not a path: only the child holds the other end.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Only what grpc itself reads: the front has no use for the database URL or secrets.
        env = {k: v for k, v in os.environ.items() if k.startswith("GRPC_") or k in _FRONT_ENV}
        try:
            self._process = await asyncio.create_subprocess_exec(
                str(self._binary),
                "--listen",
                self._address(),
                "--backend-fd",
                str(theirs.fileno()),
                "--max-frame",
                str(MAX_FRAME),
                "--timeout-ms",
                str(self._answer_timeout_ms),
                stdin=asyncio.subprocess.PIPE,  # the front exits when this closes
                stdout=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                env=env,
            )
        except BaseException:  # OSError, or cancelled by stop() while starting
            ours.close()
            raise
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        _, self._bridge = await loop.connect_accepted_socket(
            lambda: _Bridge(self._service), sock=ours
        )
        assert self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), _START_TIMEOUT)
        except TimeoutError:
            line = b""
        words = line.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "ready" or not words[1].isdigit():
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
            self._bridge.close()
            raise NativeFrontError(
                f"{self._binary} did not start on {self._address()} "
                f"(exit status {self._process.returncode}; its error is in the log above)"
            )
        self.port = int(words[1])  # port 0 asked for any: a restart comes back on this one

    async def _supervise(self) -> None:
        """Restart the front each time it exits: 0.2 s after the exit, then after each failed
        restart twice as long as before (at most 5 s), until one starts."""
        restarts = Retry(_RESTART_BACKOFF, retry_on=Exception, on_failure=self._restart_failed)
        while not self._stopping:
            assert self._process is not None
            status = await self._process.wait()
            if self._stopping:
                return
            if self._bridge is not None:
                self._bridge.close()
            log.error(
                "%s exited (status %s): ext_authz calls fail closed until it is back",
                self._binary.name,
                status,
            )
            await asyncio.sleep(_FIRST_RESTART)
            await restarts.acall(self._spawn)
            log.warning("%s restarted on %s", self._binary.name, self._address())

    def _restart_failed(self, exc: BaseException, failures: int) -> None:
        if isinstance(exc, NativeFrontError | OSError):
            log.error("restarting %s failed: %s", self._binary.name, exc)
        else:  # never let the supervisor die silently
            log.error("restarting %s failed", self._binary.name, exc_info=exc)
        if self._bridge is not None:
            self._bridge.close()

    async def stop(self) -> None:
        """Stop taking calls and let the front finish those in flight (it allows them 2 s);
        answers still being made meanwhile reach it."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        process = self._process
        if process is not None and process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._bridge is not None:
            await self._bridge.drain()
            self._bridge.close()


class _Bridge(asyncio.Protocol):
    """The connection to one front: frames in, a task per call, frames out."""

    def __init__(self, service: EnvoyAuthorization) -> None:
        self._service = service
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None  # answers still being made are dropped: the front failed them

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def drain(self) -> None:
        """Wait for the answers being made (each is recorded before it is sent)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        buffer = self._buffer
        buffer += data
        at = 0
        while len(buffer) - at >= 4:
            length = int.from_bytes(buffer[at : at + 4], "little")
            fixed = _CALL_HEAD.size - 4 + _CREDENTIAL_HEAD.size
            if length < fixed or length > MAX_FRAME:
                self._refuse_stream()
                return
            if len(buffer) - at < 4 + length:
                break
            _, call_id, peer_length = _CALL_HEAD.unpack_from(buffer, at)
            if peer_length > length - fixed:
                self._refuse_stream()
                return
            start = at + _CALL_HEAD.size
            peer = bytes(buffer[start : start + peer_length]).decode(errors="replace")
            start += peer_length
            (credential_length,) = _CREDENTIAL_HEAD.unpack_from(buffer, start)
            if credential_length > length - fixed - peer_length:
                self._refuse_stream()
                return
            start += _CREDENTIAL_HEAD.size
            credential = bytes(buffer[start : start + credential_length]).decode(errors="replace")
            message = bytes(buffer[start + credential_length : at + 4 + length])
            at += 4 + length
            task = asyncio.create_task(self._answer(call_id, peer, credential or None, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        del buffer[:at]

    def _refuse_stream(self) -> None:
        """Not the front's framing: nothing more on this connection can be trusted to line up."""
        log.error("malformed frame from %s; closing its connection", BINARY_NAME)
        if self._transport is not None:
            self._transport.close()

    async def _answer(
        self, call_id: int, peer: str, credential: str | None, message: bytes
    ) -> None:
        try:
            request = external_auth_pb2.CheckRequest.FromString(message)
        except DecodeError as exc:
            self._write(call_id, _ANSWER_INVALID, f"malformed CheckRequest: {exc}".encode())
            return
        # Never raises: denies instead.
        response = await self._service.answer(request, peer, credential)
        self._write(call_id, _ANSWER_OK, response.SerializeToString())

    def _write(self, call_id: int, kind: int, message: bytes) -> None:
        if self._transport is not None:
            head = _ANSWER_HEAD.pack(_ANSWER_HEAD.size - 4 + len(message), call_id, kind)
            self._transport.write(head + message)
