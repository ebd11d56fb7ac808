"""The identity plane as one object: keys, registration entries, inventory and the settings that
shape SVIDs. The HTTP server, the Workload API and the CLI all go through it."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from trustplane.config import Settings
from trustplane.identity.entries import EntryIndex, EntryStore, RegistrationEntry
from trustplane.identity.inventory import Inventory
from trustplane.identity.kek import Kek, load_kek
from trustplane.identity.keys import IdentityKeys, KeySet

log = logging.getLogger("trustplane.identity")

ROTATION_CHECK_SECONDS = 60.0


class IdentityNotInitialised(Exception):
    """The trust domain has no active keys yet."""


class IdentityService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        kek: Kek | None = None,
        inventory: Inventory | None = None,
    ) -> None:
        self.settings = settings
        self.trust_domain = settings.trust_domain
        self.key_store = IdentityKeys(
            engine,
            kek or load_kek(settings),
            settings.trust_domain,
            ca_ttl_seconds=settings.ca_ttl_seconds,
            svid_max_ttl_seconds=settings.svid_max_ttl_seconds,
        )
        self.entry_store = EntryStore(engine, settings.trust_domain, settings.svid_max_ttl_seconds)
        self.entries = EntryIndex(self.entry_store)
        self.inventory = inventory or Inventory(engine)
        self.issuer = settings.identity_issuer or (
            settings.server_url or f"http://{settings.host}:{settings.port}"
        )
        self._keys: KeySet | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def refresh_keys(self, _topic: str = "") -> None:
        keys = self.key_store.load()
        if keys.x509_signer is not None and keys.jwt_signer is not None:
            self._keys = keys

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

    def _run(self) -> None:
        while not self._stop.wait(ROTATION_CHECK_SECONDS):
            if not self.settings.identity_rotation:
                continue
            try:
                for step in self.key_store.advance():
                    log.info("identity key rotation: %s", step)
                self.refresh_keys()
            except Exception:
                log.exception("identity key rotation failed; will retry")
