"""TLS serving certificates from the trust-domain CA, for trustplane's own HTTPS endpoint (the
admission webhook: Kubernetes calls webhooks over HTTPS only and checks the certificate against
the `caBundle` it was given).

Unlike an X.509-SVID this certificate names DNS names (and IP addresses), which is what a TLS
client checks; it carries no SPIFFE ID. It is a leaf (cA=false), for server authentication
only, short-lived and never valid past its CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustplane.identity.keys import KeySet
from trustplane.identity.svid import BACKDATE_SECONDS, SvidError

_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class ServingCertificate:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        """Certificate then key in one PEM file: replaced in one rename, so a reader never
        sees a certificate with another certificate's key."""
        key = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return self.certificate.public_bytes(serialization.Encoding.PEM) + key


def subject_alt_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names, and IP addresses as IP SANs (a client connecting by address checks those)."""
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def issue_serving_certificate(
    keys: KeySet, names: Sequence[str], ttl_seconds: int, *, now: float
) -> ServingCertificate:
    signer = keys.x509_signer
    if signer is None or signer.certificate is None:
        raise SvidError("no_active_ca", "the trust domain has no active CA: run identity init")
    if not names:
        raise SvidError("no_names", "a serving certificate needs at least one DNS name")
    ca = signer.certificate
    not_after = min(now + ttl_seconds, ca.not_valid_after_utc.timestamp())
    if not_after <= now:
        raise SvidError("ca_expired", f"CA {signer.kid} has expired")
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - BACKDATE_SECONDS, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(not_after, dt.UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(subject_alt_names(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key), critical=False
        )
        .sign(signer.private_key, hashes.SHA256())
    )
    return ServingCertificate(certificate, key)
