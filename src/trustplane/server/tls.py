"""The certificate the HTTP API serves HTTPS with (the admission webhook needs HTTPS).

Two sources:

- supplied files (`tls.cert_file`, `tls.key_file`), served as they are;
- the trust-domain CA (`tls.from_ca`): the server issues itself a short-lived certificate for
  `tls.dns_names` (identity/serving.py) into `state_dir/tls/serving.pem` (certificate and key
  in one 0600 file, replaced by a rename, so no reader ever pairs one certificate with another's
  key). Every serving process (each worker too) runs a thread that looks every minute: at half
  the certificate's life the first process to look issues a new one (the others then find it
  fresh) and each loads it into its live `SSLContext`, so new connections get the new
  certificate without a restart while open ones keep theirs. Its lifetime never exceeds
  `identity.svid_max_ttl_seconds`, so it expires before the CA that signed it can be retired
  from the bundle. Clients trust it through the CA bundle: `trustplane identity bundle --pem`, the
  `caBundle` of a ValidatingWebhookConfiguration.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from trustplane.config import ConfigError, Settings
from trustplane.identity.kek import KekError, load_kek
from trustplane.identity.keys import IdentityKeys, KeySet, published_ca_certificates
from trustplane.identity.serving import issue_serving_certificate, subject_alt_names
from trustplane.identity.svid import SvidError
from trustplane.store.database import create_store_engine

log = logging.getLogger("trustplane.tls")

CHECK_SECONDS = 60.0
ContextFactory = Callable[[Any, Callable[[], ssl.SSLContext]], ssl.SSLContext]


@dataclass(frozen=True, slots=True)
class ServingCertificate:
    cert_file: Path
    key_file: Path
    # uvicorn's ssl_context_factory: builds each process's SSLContext and keeps it renewed.
    context_factory: ContextFactory | None = None


def serving_certificate(settings: Settings) -> ServingCertificate | None:
    """The certificate to serve, or None to serve plain HTTP. With `tls.from_ca`, one is
    issued now if there is none fit to serve, so a missing identity plane stops the server
    before it starts, with the reason."""
    if settings.tls.from_ca:
        issuer = CaServingCertificate(settings)
        issuer.renew_if_due()
        return ServingCertificate(issuer.path, issuer.path, CaContextFactory(settings))
    if settings.tls.cert_file is None or settings.tls.key_file is None:
        return None
    for name, path in (
        ("tls.cert_file", settings.tls.cert_file),
        ("tls.key_file", settings.tls.key_file),
    ):
        if not path.is_file():
            raise ConfigError(f"{name}: {path} is not a readable file")
    return ServingCertificate(settings.tls.cert_file, settings.tls.key_file)


class CaServingCertificate:
    """The CA-issued serving certificate file: when it is due, and issuing the next one."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.path = settings.state_dir / "tls" / "serving.pem"
        self._names = set(subject_alt_names(settings.tls.dns_names))
        self._ttl = min(settings.tls.cert_ttl_seconds, settings.identity.svid_max_ttl_seconds)

    def due(self, now: float) -> str | None:
        """Why a new certificate is needed now, or None while the current one is fit."""
        try:
            certificate = x509.load_pem_x509_certificate(self.path.read_bytes())
        except FileNotFoundError:
            return "there is none yet"
        except ValueError:
            return f"{self.path} is not a PEM certificate"
        start = certificate.not_valid_before_utc.timestamp()
        end = certificate.not_valid_after_utc.timestamp()
        if now >= start + (end - start) / 2:
            return "half its lifetime has passed"
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return "it names no hosts"
        if set(san.value) != self._names:
            return "tls.dns_names changed"
        if not self._issuer_published(certificate):
            return "its CA is no longer published (retired or compromised)"
        return None

    def _issuer_published(self, certificate: x509.Certificate) -> bool:
        """Whether a CA still in the bundles signed `certificate`: after an emergency
        rotation the certificate a compromised CA signed is replaced at the next look, not at
        half its life."""
        engine = create_store_engine(self._settings.effective_database_url)
        try:
            published = published_ca_certificates(engine)
        finally:
            engine.dispose()
        for pem in published:
            try:
                certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(pem.encode()))
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False

    def renew_if_due(self, now: float | None = None) -> str | None:
        """Issue and write a new certificate when one is due; returns why it did, or None."""
        now = time.time() if now is None else now
        reason = self.due(now)
        if reason is None:
            return None
        try:
            issued = issue_serving_certificate(
                self._keys(), self._settings.tls.dns_names, self._ttl, now=now
            )
        except SvidError as exc:
            raise ConfigError(f"tls.from_ca: {exc.detail}") from None
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(issued.pem())
        os.replace(temporary, self.path)
        log.info(
            "serving certificate for %s issued by the trust-domain CA (%s), valid until %s",
            ", ".join(self._settings.tls.dns_names),
            reason,
            issued.certificate.not_valid_after_utc.isoformat(),
        )
        return reason

    def _keys(self) -> KeySet:
        settings = self._settings
        if settings.identity.kek is None and settings.identity.kek_file is None:
            raise ConfigError(
                "tls.from_ca needs the identity plane: set identity.kek_file (or "
                "TRUSTPLANE_IDENTITY__KEK) and run `trustplane init`"
            )
        engine = create_store_engine(settings.effective_database_url)
        try:
            return IdentityKeys(
                engine, load_kek(settings.identity), settings.identity.trust_domain
            ).load()
        except KekError as exc:
            raise ConfigError(f"tls.from_ca: {exc}") from None
        finally:
            engine.dispose()


class CertificateRenewer:
    """Keeps one process's SSLContext serving the current certificate file."""

    def __init__(self, certificate: CaServingCertificate, context: ssl.SSLContext) -> None:
        self._certificate = certificate
        self._context = context
        self._loaded = certificate.path.read_bytes()
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="tls-renewer", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def maintain(self, now: float | None = None) -> bool:
        """Renew the file when due, and load it if it changed; True when it loaded one."""
        self._certificate.renew_if_due(now)
        current = self._certificate.path.read_bytes()
        if current == self._loaded:
            return False
        path = self._certificate.path
        self._context.load_cert_chain(certfile=path, keyfile=path)
        self._loaded = current
        log.info("serving certificate reloaded from %s", path)
        return True

    def _run(self) -> None:
        while not self._stop.wait(CHECK_SECONDS):
            try:
                self.maintain()
            except Exception:  # keep serving the current certificate; try again later
                log.exception("serving certificate renewal failed; will retry")


@dataclass(frozen=True)
class CaContextFactory:
    """uvicorn's `ssl_context_factory`: called in every serving process (pickled to each
    worker), it builds the context from the certificate file and starts that process's
    renewer."""

    settings: Settings

    def __call__(self, config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = default()
        CertificateRenewer(CaServingCertificate(self.settings), context).start()
        return context
