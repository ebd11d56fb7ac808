"""The identity plane as one object: keys, registration entries, inventory and the settings that
shape SVIDs. The HTTP server, the Workload API and the CLI all go through it.

Its background pass (`tick`, every minute while serving) advances the key rotation schedule
and exports when each certificate the plane depends on expires
(`trustplane_certificate_expiry_timestamp_seconds{kind}`: the active CA and JWT key, the HTTPS
serving certificate, the soonest-expiring X.509-SVID held by a connected workload), so an
alert can fire before anything lapses. Time comes from `clock`, so a test can run days of
rotation in a moment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from sqlalchemy import Engine

from trustplane.config import IdentitySettings, Settings
from trustplane.errors import TrustplaneError
from trustplane.identity.entries import EntryIndex, EntryStore, RegistrationEntry
from trustplane.identity.inventory import DriftCheck, Inventory
from trustplane.identity.kek import Kek, load_kek
from trustplane.identity.keys import IdentityKeys, KeySet
from trustplane.telemetry.metrics import Metrics

log = logging.getLogger("trustplane.identity")

ROTATION_CHECK_SECONDS = 60.0


class IdentityNotInitialised(TrustplaneError):
    """The trust domain has no active keys yet."""


class IdentityService:
    def __init__(
        self,
        settings: IdentitySettings,
        engine: Engine,
        kek: Kek | None = None,
        inventory: Inventory | None = None,
        *,
        issuer: str,
        serving_certificate: Path | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`issuer`: the `iss` of JWT-SVIDs and the OIDC discovery issuer;
        `serving_certificate`: the HTTPS certificate whose expiry is exported with the CA's."""
        self.settings = settings
        self.trust_domain = settings.trust_domain
        self.clock = clock
        self.metrics = metrics
        self.key_store = IdentityKeys(
            engine,
            kek or load_kek(settings),
            settings.trust_domain,
            ca_ttl_seconds=settings.ca_ttl_seconds,
            svid_max_ttl_seconds=settings.svid_max_ttl_seconds,
            clock=clock,
        )
        # not_after of the X.509-SVID each open Workload API stream last pushed, by stream
        self.held_svids: dict[int, float] = {}
        self.drift = DriftCheck(
            settings.trust_domain,
            lambda: (
                self.entries.generation,
                (str(e.spiffe_id) for e in self.entries.snapshot()),
            ),
            [rule.spiffe_id for rule in settings.exchange_rules],
        )
        self._drift_reported: set[tuple[str, str]] = set()
        self.entry_store = EntryStore(engine, settings.trust_domain, settings.svid_max_ttl_seconds)
        self.entries = EntryIndex(self.entry_store)
        self.inventory = inventory or Inventory(engine)
        self.issuer = settings.issuer or issuer
        self._serving_certificate = serving_certificate
        self._keys: KeySet | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        engine: Engine,
        kek: Kek | None = None,
        inventory: Inventory | None = None,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> IdentityService:
        """The plane as the server and the CLI configure it: the `[identity]` section, with the
        server's own URL as the default issuer and its HTTPS certificate (if any)."""
        default_issuer = settings.cli.server_url or (
            f"http://{settings.server.host}:{settings.server.port}"
        )
        serving = None
        if settings.tls.from_ca:
            serving = settings.state_dir / "tls" / "serving.pem"
        elif settings.tls.cert_file is not None:
            serving = settings.tls.cert_file
        return cls(
            settings.identity,
            engine,
            kek,
            inventory,
            issuer=default_issuer,
            serving_certificate=serving,
            metrics=metrics,
            clock=clock,
        )

    @property
    def keys(self) -> KeySet:
        keys = self._keys
        if keys is None:
            raise IdentityNotInitialised("identity keys are not loaded")
        return keys

    def load(self) -> None:
        """Read keys and entries; refuses to serve a trust domain that has no active keys."""
        keys = self.key_store.load()
        if keys.x509_signer is None or keys.jwt_signer is None:
            raise IdentityNotInitialised(
                f"trust domain {self.trust_domain} has no active keys: run "
                "`trustplane identity init`"
            )
        self._keys = keys
        self.entries.refresh()
        self.export_expiry()

    def refresh_keys(self, _topic: str = "") -> None:
        keys = self.key_store.load()
        if keys.x509_signer is not None and keys.jwt_signer is not None:
            self._keys = keys

    def observe(self, spiffe_id: str) -> str | None:
        """A SPIFFE ID seen in use (at an enforcement point): its drift from the registration
        entries, if any, counted every time and logged once per identity."""
        kind = self.drift.kind(spiffe_id)
        if kind is None:
            return None
        if self.metrics is not None:
            self.metrics.identity_drift.labels(kind).inc()
        if (spiffe_id, kind) not in self._drift_reported:
            if len(self._drift_reported) >= 10_000:
                self._drift_reported.clear()  # bounded: a flood of made-up IDs logs again
            self._drift_reported.add((spiffe_id, kind))
            log.warning(
                "identity drift: %s is in use but %s",
                spiffe_id,
                "no registration entry or token-exchange rule names it"
                if kind == "unregistered"
                else f"it is not of trust domain {self.trust_domain}",
            )
        return kind

    def x509_ttl(self, entry: RegistrationEntry) -> int:
        return entry.x509_ttl_seconds or self.settings.x509_svid_ttl_seconds

    def jwt_ttl(self, entry: RegistrationEntry) -> int:
        return entry.jwt_ttl_seconds or self.settings.jwt_svid_ttl_seconds

    def start_background(self) -> None:
        """Flush the inventory and (when enabled) advance the rotation schedule."""
        self.inventory.start()
        self._thread = threading.Thread(target=self._run, name="identity", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.inventory.stop()

    def tick(self) -> list[str]:
        """One background pass: the rotation schedule (when enabled), then the expiry gauges.
        Returns the rotation steps taken."""
        steps: list[str] = []
        if self.settings.rotation:
            steps = self.key_store.advance()
            for step in steps:
                log.info("identity key rotation: %s", step)
            self.refresh_keys()
        self.export_expiry()
        return steps

    def expiries(self) -> dict[str, float]:
        """When each certificate or key the plane depends on expires (unix time), by kind."""
        found: dict[str, float] = {}
        keys = self._keys
        ca = keys.x509_signer.certificate if keys and keys.x509_signer else None
        if ca is not None:  # the certificate's own not_after (whole seconds), what TLS checks
            found["ca"] = ca.not_valid_after_utc.timestamp()
        if keys is not None and keys.jwt_signer is not None:
            found["jwt_key"] = keys.jwt_signer.record.not_after
        serving = self._serving_certificate_path()
        if serving is not None:
            try:
                certificate = x509.load_pem_x509_certificate(serving.read_bytes())
                found["serving"] = certificate.not_valid_after_utc.timestamp()
            except (OSError, ValueError):
                pass  # not issued yet, or being replaced: the next pass reads it
        held = list(self.held_svids.values())
        if held:
            found["x509_svid"] = min(held)
        return found

    def _serving_certificate_path(self) -> Path | None:
        return self._serving_certificate

    def export_expiry(self) -> None:
        if self.metrics is None:
            return
        for kind, not_after in self.expiries().items():
            self.metrics.certificate_expiry.labels(kind).set(not_after)
        # Every published key, not just the active ones: a prepared CA that expires before it
        # is activated, or a superseded JWT key still verifying, is worth an alert too.
        gauge = self.metrics.key_expiry
        gauge.clear()  # retired keys leave the gauge
        for record in self.key_store.records():
            gauge.labels(record.kind.value, record.kid, record.state.value).set(record.not_after)

    def _run(self) -> None:
        while not self._stop.wait(ROTATION_CHECK_SECONDS):
            try:
                self.tick()
            except Exception:
                log.exception("identity key rotation failed; will retry")
