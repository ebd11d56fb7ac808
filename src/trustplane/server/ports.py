"""The ports a serving node listens on, claimed before anything starts.

The ext_authz gRPC servers (grpcio, and the compiled front) bind with SO_REUSEPORT so that
every worker process of one server can listen on the same port. Left at that, a second server
started with the same `grpc.port` joins the group and the kernel splits Envoy's calls between
two servers with different bundles and ledgers. So the serving parent claims each port first:

- the HTTP port is bound here (SO_REUSEADDR, as any server does, no SO_REUSEPORT) and the
  socket handed to uvicorn, which listens on it once the app has started; a port someone else
  listens on fails this bind;
- the gRPC port is bound here as a *claim*: an exclusive bind (SO_REUSEADDR so connections of a
  previous run still in TIME_WAIT do not block a restart, no SO_REUSEPORT, so it fails against
  any socket already on the port), then switched to SO_REUSEPORT without SO_REUSEADDR and kept
  bound, never listening. The kernel then lets this server's own workers (SO_REUSEPORT, same
  user) bind beside it, and refuses any other server's exclusive bind for as long as this
  server runs, including while it is still starting. A socket that never listens is given no
  connections.

A port that cannot be claimed is a `PortError`: one line naming the port and the setting.
Port 0 (any free port) needs no claim.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from trustplane.config import ConfigError, Settings


class PortError(ConfigError):
    """A configured port is held by another process (or this host has no such address)."""


@dataclass
class ClaimedPorts:
    """The HTTP socket (bound, not yet listening) and the gRPC claim, held while serving."""

    http: socket.socket
    grpc_claim: socket.socket | None

    def close(self) -> None:
        self.http.close()
        if self.grpc_claim is not None:
            self.grpc_claim.close()


def claim_ports(settings: Settings) -> ClaimedPorts:
    """Bind the HTTP socket and claim the gRPC port, or refuse naming the one that is held."""
    http = _bind(settings.server.host, settings.server.port, "server.port")
    grpc_claim = None
    if settings.grpc.enabled and settings.grpc.port != 0:
        try:
            grpc_claim = _bind(settings.server.host, settings.grpc.port, "grpc.port")
        except PortError:
            http.close()
            raise
        # Now ours alone: let only SO_REUSEPORT sockets of this user (our workers) join.
        grpc_claim.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        grpc_claim.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return ClaimedPorts(http, grpc_claim)


def _bind(host: str, port: int, setting: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as exc:  # a host name that does not resolve
        sock.close()
        raise PortError(f"cannot bind {host}:{port} ({setting}): {exc}") from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortError(
                f"port {port} ({setting}) on {host} is already in use by another process "
                f"(another trustplane server?): stop it or choose another {setting}"
            ) from None
        raise PortError(f"cannot bind {host}:{port} ({setting}): {exc.strerror}") from None
    sock.set_inheritable(True)  # uvicorn hands it to its worker processes
    return sock
