"""A workload for the mutual TLS test, run as its own process: it fetches its X.509-SVID over the
Workload API with py-spiffe and serves or dials TLS with the standard `ssl` module, authorizing
the other side by the SPIFFE ID in its certificate.

usage: mtls_peer.py serve SOCKET PORTFILE EXPECTED_PEER_ID | dial SOCKET PORT EXPECTED_PEER_ID
Exit 0: the exchange worked; 3: no SVID (the Workload API refused); 4: the TLS peer was wrong.
"""

from __future__ import annotations

import socket
import ssl
import sys
import tempfile
from pathlib import Path

import spiffe
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def context_for(socket_path: str, server: bool) -> ssl.SSLContext:
    try:
        with spiffe.WorkloadApiClient(socket_path=f"unix:{socket_path}") as client:
            svid = client.fetch_x509_svid()
            bundles = client.fetch_x509_bundles()
    except Exception as exc:
        print(f"no SVID: {exc}", file=sys.stderr)
        sys.exit(3)
    directory = Path(tempfile.mkdtemp())
    pem = serialization.Encoding.PEM
    (directory / "svid.pem").write_bytes(b"".join(c.public_bytes(pem) for c in svid.cert_chain))
    (directory / "key.pem").write_bytes(
        svid.private_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    (directory / "bundle.pem").write_bytes(
        b"".join(c.public_bytes(pem) for c in bundle.x509_authorities)
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(directory / "svid.pem", directory / "key.pem")
    context.load_verify_locations(directory / "bundle.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = False  # SPIFFE authorizes by the URI SAN, checked below
    return context


def peer_id(conn: ssl.SSLSocket) -> str:
    der = conn.getpeercert(binary_form=True)
    assert der is not None
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    (uri,) = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uri


def main() -> None:
    mode, socket_path, where, expected = sys.argv[1:5]
    context = context_for(socket_path, mode == "serve")
    if mode == "serve":
        listener = socket.create_server(("127.0.0.1", 0))
        Path(where).write_text(str(listener.getsockname()[1]))
        while True:
            raw, _ = listener.accept()
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    if peer_id(conn) != expected:
                        sys.exit(4)
                    conn.sendall(b"hello " + conn.recv(100))
                    return
            except ssl.SSLError as exc:
                print(f"refused a TLS client: {exc}", file=sys.stderr, flush=True)
    with (
        socket.create_connection(("127.0.0.1", int(where))) as raw,
        context.wrap_socket(raw) as conn,
    ):
        if peer_id(conn) != expected:
            sys.exit(4)
        conn.sendall(b"from dialer")
        print(conn.recv(100).decode())


if __name__ == "__main__":
    main()
