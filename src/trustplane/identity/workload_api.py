"""The SPIFFE Workload API (`SpiffeWorkloadAPI`, workload.proto) on a unix socket.

gRPC in Python does not tell a handler who is on the other end of a unix socket, so the public
socket is served by a small relay: it accepts each connection, asks the kernel for the peer's
credentials (SO_PEERCRED) and relays the bytes to the gRPC server on a private socket (in a 0700
directory) over a connection bound to a fresh abstract address. gRPC reports that address as the
call's peer, which names the attested credentials in `_peers`. A connection that did not come
through the relay has no entry there and is refused, and an entry is dropped before its
connection closes, so an address is never reused while it still names someone.

Messages and the service are generated from SPIFFE's workload.proto, vendored in
`workload_api_pb/` (`scripts/gen-protos.sh`); this module only serves them.

Every call needs the `workload.spiffe.io: true` metadata (InvalidArgument otherwise) and a caller
whose attested selectors match a registration entry (PermissionDenied otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn, cast

import grpc

from trustplane.identity.entries import RegistrationEntry
from trustplane.identity.service import IdentityService
from trustplane.identity.spiffe_id import SpiffeId
from trustplane.identity.svid import SvidError, issue_jwt_svid, issue_x509_svid, validate_jwt_svid
from trustplane.identity.trust_bundle import jwt_bundle_json, x509_bundle_der
from trustplane.identity.workload_api_pb import workload_pb2, workload_pb2_grpc
from trustplane.identity.workload_attestation import (
    AttestationError,
    Attestor,
    PeerCred,
    peer_credentials,
)

log = logging.getLogger("trustplane.identity.workload")

HEADER = "workload.spiffe.io"
WATCH_INTERVAL = 0.5  # how often an open stream looks for new keys or entries
JWT_CACHE_SIZE = 10_000
EARLY_LIMIT = 1 << 20  # bytes a workload may send before its relay is connected


async def _refuse(context: Any, code: grpc.StatusCode, detail: str) -> NoReturn:
    await context.abort(code, detail)
    raise AssertionError("unreachable: abort raises")


class _Servicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def __init__(
        self, service: IdentityService, peers: dict[str, PeerCred], attestor: Attestor
    ) -> None:
        self._service = service
        self._peers = peers
        self._attestor = attestor
        self._jwt_cache: dict[tuple[str, tuple[str, ...], int, int], tuple[str, float]] = {}

    async def _entries(self, context: Any) -> list[RegistrationEntry]:
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get(HEADER) != "true":
            await _refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"security header missing from request ({HEADER})",
            )
        peer = self._peers.get(context.peer())
        if peer is None:
            await _refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "caller not attested: connect to the public socket",
            )
        try:
            selectors = self._attestor.attest(peer)
        except AttestationError as exc:
            await _refuse(context, grpc.StatusCode.PERMISSION_DENIED, f"attestation failed: {exc}")
        entries = self._service.entries.match(selectors)
        if not entries:
            await _refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"no identity issued: no registration entry matches pid {peer.pid} "
                f"(uid {peer.uid}, gid {peer.gid})",
            )
        return entries

    def _version(self) -> tuple[int, int]:
        return self._service.keys.sequence, self._service.entries.generation

    async def FetchX509SVID(self, request: Any, context: Any) -> AsyncIterator[Any]:
        clock = self._service.clock  # the service's clock: a test can run hours in a moment
        stream = id(context)
        try:
            while True:
                entries = await self._entries(context)
                version = self._version()
                keys = self._service.keys
                bundle = x509_bundle_der(keys)
                now = clock()
                svids = []
                refresh_at = now + 3600.0
                expires_at = float("inf")
                for entry in _unique(entries):
                    ttl = self._service.x509_ttl(entry)
                    svid = issue_x509_svid(keys, entry.spiffe_id, ttl, now=now)
                    refresh_at = min(refresh_at, now + (svid.expires_at - now) / 2)
                    expires_at = min(expires_at, svid.expires_at)
                    self._service.inventory.seen(str(entry.spiffe_id), "workload", entry.owner, ttl)
                    svids.append(
                        workload_pb2.X509SVID(
                            spiffe_id=str(entry.spiffe_id),
                            x509_svid=svid.chain_der(),
                            x509_svid_key=svid.key_der(),
                            bundle=bundle,
                        )
                    )
                self._service.held_svids[stream] = expires_at
                yield workload_pb2.X509SVIDResponse(svids=svids)
                # push a new SVID at half-life, or at once when keys or entries change
                while clock() < refresh_at and self._version() == version:
                    await asyncio.sleep(min(WATCH_INTERVAL, max(0.0, refresh_at - clock())))
        finally:
            self._service.held_svids.pop(stream, None)

    async def FetchX509Bundles(self, request: Any, context: Any) -> AsyncIterator[Any]:
        while True:
            await self._entries(context)
            keys = self._service.keys
            yield workload_pb2.X509BundlesResponse(
                bundles={keys.trust_domain: x509_bundle_der(keys)}
            )
            while self._service.keys.sequence == keys.sequence:
                await asyncio.sleep(WATCH_INTERVAL)

    async def FetchJWTBundles(self, request: Any, context: Any) -> AsyncIterator[Any]:
        while True:
            await self._entries(context)
            keys = self._service.keys
            yield workload_pb2.JWTBundlesResponse(
                bundles={keys.trust_domain: jwt_bundle_json(keys)}
            )
            while self._service.keys.sequence == keys.sequence:
                await asyncio.sleep(WATCH_INTERVAL)

    async def FetchJWTSVID(self, request: Any, context: Any) -> Any:
        entries = await self._entries(context)
        audience = [a for a in request.audience if a]
        if not audience:
            await _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if request.spiffe_id:
            entries = [e for e in entries if str(e.spiffe_id) == request.spiffe_id]
            if not entries:
                await _refuse(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the caller is not entitled to {request.spiffe_id}",
                )
        svids = []
        for entry in _unique(entries):
            token = self._jwt_svid(entry, tuple(audience))
            svids.append(workload_pb2.JWTSVID(spiffe_id=str(entry.spiffe_id), svid=token))
        return workload_pb2.JWTSVIDResponse(svids=svids)

    def _jwt_svid(self, entry: RegistrationEntry, audience: tuple[str, ...]) -> str:
        """A JWT-SVID for `entry` and `audience`: the cached one while it has more than half
        its lifetime left and the keys have not changed (as SPIRE's agent does), else a new
        one."""
        keys = self._service.keys
        ttl = self._service.jwt_ttl(entry)
        key = (str(entry.spiffe_id), audience, keys.sequence, ttl)
        now = time.time()
        cached = self._jwt_cache.get(key)
        if cached is not None and cached[1] - now > ttl / 2:
            return cached[0]
        svid = issue_jwt_svid(keys, entry.spiffe_id, audience, ttl, issuer=self._service.issuer)
        if len(self._jwt_cache) >= JWT_CACHE_SIZE:
            self._jwt_cache.clear()
        self._jwt_cache[key] = (svid.token, svid.expires_at)
        self._service.inventory.seen(str(entry.spiffe_id), "workload", entry.owner, ttl)
        return svid.token

    async def ValidateJWTSVID(self, request: Any, context: Any) -> Any:
        await self._entries(context)
        if not request.audience:
            await _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            await _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")
        try:
            validated = validate_jwt_svid(self._service.keys, request.svid, request.audience)
        except SvidError as exc:
            await _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        response = workload_pb2.ValidateJWTSVIDResponse(spiffe_id=str(validated.spiffe_id))
        response.claims.update(validated.claims)  # the pool's own Struct (workload_api_pb/)
        return response


def _unique(entries: list[RegistrationEntry]) -> list[RegistrationEntry]:
    """One SVID per SPIFFE ID, in a stable order (the first is the default SVID)."""
    seen: dict[SpiffeId, RegistrationEntry] = {}
    for entry in sorted(entries, key=lambda e: (str(e.spiffe_id), e.created_at)):
        seen.setdefault(entry.spiffe_id, entry)
    return list(seen.values())


class WorkloadApiServer:
    """The public socket, the relay and the gRPC server behind it, on the running event loop."""

    def __init__(self, service: IdentityService, socket_path: Path) -> None:
        self._service = service
        self.socket_path = socket_path
        self._peers: dict[str, PeerCred] = {}
        self._attestor = Attestor()
        self._private_dir: str | None = None
        self._grpc: Any = None
        self._relay: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    @property
    def connections(self) -> int:
        return len(self._peers)

    async def start(self) -> None:
        self._private_dir = tempfile.mkdtemp(prefix="trustplane-wl-")  # mode 0700
        inner = os.path.join(self._private_dir, "grpc.sock")
        self._inner = inner
        self._grpc = grpc.aio.server()
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self._service, self._peers, self._attestor), self._grpc
        )
        self._grpc.add_insecure_port(f"unix:{inner}")
        await self._grpc.start()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        loop = asyncio.get_running_loop()
        self._relay = await loop.create_unix_server(self._relay_for, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o777)  # anyone may connect; attestation decides
        log.info("SPIFFE Workload API on unix:%s", self.socket_path)

    async def stop(self) -> None:
        if self._relay is not None:
            self._relay.close()
        for task in list(self._tasks):
            task.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace=1)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self._private_dir:
            shutil.rmtree(self._private_dir, ignore_errors=True)

    def _relay_for(self) -> asyncio.Protocol:
        return _Workload(self)

    def _forget(self, name: str) -> None:
        self._peers.pop(f"unix-abstract:{name}", None)


class _Pipe(asyncio.Protocol):
    """One side of a relayed connection: what arrives is written to the other side, with
    back-pressure (a full peer pauses this side's reading)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _Pipe | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.other is None:
            self.early.append(data)  # a loop may deliver before the link, paused or not
            if sum(map(len, self.early)) > EARLY_LIMIT and self.transport is not None:
                self.transport.close()
        elif self.other.transport is not None:
            self.other.transport.write(data)

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()


def _link(a: _Pipe, b: _Pipe) -> None:
    """Join two sides and send what each received before they were joined (either may have:
    gRPC speaks first, and a loop may deliver before a paused transport takes effect)."""
    a.other, b.other = b, a
    for source, target in ((a, b), (b, a)):
        if target.transport is not None:
            for data in source.early:
                target.transport.write(data)
        source.early = []


class _Workload(_Pipe):
    """The workload's side: attests the peer, then opens the relayed connection to gRPC from a
    fresh abstract address that names the peer's credentials in `_peers`."""

    def __init__(self, server: WorkloadApiServer) -> None:
        super().__init__()
        self._server = server
        self._name = f"trustplane-wl-{os.getpid()}-{secrets.token_hex(12)}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()  # nothing is relayed before the peer is known
        try:
            peer = peer_credentials(self.transport.get_extra_info("socket"))
        except (AttestationError, OSError) as exc:
            log.info("Workload API connection refused: %s", exc)
            self.transport.close()
            return
        self._server._peers[f"unix-abstract:{self._name}"] = peer
        task = asyncio.ensure_future(self._connect())
        self._server._tasks.add(task)
        task.add_done_callback(self._server._tasks.discard)

    async def _connect(self) -> None:
        outbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            outbound.bind("\0" + self._name)
            outbound.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(outbound, self._server._inner)
            _, inner = await loop.create_unix_connection(_Pipe, sock=outbound)
        except (OSError, asyncio.CancelledError):
            outbound.close()
            self._server._forget(self._name)
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None:  # the workload left while we connected
            if inner.transport is not None:
                inner.transport.close()
            self._server._forget(self._name)
            return
        _link(self, inner)
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._forget(self._name)  # before the relayed connection releases the address
        super().connection_lost(exc)
