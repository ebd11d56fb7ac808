"""The revocation service: the one way to revoke anything, lift a revocation, list them, and
let them expire.

Principals, credentials (JWT ids) and certificates (serials) are revocations kept here
(`revocation.py`); grants, exceptions and break-glass sessions are revoked in governance, whose
records hold them, through a `GovernedRevoker` the composition root supplies (so this package
never imports governance). Either way the change is announced on the change feed's
`revocations` topic in the same transaction, and this process reloads its list at once.

Lifecycle: a revocation may carry an expiry, after which it no longer denies anywhere (the
in-memory list checks it on every lookup); a housekeeping thread then records the expiry in the
store and the ledger, once across every process sharing the store. A revocation in force can be
lifted with a reason. Revoke and lift are recorded in the ledger by the admin gate that admitted
the call; the expiry, which nobody calls, is recorded here.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from trustplane.recovery.revocation import (
    EXPIRY_ACTOR,
    GOVERNED,
    Revocation,
    RevocationError,
    RevocationKind,
    RevocationList,
    RevocationStore,
    normalise_target,
)
from trustplane.telemetry.ledger import LedgerEntry, admin_entry, rfc3339

log = logging.getLogger("trustplane.recovery")

MAX_EXPIRY_SECONDS = 10 * 365 * 86_400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"^(?:\d+[smhdw])+$")
_PART = re.compile(r"(\d+)([smhdw])")


@dataclass(frozen=True)
class Caller:
    """Who revokes or lifts, as the ledger and governance's rules need them."""

    name: str
    principal: str | None = None
    bootstrap: bool = False


@dataclass(frozen=True)
class Revoked:
    """What a revocation request came to: the revocation, whether this call made it (False:
    one was already in force and stands), and for a grant, exception or session the
    governance record's own document."""

    revocation: Revocation
    created: bool
    record: dict[str, Any] | None = None


class GovernedRevoker(Protocol):
    def __call__(
        self, kind: RevocationKind, target: str, reason: str, caller: Caller
    ) -> tuple[float, bool, dict[str, Any]]:
        """Revoke a grant, exception or session: (when it was revoked, whether by this call,
        the record's document). Raises governance's own error when its rules refuse."""
        ...


class UnknownPrincipal(RevocationError):
    """A principal no bundle entity nor the identity inventory knows: likely a typo, which
    would silently revoke nobody. Revoking it anyway takes `force`."""

    def __init__(self, principal: str) -> None:
        super().__init__(
            f"principal {principal} is not known: no entity of the active bundle and no "
            "identity in the inventory has that name (check the spelling, or revoke it anyway "
            "with force)",
            409,
            "target",
        )
        self.principal = principal


def parse_expiry(text: str, now: float) -> float:
    """When a revocation should end: a duration from now (`90s`, `30m`, `2h`, `1d12h`, `1w`) or
    an RFC 3339 time with its offset (`2030-01-31T18:00:00Z`); it must be in the future."""
    value = text.strip()
    if _DURATION.match(value):
        seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))
        if seconds <= 0:
            raise RevocationError(f"expiry {text!r} must be longer than zero", 422, "expires")
        at = now + seconds
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise RevocationError(
                f"expiry {text!r} must be a duration such as 30m, 2h or 7d, or an RFC 3339 "
                "time such as 2030-01-31T18:00:00Z",
                422,
                "expires",
            ) from None
        if moment.tzinfo is None:
            raise RevocationError(
                f"expiry {text!r} must give its UTC offset (Z or +hh:mm)", 422, "expires"
            )
        at = moment.timestamp()
        if at <= now:
            raise RevocationError(f"expiry {text!r} is not in the future", 422, "expires")
    if at - now > MAX_EXPIRY_SECONDS:
        raise RevocationError(
            f"expiry {text!r} is more than ten years away: leave it out to revoke until lifted",
            422,
            "expires",
        )
    return at


class RevocationService:
    """Revoke, lift, list and expire: what the admin API and housekeeping call."""

    def __init__(
        self,
        store: RevocationStore,
        listed: RevocationList,
        governed: GovernedRevoker,
        *,
        known: Callable[[str], bool] = lambda _principal: True,
        record: Callable[[LedgerEntry], None] | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`known(principal)`: whether a bundle entity or the identity inventory knows the
        entity text; `record(entry)`: appends a ledger entry and returns once it is stored."""
        self._store = store
        self._listed = listed
        self._governed = governed
        self._known = known
        self._record = record
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def revoke(
        self,
        caller: Caller,
        kind: RevocationKind,
        target: str,
        reason: str,
        *,
        expires: str | None = None,
        force: bool = False,
    ) -> Revoked:
        """Revoke `target` of `kind`, until `expires` (see `parse_expiry`) or until lifted.
        A principal nobody knows is refused (`UnknownPrincipal`) unless `force`."""
        if kind in GOVERNED:
            if expires is not None:
                raise RevocationError(
                    f"a {kind.value} revocation cannot expire: grants, exceptions and sessions "
                    "end at their own expiry",
                    422,
                    "expires",
                )
            revoked_at, created, document = self._governed(kind, target.strip(), reason, caller)
            self._listed.refresh()
            target = target.strip()
            revocation = Revocation(
                str(document.get("id", target)), kind, target, reason, caller.name, revoked_at
            )
            return Revoked(revocation, created, document)
        canonical = normalise_target(kind, target)
        expires_at = None if expires is None else parse_expiry(expires, self._clock())
        unknown = kind is RevocationKind.PRINCIPAL and not force
        if unknown and self._store.find(kind, canonical) is None and not self._known(canonical):
            raise UnknownPrincipal(canonical)
        revocation, created = self._store.revoke(kind, canonical, reason, caller.name, expires_at)
        if not created and not revocation.in_force(self._clock()):
            self.expire_due()  # it ran out but is not recorded yet: record it, then revoke
            revocation, created = self._store.revoke(
                kind, canonical, reason, caller.name, expires_at
            )
        self._listed.refresh()  # this process at once; the feed tells the others
        return Revoked(revocation, created)

    def lift(self, caller: Caller, revocation_id: str, reason: str) -> tuple[Revocation, bool]:
        """Lift a revocation in force, by its id or a unique prefix of it; lifting again
        answers the first lift."""
        revocation, lifted = self._store.lift(revocation_id, reason, caller.name)
        if lifted:
            self._listed.refresh()
        return revocation, lifted

    def get(self, revocation_id: str) -> Revocation:
        return self._store.get(revocation_id)

    def listing(self, *, ended: bool = False) -> tuple[list[Revocation], int]:
        """The revocations in force (with `ended`, lifted and expired ones too) and the epoch
        they correspond to."""
        items, epoch = self._store.all(ended=ended)
        if not ended:
            now = self._clock()
            items = [r for r in items if r.in_force(now)]
        return items, epoch

    def expire_due(self) -> list[Revocation]:
        """Record every revocation whose expiry has passed as expired, in the store and the
        ledger (each once, whichever process gets to it first)."""
        ended = self._store.expire_due()
        if not ended:
            return ended
        self._listed.refresh()
        for revocation in ended:
            log.info("revocation %s of %s expired", revocation.id, revocation.target)
            if self._record is not None:
                self._record(expiry_entry(revocation))
        return ended

    # -- housekeeping --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="revocations", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.expire_due()
            except Exception:
                log.exception("recording expired revocations failed; will retry")


def expiry_entry(revocation: Revocation) -> LedgerEntry:
    """The ledger record of a revocation that ran out: nobody acted, its expiry did."""
    expired = revocation.expires_at or revocation.ended_at or time.time()
    return admin_entry(
        EXPIRY_ACTOR,
        "revocation:expire",
        f"{revocation.kind.value}:{revocation.target}",
        f"the expiry set by {revocation.actor} has passed",
        True,
        {
            "revocation": revocation.id,
            "revoked_by": revocation.actor,
            "revoked_for": revocation.reason,
            "expires_at": rfc3339(expired),
            "step": "expire",
        },
    )
