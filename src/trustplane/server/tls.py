"""The certificate the HTTP API serves HTTPS with (the admission webhook needs HTTPS).

Today the operator supplies it (`tls_cert_file`, `tls_key_file`). This is the seam for the
trust-domain CA that `identity/` is gaining: once it can issue serving certificates, this
function is where one is issued (or loaded from state_dir) when no files are configured, and
the CA bundle is what a ValidatingWebhookConfiguration's `caBundle` carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trustplane.config import ConfigError, Settings


@dataclass(frozen=True, slots=True)
class ServingCertificate:
    cert_file: Path
    key_file: Path


def serving_certificate(settings: Settings) -> ServingCertificate | None:
    """The configured certificate and key, or None to serve plain HTTP."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    for name, path in (
        ("tls_cert_file", settings.tls_cert_file),
        ("tls_key_file", settings.tls_key_file),
    ):
        if not path.is_file():
            raise ConfigError(f"{name}: {path} is not a readable file")
    return ServingCertificate(settings.tls_cert_file, settings.tls_key_file)
