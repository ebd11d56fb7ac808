"""Which device a request comes from, for the trust plane's `device` signal.

Only what this PDP can vouch for: a client certificate (Envoy's `source.certificate`, or `Cert=`
/ `URI=` in `X-Forwarded-Client-Cert` from a trusted proxy) names the device by a URI SAN under
`trust.device_uri_prefix` or by its serial (`serial:N`, which a posture report may name); a
trusted proxy's `trust.device_header` names it by id. From any other peer the headers are
ignored. Nothing here fails a request: a device nobody vouches for is simply not named.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote

from cryptography import x509

from trustplane.enforcement.credentials import ProxyTrust, xfcc_certificate
from trustplane.trust.device import DEVICE_ID


class DeviceFinder:
    # Parsing a certificate costs tens of µs; the same few client certificates arrive again and
    # again, so the answer is remembered per certificate text (bounded: a flood only re-parses).
    CACHE_SIZE = 4096

    def __init__(self, proxies: ProxyTrust, header: str | None, uri_prefix: str | None) -> None:
        self._proxies = proxies
        self._header = header.lower() if header else None
        self._prefix = uri_prefix
        self._certificates: dict[str, str | None] = {}

    def find(
        self,
        headers: Mapping[str, str],
        peer: str | None,
        spiffe_id: str | None = None,
        peer_certificate: str | None = None,
    ) -> tuple[str | None, str | None]:
        """(device, who vouched: `mtls` or `proxy`), or (None, None)."""
        prefix = self._prefix
        if prefix and spiffe_id and spiffe_id.startswith(prefix):
            named = spiffe_id[len(prefix) :]
            if DEVICE_ID.match(named):
                return named, "mtls"
        trusted = self._proxies.trusts(peer)
        certificate = peer_certificate
        if certificate is None and trusted:
            xfcc = headers.get("x-forwarded-client-cert")
            certificate = xfcc_certificate(xfcc) if xfcc else None
        if certificate:
            if certificate in self._certificates:
                found = self._certificates[certificate]
            else:
                found = self._from_certificate(certificate)
                if len(self._certificates) >= self.CACHE_SIZE:
                    self._certificates.clear()
                self._certificates[certificate] = found
            if found is not None:
                return found, "mtls"
        if trusted and self._header:
            named = headers.get(self._header, "").strip()
            if named and DEVICE_ID.match(named):
                return named, "proxy"
        return None, None

    def _from_certificate(self, encoded_pem: str) -> str | None:
        try:
            cert = x509.load_pem_x509_certificate(unquote(encoded_pem).encode())
        except ValueError:
            return None  # the authenticator refuses a bad certificate; here it names nothing
        if self._prefix:
            try:
                names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
            except x509.ExtensionNotFound:
                uris = []
            for uri in uris:
                if uri.startswith(self._prefix) and DEVICE_ID.match(uri[len(self._prefix) :]):
                    return uri[len(self._prefix) :]
        return f"serial:{cert.serial_number}"
