"""Which bundle is active: load, activate atomically, keep every revision, roll back.

The active evaluator is swapped with one reference assignment, so a request sees either the old
bundle or the new one, never a mix. A bundle that fails any step never replaces the active one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from trustplane.decision.loader import LoadedBundle, LoadOptions, load_bundle
from trustplane.decision.policy_bundle import BundleError, BundleProblem, BundleSource
from trustplane.store.policy_revisions import Activation, BundleStore
from trustplane.telemetry.metrics import Metrics

log = logging.getLogger("trustplane.bundle")


class ActivationError(Exception):
    """An activation request cannot be honoured (unknown revision, nothing to roll back to)."""


class BundleManager:
    def __init__(
        self,
        store: BundleStore,
        options: LoadOptions,
        metrics: Metrics,
        bundle_dir: Path | None = None,
        on_activate: Callable[[LoadedBundle], None] | None = None,
    ) -> None:
        self._store = store
        self._options = options
        self._metrics = metrics
        self.bundle_dir = bundle_dir
        self._on_activate = on_activate
        self._lock = threading.Lock()
        self.active: LoadedBundle | None = None
        self.last_error: BundleError | None = None
        self._seen_activation: int | None = None

    def start(self, *, follow_store: bool = False) -> None:
        """Serve the directory's bundle; if it is broken, the last one activated before.
        With `follow_store`, serve the store's newest activation instead (a worker whose
        supervisor activates the directory's bundle, so a restarted worker keeps serving a
        rollback made since)."""
        if follow_store:
            self.follow()
            return
        refused: BundleError | None = None
        if self.bundle_dir is not None:
            try:
                self.reload(reason="startup")
                return
            except BundleError as exc:
                refused = exc
                log.error(
                    "bundle in %s refused:\n  %s",
                    self.bundle_dir,
                    "\n  ".join(str(p) for p in exc.problems),
                )
        history = self._store.history(limit=1)
        if history:
            try:
                self.activate_revision(history[0].revision, reason="restore", actor="startup")
                log.warning("serving last activated revision %s", history[0].revision[:12])
            except BundleError as exc:
                log.error("stored revision %s refused: %s", history[0].revision[:12], exc)
        if refused is not None:
            self.last_error = refused  # still show why the directory's bundle is not serving

    def reload(self, reason: str = "reload", actor: str = "") -> LoadedBundle:
        """Load the bundle directory again; a no-op if its content hash is already active."""
        if self.bundle_dir is None:
            raise ActivationError("no bundle directory is configured")
        try:
            source = BundleSource.from_dir(self.bundle_dir)
        except BundleError as exc:
            self._failed(exc)
            raise
        if self.active is not None and source.revision == self.active.bundle.revision:
            return self.active
        return self.activate_source(source, reason=reason, actor=actor, origin=str(self.bundle_dir))

    def activate_source(
        self,
        source: BundleSource,
        *,
        reason: str,
        actor: str = "",
        origin: str = "",
        record: bool = True,
    ) -> LoadedBundle:
        """Load, test and switch to `source`. `record` False only follows an activation that
        is already in the store (made by another worker or replica)."""
        with self._lock:
            try:
                loaded = load_bundle(source, self._options)
            except BundleError as exc:
                self._failed(exc)
                raise
            except Exception as exc:  # never let an unexpected failure replace the bundle
                error = BundleError([BundleProblem("bundle", f"internal error: {exc}")])
                self._failed(error)
                raise error from exc
            bundle = loaded.bundle
            if record:
                self._store.save_revision(bundle.revision, bundle.name, dict(source.files), origin)
                newest = self._store.history(limit=1)
                if not newest or newest[0].revision != bundle.revision:
                    # Workers starting together, or reloading the same files, record it once.
                    self._store.record_activation(bundle.revision, reason, actor)
                    newest = self._store.history(limit=1)
                if newest:
                    self._seen_activation = newest[0].id
            previous = self.active
            self.active = loaded
            self.last_error = None
        self._metrics.bundle_loads.labels("success").inc()
        if previous is not None and previous.bundle.revision != bundle.revision:
            old = (previous.bundle.name, previous.bundle.revision)
            self._metrics.bundle_info.labels(*old).set(0)  # what other workers' files see
            self._metrics.bundle_info.remove(*old)
        self._metrics.bundle_info.labels(bundle.name, bundle.revision).set(1)
        for warning in bundle.warnings:
            log.warning("bundle %s: %s", bundle.name, warning)
        log.info("activated bundle %s revision %s (%s)", bundle.name, bundle.revision[:12], reason)
        if self._on_activate is not None:
            self._on_activate(loaded)
        return loaded

    def activate_revision(
        self, revision: str, *, reason: str, actor: str = "", record: bool = True
    ) -> LoadedBundle:
        matches = self._store.resolve(revision)
        if not matches:
            raise ActivationError(f"unknown bundle revision {revision!r}")
        if len(matches) > 1:
            raise ActivationError(f"revision prefix {revision!r} is ambiguous")
        files = self._store.load_files(matches[0])
        assert files is not None
        return self.activate_source(
            BundleSource(files),
            reason=reason,
            actor=actor,
            origin=f"store:{matches[0]}",
            record=record,
        )

    def rollback(self, actor: str = "", to: str | None = None) -> LoadedBundle:
        """Back to `to`, or to the revision active before the current one."""
        if to is not None:
            return self.activate_revision(to, reason="rollback", actor=actor)
        current = self.active.bundle.revision if self.active else None
        for activation in self._store.history(limit=200):
            if activation.revision != current:
                return self.activate_revision(activation.revision, reason="rollback", actor=actor)
        raise ActivationError("no earlier revision to roll back to")

    def follow(self) -> LoadedBundle | None:
        """Switch to the store's newest activation if another worker or replica made it (an
        admin rollback, a reload there). Returns the bundle switched to, if any."""
        newest = self._store.history(limit=1)
        if not newest or newest[0].id == self._seen_activation:
            return None
        self._seen_activation = newest[0].id
        if self.active is not None and self.active.bundle.revision == newest[0].revision:
            return None
        return self.activate_revision(newest[0].revision, reason="follow", record=False)

    @property
    def activation_id(self) -> int:
        """The id of the newest activation this process serves or has followed: the same
        number on every replica of one store (part of decision/epoch.py's cache epoch)."""
        return self._seen_activation or 0

    def history(self, limit: int = 50) -> list[Activation]:
        return self._store.history(limit)

    def _failed(self, error: BundleError) -> None:
        self.last_error = error
        self._metrics.bundle_loads.labels("failure").inc()


def follow_or_log(manager: BundleManager) -> None:
    """Switch to an activation made elsewhere; a refusal is logged and the active bundle
    keeps serving."""
    try:
        manager.follow()
    except BundleError as exc:
        log.error(
            "activation made elsewhere refused here; the active bundle keeps serving:\n  %s",
            "\n  ".join(str(p) for p in exc.problems),
        )
    except ActivationError as exc:
        log.error("activation made elsewhere cannot be followed: %s", exc)


def reload_or_log(manager: BundleManager, reason: str, detail: str = "") -> LoadedBundle | None:
    """Reload the bundle directory for a trigger nobody waits on (file change, SIGHUP): a
    refusal is logged with every problem (and `detail`, what set it off), and the active
    bundle keeps serving. Returns the bundle serving after it, None when refused."""
    if manager.bundle_dir is None:
        return None
    trigger = f"{reason}: {detail}" if detail else reason
    try:
        return manager.reload(reason)
    except BundleError as exc:
        log.error(
            "reload (%s) refused; the active bundle keeps serving:\n  %s",
            trigger,
            "\n  ".join(str(p) for p in exc.problems),
        )
    except ActivationError as exc:
        log.error("reload (%s) refused: %s", trigger, exc)
    return None
