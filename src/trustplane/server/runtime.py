"""Composition: one object that owns the store, ledger, recorder, metrics and active bundle.

The server and the CLI build a Runtime from Settings; nothing below it reads configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select

from trustplane.config import Durability, LedgerAppender, PolicySettings, Settings
from trustplane.decision.epoch import CacheEpoch
from trustplane.decision.loader import LoadOptions
from trustplane.decision.manager import BundleManager, follow_or_log
from trustplane.decision.point import PolicyDecisionPoint
from trustplane.decision.risk_cache import CacheRules, RiskCache
from trustplane.decision.signing import load_trusted_key
from trustplane.enforcement.credentials import Credential
from trustplane.errors import TrustplaneError
from trustplane.governance.catalog import BUNDLE_FILES
from trustplane.governance.outbox import WebhookFormat
from trustplane.governance.records import TOPIC as GOVERNANCE_TOPIC
from trustplane.governance.records import Actor
from trustplane.governance.service import Governance
from trustplane.identity.entries import TOPIC as ENTRIES_TOPIC
from trustplane.identity.inventory import Inventory
from trustplane.identity.kek import load_kek
from trustplane.identity.keys import TOPIC as KEYS_TOPIC
from trustplane.identity.service import IdentityService
from trustplane.posture.image_attestations import TOPIC as ATTESTATIONS_TOPIC
from trustplane.posture.image_attestations import AttestationIndex, AttestationStore
from trustplane.recovery.revocation import TOPIC as REVOCATIONS_TOPIC
from trustplane.recovery.revocation import RevocationKind, RevocationList, RevocationStore
from trustplane.recovery.service import Caller, RevocationService
from trustplane.rollout.drift import DriftWatch
from trustplane.rollout.policy import BUNDLE_FILES as ROLLOUT_FILES
from trustplane.rollout.rollback import RollbackGuard
from trustplane.store.database import create_store_engine, migrate
from trustplane.store.feed import ChangeFeed
from trustplane.store.policy_revisions import BUNDLES_TOPIC, BundleStore
from trustplane.store.tables import admin_tokens
from trustplane.telemetry.appender import AppenderProcess
from trustplane.telemetry.checkpoint import NoteSigner, NoteVerifier
from trustplane.telemetry.deny_spike import DenySpikeDetector
from trustplane.telemetry.ledger import Ledger
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.metrics import Metrics, multiprocess_dir
from trustplane.telemetry.recorder import DecisionRecorder
from trustplane.telemetry.tracing import Tracing
from trustplane.trust.behaviour import BehaviourState
from trustplane.trust.behaviour_store import BehaviourWriter
from trustplane.trust.device import TOPIC as DEVICES_TOPIC
from trustplane.trust.device import DeviceIndex
from trustplane.trust.device_store import all_postures
from trustplane.trust.epoch import TrustEpoch
from trustplane.trust.policy import BUNDLE_FILES as TRUST_FILES
from trustplane.trust.service import WorkloadLookups, assessor_from_settings
from trustplane.trust.travel_history import TOPIC as TRAVEL_TOPIC
from trustplane.trust.travel_history import TravelHistory
from trustplane.trust.workload import selector_digests

log = logging.getLogger("trustplane")


class NotInitialisedError(TrustplaneError):
    """`trustplane init` has not been run for this state directory."""


@dataclass(frozen=True)
class InitResult:
    state_dir: Path
    database_url: str
    admin_token: str | None  # only when a new token was created
    verifier_key: str
    created_key: bool
    identity_keys_created: tuple[str, ...] = ()  # "x509 KID", "jwt KID" when a KEK is set


def initialise(settings: Settings, *, new_token: bool = False) -> InitResult:
    """Create the state directory, ledger signing key, schema and a bootstrap admin token.
    Idempotent: existing keys and tokens are kept unless `new_token` asks for another.
    A KEK that would be refused is refused before anything is created."""
    if settings.identity.configured:
        load_kek(settings.identity)
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    created_key = False
    if not settings.ledger_key_file.exists():
        signer = NoteSigner.generate(settings.ledger.origin)
        _write_secret(settings.ledger_key_file, signer.signer_key() + "\n")
        (state / "ledger.pub").write_text(signer.verifier_key() + "\n")
        created_key = True
    signer = load_signer(settings)
    engine = create_store_engine(settings.effective_database_url)
    try:
        migrate(engine)
        token: str | None = None
        with engine.connect() as connection:
            has_token = connection.execute(select(admin_tokens.c.id).limit(1)).first()
        if new_token or not has_token or not settings.admin_token_file.exists():
            token = create_admin_token(engine, label="bootstrap")
            _write_secret(settings.admin_token_file, token + "\n")
        identity_created: tuple[str, ...] = ()
        if settings.identity.configured:
            created = IdentityService.from_settings(settings, engine).key_store.initialise()
            identity_created = tuple(f"{r.kind.value} {r.kid}" for r in created)
    finally:
        engine.dispose()
    return InitResult(
        state,
        settings.effective_database_url,
        token,
        signer.verifier_key(),
        created_key,
        identity_created,
    )


def create_admin_token(engine: Engine, label: str) -> str:
    token = "tpa_" + secrets.token_urlsafe(32)
    with engine.begin() as connection:
        connection.execute(
            insert(admin_tokens).values(
                token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                label=label,
                created_at=time.time(),
            )
        )
    return token


def load_options(settings: PolicySettings) -> LoadOptions:
    """How bundles load under the `[policy]` settings."""
    return LoadOptions(
        trusted_keys=[load_trusted_key(p) for p in settings.trusted_key_files],
        expiry_warning_days=settings.expiry_warning_days,
        decision_cache_size=settings.decision_cache_size,
        # The evaluator cuts at the longest reuse; the decision point applies each request's.
        decision_ttl_seconds=cache_rules(settings).longest,
        extra_files=BUNDLE_FILES + TRUST_FILES + ROLLOUT_FILES,
    )


def cache_rules(settings: PolicySettings) -> CacheRules:
    """The risk-aware cache's rules under the `[policy]` settings (decision/risk_cache.py)."""
    return CacheRules(
        decision_ttl_seconds=settings.decision_ttl_seconds,
        read_ttl_seconds=dict(settings.read_ttl_seconds),
        read_action_group=settings.read_action_group,
        live_risk_levels=frozenset(settings.live_risk_levels),
        volatile_signals=frozenset(settings.volatile_signals),
    )


def load_signer(settings: Settings) -> NoteSigner:
    try:
        return NoteSigner.from_signer_key(settings.ledger_key_file.read_text().strip())
    except FileNotFoundError:
        raise NotInitialisedError(
            f"no ledger key at {settings.ledger_key_file}: run `trustplane init` first"
        ) from None


def load_verifier(settings: Settings, key: str | None = None) -> list[NoteVerifier]:
    """The checkpoint verifiers: an explicit key, else every key in state_dir/ledger.pub (the
    current key first, then the keys `rotate_ledger_key` replaced, so checkpoints they signed
    keep verifying)."""
    if key is None:
        keys = verifier_keys(settings)
        if not keys:
            path = settings.state_dir / "ledger.pub"
            raise NotInitialisedError(
                f"no ledger public key at {path}: run `trustplane init` first (or pass --key)"
            )
        return [NoteVerifier.from_verifier_key(k) for k in keys]
    return [NoteVerifier.from_verifier_key(key)]


def verifier_keys(settings: Settings) -> list[str]:
    """The verifier keys in state_dir/ledger.pub, current first; empty when there is none."""
    try:
        return (settings.state_dir / "ledger.pub").read_text().split()
    except FileNotFoundError:
        return []


def rotate_ledger_key(settings: Settings) -> tuple[str, str]:
    """Replace the checkpoint signing key (a suspected compromise, or routine hygiene); returns
    (old, new) verifier keys. The old verifier key stays in ledger.pub after the new one, so
    every checkpoint it signed still verifies; serving processes sign with the new key from
    their next start. ledger.pub is written before the private key, so a crash in between
    leaves a key file whose checkpoints still verify."""
    old = load_signer(settings)
    new = NoteSigner.generate(old.name)
    public = settings.state_dir / "ledger.pub"
    try:
        previous = public.read_text().split()
    except FileNotFoundError:
        previous = [old.verifier_key()]
    if old.verifier_key() not in previous:
        previous.insert(0, old.verifier_key())
    _replace_file(public, "".join(k + "\n" for k in [new.verifier_key(), *previous]), 0o644)
    _replace_file(settings.ledger_key_file, new.signer_key() + "\n", 0o600)
    return old.verifier_key(), new.verifier_key()


def _replace_file(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` whole or not at all (a temporary file renamed over it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


class Runtime:
    """Everything a serving node holds. `start()` activates a bundle and starts the writer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(
            multiprocess=multiprocess_dir(settings.state_dir)
            if settings.server.workers > 1
            else None
        )
        # None when tracing is off: OpenTelemetry is then never imported.
        self.tracing: Tracing | None = None
        if settings.tracing.enabled:
            self.tracing = Tracing(settings.tracing)
        self.engine = create_store_engine(
            settings.effective_database_url,
            sync_commit=settings.ledger.durability is Durability.SYNC,
        )
        migrate(self.engine)
        signer = load_signer(settings)
        self.ledger = Ledger(self.engine, signer, settings.ledger.origin)
        self.masker = Masker(settings.ledger.mask)
        sink = None
        if settings.ledger.appender is LedgerAppender.PROCESS:
            sink = AppenderProcess(
                self.ledger, settings.effective_database_url, signer.signer_key()
            )
        self.recorder = DecisionRecorder.from_settings(
            self.ledger,
            self.masker,
            self.metrics,
            settings.ledger,
            settings.state_dir / "ledger-spool",
            sink,
        )
        self._appender = sink
        governance = settings.governance
        self.deny_spike = DenySpikeDetector(
            self.metrics.deny_spike,
            threshold=governance.deny_spike_threshold,
            window_seconds=governance.deny_spike_window_seconds,
            min_decisions=governance.deny_spike_decisions,
            jump_ratio=governance.deny_jump_ratio,
            jump_min_denies=governance.deny_jump_min_denies,
            on_jump=lambda jump: self.rollback_guard.on_jump(jump),
        )
        self.bundles = BundleManager(
            BundleStore(self.engine),
            load_options(settings.policy),
            self.metrics,
            bundle_dir=settings.policy.bundle_dir,
            on_activate=self._activated,
        )
        self.rollback_guard = RollbackGuard(
            self.bundles,
            self.metrics.deny_jumps,
            lambda entry: self.recorder.record_entry_blocking(entry, wait=True),
            auto_rollback=governance.auto_rollback,
            outbox_engine=self.engine if governance.webhook_url else None,
        )
        self.drift: DriftWatch | None = None
        if settings.policy.drift_check_seconds and settings.policy.bundle_dir is not None:
            self.drift = DriftWatch(
                self.engine,
                self.bundles,
                self.metrics.policy_drift.set,
                lambda entry: self.recorder.record_entry_blocking(entry, wait=True),
                settings.policy.drift_check_seconds,
            )
        self.feed = ChangeFeed(
            self.engine,
            poll_interval=settings.store.change_poll_ms / 1000,
            on_health=self._feed_health,
        )
        self.feed.subscribe(BUNDLES_TOPIC, lambda _topic: follow_or_log(self.bundles))
        self.revocation_store = RevocationStore(self.engine)
        self.revocations = RevocationList(self.revocation_store)
        self.feed.subscribe(REVOCATIONS_TOPIC, self.revocations.refresh)
        self.governance = Governance(
            self.engine,
            lambda: None if self.bundles.active is None else self.bundles.active.bundle,
            self.metrics,
            webhook_url=settings.governance.webhook_url,
            webhook_format=WebhookFormat(settings.governance.webhook_format),
            interval=settings.governance.interval_ms / 1000,
        )
        self.feed.subscribe(GOVERNANCE_TOPIC, self.governance.state.refresh)
        # What cached answers rest on: when any part moves, caches drop what they hold.
        self.trust_epoch = TrustEpoch()
        self.cache_epoch = CacheEpoch(
            {
                "revocations": lambda: self.revocations.epoch,
                "governance": lambda: self.governance.state.version,
                "bundles": lambda: self.bundles.activation_id,
                "trust": lambda: self.trust_epoch.value,
            }
        )
        for topic in (REVOCATIONS_TOPIC, GOVERNANCE_TOPIC, BUNDLES_TOPIC):
            self.feed.subscribe(topic, lambda _topic: self.cache_epoch.changed())
        self.trust_epoch.on_change(self.cache_epoch.changed)
        # Each principal's sightings for the travel signals: in memory, written behind, and
        # merged from the other replicas' writes through the feed (trust/travel_history.py).
        self.travel = TravelHistory(self.engine)
        self.feed.subscribe(TRAVEL_TOPIC, self.travel.refresh)
        self._token_hashes: set[str] = set()
        self._ci_issuers = {rule.issuer for rule in settings.identity.exchange_rules}
        self.inventory = Inventory(self.engine)  # identities seen, with or without the plane
        self.identity: IdentityService | None = None
        if settings.identity.configured:
            self.identity = IdentityService.from_settings(
                settings, self.engine, inventory=self.inventory, metrics=self.metrics
            )
            self.feed.subscribe(KEYS_TOPIC, self.identity.refresh_keys)
            self.feed.subscribe(ENTRIES_TOPIC, self.identity.entries.refresh)
        # Image attestations are countersigned with the trust domain's keys: with the plane.
        self.attestation_store = AttestationStore(self.engine)
        self.attestations: AttestationIndex | None = None
        if self.identity is not None:
            self.attestations = AttestationIndex(
                self.attestation_store, self.identity.key_store.jwt_verification_keys
            )
            self.feed.subscribe(ATTESTATIONS_TOPIC, self.attestations.refresh)
            self.feed.subscribe(KEYS_TOPIC, self.attestations.refresh)  # a key seen late
        # Trust state the decision path reads from memory: device reports (reloaded by the
        # feed) and each principal's behaviour history (written behind, read back).
        self.devices = DeviceIndex(lambda: all_postures(self.engine))
        self.feed.subscribe(DEVICES_TOPIC, self.devices.refresh)
        # A device's posture changing ends cached answers (the index counts its reloads that
        # changed something: a per-process number, unlike the store versions beside it).
        self.devices.on_change(lambda epoch: self.trust_epoch.advance("devices", epoch))
        self.behaviour = BehaviourState()
        self.behaviour_writer = BehaviourWriter(
            self.engine,
            self.behaviour,
            interval=settings.trust.behaviour_interval_ms / 1000,
            retention_days=settings.trust.behaviour_retention_days,
        )
        self._entry_digests: tuple[int, dict[str, tuple[str, ...]]] = (-1, {})
        # Every kind of revocation, its expiry and its lifting: one service (recovery/).
        self.revocation_service = RevocationService(
            self.revocation_store,
            self.revocations,
            self._revoke_governed,
            known=self.known_principal,
            record=lambda entry: self.recorder.record_entry_blocking(entry, wait=True),
            interval=settings.governance.interval_ms / 1000,
        )

    def _feed_health(self, healthy: bool, lag_seconds: float) -> None:
        self.metrics.change_feed_up.set(1 if healthy else 0)
        self.metrics.change_feed_lag_seconds.set(lag_seconds)

    def decision_point(self) -> PolicyDecisionPoint:
        """The decision path over this runtime's bundles, revocations, grants and ledger."""
        trust = assessor_from_settings(
            self.settings,
            self.engine,
            history=self.travel,
            devices=self.devices,
            behaviour=self.behaviour,
            workload=self.workload_lookups(),
        )
        return PolicyDecisionPoint(
            bundles=self.bundles,
            revocations=self.revocations,
            elevation=self.governance.state.elevation,
            recorder=self.recorder,
            metrics=self.metrics,
            deny_spike=self.deny_spike,
            trust=trust,
            prepare_trust=trust.prepare,
            cache=RiskCache(cache_rules(self.settings.policy)),
            epoch=self.cache_epoch,
            tracing=self.tracing,
        )

    def _activated(self, loaded: Any) -> None:
        self.deny_spike.activated(loaded.bundle.revision)
        cache_epoch = getattr(self, "cache_epoch", None)
        if cache_epoch is not None:  # not during construction
            cache_epoch.changed()

    def workload_lookups(self) -> WorkloadLookups | None:
        """What the `workload_integrity` signal asks the identity and posture planes."""
        identity = self.identity
        if identity is None:
            return None
        attestations = self.attestations

        def digests(spiffe_id: str) -> tuple[str, ...]:
            generation, index = self._entry_digests
            if generation != identity.entries.generation:
                generation = identity.entries.generation
                found: dict[str, list[str]] = {}
                for entry in identity.entries.snapshot():
                    found.setdefault(str(entry.spiffe_id), []).extend(
                        selector_digests(entry.selectors)
                    )
                index = {k: tuple(dict.fromkeys(v)) for k, v in found.items()}
                self._entry_digests = (generation, index)
            return index.get(spiffe_id, ())

        def attested(digest: str) -> tuple[str, ...]:
            if attestations is None:
                return ()
            return tuple(a.signer for a in attestations.lookup(digest))

        return identity.drift.kind, digests, attested

    def start(self) -> None:
        """Activate the bundle (a worker serves what its supervisor activated) and start the
        ledger writer."""
        if self.settings.server.switch_interval_us:
            sys.setswitchinterval(self.settings.server.switch_interval_us / 1_000_000)
        self.bundles.start(follow_store=self.settings.server.workers > 1)
        self.feed.start()
        self.travel.start(time.time())  # sightings written from now on are merged
        self.revocations.refresh()  # after the feed's baseline: a later revocation is heard
        self.revocation_service.start()  # records expiries as they fall due
        self.governance.start()  # grants and exceptions in memory, then housekeeping
        self.devices.refresh()
        self.behaviour_writer.load()
        self.behaviour_writer.start()
        if self.identity is not None:
            self.identity.load()  # refuses to serve a trust domain without keys
            if self.attestations is not None:
                self.attestations.refresh()
            self.identity.start_background()
        else:
            self.inventory.start()
        if self._appender is not None:
            self._appender.start()  # fail here, before serving, if it cannot run
        self.recorder.start()
        if self.drift is not None:
            self.drift.start()

    def close(self) -> None:
        if self.drift is not None:
            self.drift.stop()
        if self.identity is not None:
            self.identity.stop()
        else:
            self.inventory.stop()
        self.feed.stop()
        self.behaviour_writer.stop()
        self.travel.stop()  # the sightings still queued are written
        self.revocation_service.stop()
        self.governance.stop()
        self.recorder.stop()
        if self.tracing is not None:
            self.tracing.shutdown()
        self.engine.dispose()

    def _revoke_governed(
        self, kind: RevocationKind, target: str, reason: str, caller: Caller
    ) -> tuple[float, bool, dict[str, Any]]:
        actor = Actor(caller.name, caller.principal, caller.bootstrap)
        return self.governance.revoke(kind.value, target, reason, actor)

    def known_principal(self, principal: str) -> bool:
        """Whether an entity of the active bundle or an identity of the inventory has this
        name (entity text such as User::"alice"): revoking a name nobody has is a typo."""
        kind, _, quoted = principal.partition("::")
        name = quoted[1:-1].replace('\\"', '"')
        active = self.bundles.active
        if active is not None:
            for entity in active.bundle.entities:
                uid = entity.get("uid") if isinstance(entity, dict) else None
                if isinstance(uid, dict) and "__entity" in uid:
                    uid = uid["__entity"]
                if isinstance(uid, dict) and uid.get("type") == kind and uid.get("id") == name:
                    return True
        return self.inventory.knows(name)

    def seen(self, credential: Credential) -> None:
        """An authenticated caller at an enforcement point, for the identity inventory."""
        if credential.workload:
            kind, principal = "workload", credential.subject
        else:
            kind = "ci" if credential.issuer in self._ci_issuers else "human"
            principal = f"{credential.issuer}#{credential.subject}"
        self.inventory.seen(principal, kind, "", credential.lifetime_seconds)
        if self.identity is not None and credential.subject.startswith("spiffe://"):
            self.identity.observe(credential.subject)  # drift from the registration entries

    def check_admin_token(self, token: str) -> bool:
        digest = hashlib.sha256(token.encode()).hexdigest()
        if any(hmac.compare_digest(digest, known) for known in self._token_hashes):
            return True
        with self.engine.connect() as connection:
            found = connection.execute(
                select(admin_tokens.c.id).where(admin_tokens.c.token_sha256 == digest)
            ).first()
        if found:
            self._token_hashes.add(digest)
        return found is not None
