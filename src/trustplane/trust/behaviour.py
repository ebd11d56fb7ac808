"""Behaviour: how this principal's request compares with its own history.

- `novelty`: the principal was seen before, but has not used this action (or this resource
  type) in `days` days. A principal's very first request is not flagged (everything is new to
  a new principal), nor are the actions of a principal with no history at all.
- `velocity`: requests in the last minute against the principal's own baseline, the mean per
  active minute over the last hour; 0 below `min_requests` or without `min_minutes` of history,
  rising from `factor` times the baseline to 1 at `max_factor` times.
- `denial_rate`: the share of the last minute's requests that were denied, above the
  principal's own share over the last hour, from `low` to 1 at `high`; 0 below `min_denials`
  or without `min_minutes` of history (a principal with no hour behind it has no share of its
  own to compare with: a new job failing its first calls is not an anomaly).

`BehaviourState` keeps the history in memory, per process: the decision path does dict
lookups and never touches the store. A background thread (`behaviour_store.BehaviourWriter`)
writes each process's new uses and per-minute counts behind, every few seconds, and reads back
what the other replicas wrote, so the history is shared within that interval (docs/trust.md).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trustplane.model import EntityRef
from trustplane.store.text import column_text
from trustplane.trust.authentication import ramp
from trustplane.trust.signals import Signal, TrustInputs, constant_signal
from trustplane.trust.travel import history_key

BASELINE_MINUTES = 60  # the history each principal's rates are compared with
ACTION, RESOURCE_TYPE, MINUTE = "action", "resource_type", "minute"
UseKey = tuple[str, str, str]  # (principal, kind, name)


@dataclass(slots=True)
class Rates:
    now: int  # requests in the last minute (this one, and the part of the previous in it)
    denied: int
    baseline: float | None  # mean requests per active minute over the hour, None: too little
    baseline_share: float  # share denied over the hour
    minutes: int  # active minutes in the hour


def principal_key(principal: str) -> str:
    return history_key(principal)


def name_key(name: str) -> str:
    return column_text(name, 400)


class BehaviourState:
    """Every principal's last use of each action and resource type, and its requests and
    denials per minute: in memory, merged with what the store says the other replicas saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[UseKey, float] = {}  # shared (from the store) and local uses
        self._principals: dict[str, float] = {}  # principal → last seen, anything
        # principal → minute → [requests, denials]: totals the store holds over all replicas
        self._shared: dict[str, dict[int, list[int]]] = {}
        # this process's counts not yet in the store (`local`), and those being written
        self._local: dict[str, dict[int, list[int]]] = {}
        self._inflight: dict[str, dict[int, list[int]]] = {}
        self._uses: dict[UseKey, float] = {}  # this process's uses not yet in the store
        # principal → (minute, version, requests, denials, active minutes) of its baseline hour
        self._baselines: dict[str, tuple[int, int, int, int, int]] = {}
        self._version = 0  # moves when the store's totals arrive or in-flight counts settle

    # -- the decision path --------------------------------------------------------------------

    def use(
        self, principal: str, action: str, resource_type: str, now: float, record: bool = True
    ) -> tuple[bool, float | None, float | None]:
        """Record a request (unless `record` is False: a what-if); return whether the
        principal was known before it, and when it last used this action and this resource
        type (None: never, as far as is known)."""
        with self._lock:
            return self._use(principal, action, resource_type, now, record)

    def sighting(
        self,
        principal: str,
        action: str,
        resource_type: str,
        now: float,
        record: bool = True,
        rates: bool = True,
    ) -> tuple[bool, float | None, float | None, Rates | None]:
        """`use` and then, when `rates`, the principal's rates, under one acquisition of the
        lock (the decision path)."""
        with self._lock:
            known, last_action, last_type = self._use(principal, action, resource_type, now, record)
            return known, last_action, last_type, self._rates(principal, now) if rates else None

    def _use(
        self, principal: str, action: str, resource_type: str, now: float, record: bool
    ) -> tuple[bool, float | None, float | None]:
        a, r = (principal, ACTION, action), (principal, RESOURCE_TYPE, resource_type)
        last = self._last
        known = principal in self._principals
        before_action, before_type = last.get(a), last.get(r)
        if record:
            last[a] = last[r] = now
            self._uses[a] = self._uses[r] = now
            self._principals[principal] = now
            minutes = self._local.get(principal)
            if minutes is None:
                minutes = self._local[principal] = {}
            minute = int(now // 60)
            counts = minutes.get(minute)
            if counts is None:
                minutes[minute] = [1, 0]
            else:
                counts[0] += 1
        return known, before_action, before_type

    def denied(self, principal: str, now: float) -> None:
        minute = int(now // 60)
        with self._lock:
            if principal not in self._principals:  # not scored by this provider: not counted
                return
            self._local.setdefault(principal, {}).setdefault(minute, [0, 0])[1] += 1

    def _rates(self, principal: str, now: float) -> Rates:
        """The principal's rates; the caller holds the lock."""
        minute = int(now // 60)
        sources = (self._shared, self._inflight, self._local)
        # The hour before the last minute changes only when the minute turns or the store
        # brings the replicas' totals: summed once, not on every request.
        known = self._baselines.get(principal)
        if known is None or known[0] != minute or known[1] != self._version:
            per: dict[int, list[int]] = {}
            for source in sources:
                for m, (c, d) in source.get(principal, {}).items():
                    if minute - BASELINE_MINUTES <= m < minute - 1:
                        total = per.setdefault(m, [0, 0])
                        total[0] += c
                        total[1] += d
            asked = sum(c for c, _ in per.values())
            refused = sum(d for _, d in per.values())
            known = (minute, self._version, asked, refused, len(per))
            self._baselines[principal] = known
        this_asked = this_denied = previous_asked = previous_denied = 0
        for source in sources:
            minutes = source.get(principal)
            if minutes:
                found = minutes.get(minute)
                if found is not None:
                    this_asked += found[0]
                    this_denied += found[1]
                found = minutes.get(minute - 1)
                if found is not None:
                    previous_asked += found[0]
                    previous_denied += found[1]
        _, _, asked, refused, active = known
        rest = 1 - (now % 60) / 60  # how much of the last minute is within the last 60 s
        return Rates(
            this_asked + round(previous_asked * rest),
            this_denied + round(previous_denied * rest),
            asked / active if active else None,
            refused / asked if asked else 0.0,
            active,
        )

    # -- the writer's side (behaviour_store.py) -----------------------------------------------

    def take(self) -> tuple[dict[UseKey, float], dict[str, dict[int, list[int]]]]:
        """What this process saw since the last write; held as in flight until `written`."""
        with self._lock:
            uses, self._uses = self._uses, {}
            counts, self._local = self._local, {}
            for principal, minutes in counts.items():
                held = self._inflight.setdefault(principal, {})
                for m, (c, d) in minutes.items():
                    total = held.setdefault(m, [0, 0])
                    total[0] += c
                    total[1] += d
        return uses, counts

    def written(self, ok: bool) -> None:
        """The in-flight counts reached the store (and `merge` brought the totals back), or
        did not: then they are counted locally again, for the next write."""
        with self._lock:
            if not ok:
                for principal, minutes in self._inflight.items():
                    local = self._local.setdefault(principal, {})
                    for m, (c, d) in minutes.items():
                        total = local.setdefault(m, [0, 0])
                        total[0] += c
                        total[1] += d
            self._inflight = {}
            self._version += 1

    def merge(self, rows: list[tuple[str, str, str, float, int, int]]) -> None:
        """Rows (principal, kind, name, last_seen, count, denials) read from the store: uses
        keep the newest time, minute rows are the replicas' totals and replace ours."""
        with self._lock:
            self._version += 1
            for principal, kind, name, last_seen, count, denials in rows:
                if kind == MINUTE:
                    self._shared.setdefault(principal, {})[int(name)] = [int(count), int(denials)]
                else:
                    key = (principal, kind, name)
                    if last_seen > self._last.get(key, 0.0):
                        self._last[key] = last_seen
                if last_seen > self._principals.get(principal, 0.0):
                    self._principals[principal] = last_seen

    def prune(self, now: float, retention_seconds: float) -> None:
        """Forget minutes older than the baseline and uses older than the retention."""
        oldest_minute = int(now // 60) - BASELINE_MINUTES - 1
        cutoff = now - retention_seconds
        with self._lock:
            for source in (self._shared, self._local):
                for principal in list(source):
                    minutes = source[principal]
                    for m in [m for m in minutes if m < oldest_minute]:
                        del minutes[m]
                    if not minutes:
                        del source[principal]
            for key in [k for k, t in self._last.items() if t < cutoff]:
                del self._last[key]
            for p in [p for p, t in self._principals.items() if t < cutoff]:
                del self._principals[p]
            self._baselines = {}


_FIRST_REQUEST = constant_signal("novelty", 0.0, "first request of this principal", "history")
_USED_BEFORE = constant_signal("novelty", 0.0, "used within the window", "history")


class BehaviourSignals:
    names: tuple[str, ...] = ("novelty", "velocity", "denial_rate")
    params: Mapping[str, Mapping[str, Any]] = {
        "novelty": {"days": 30},
        "velocity": {"factor": 3, "max_factor": 10, "min_requests": 20, "min_minutes": 5},
        "denial_rate": {"low": 0.2, "high": 0.6, "min_denials": 5, "min_minutes": 5},
    }
    fractions: Mapping[str, tuple[str, ...]] = {"denial_rate": ("low", "high")}

    def __init__(self, state: BehaviourState | None) -> None:
        self._state = state
        # With a history the answer depends on who asks: never shared between requests.
        self.per_principal = state is not None
        self._key_memo: dict[tuple[str, ...], tuple[str, str, str]] = {}

    def signals(self, inputs: TrustInputs, wanted: frozenset[str]) -> list[Signal]:
        state = self._state
        if state is None:
            why = "no behaviour history kept here"
            return [constant_signal(n, 0.0, why, "memory") for n in self.names if n in wanted]
        # A signal at 0 is recorded by name only (assessor.py): its explanation is a constant,
        # and the words are built only for one that fires (this runs on every request).
        found: list[Signal] = []
        source = "history"
        principal, action, kind = self._keys(inputs.principal, inputs.action, inputs.resource.type)
        now = inputs.now
        velocity, denials = "velocity" in wanted, "denial_rate" in wanted
        known, last_action, last_type, rates = state.sighting(
            principal, action, kind, now, inputs.remember, velocity or denials
        )
        params = inputs.params
        if "novelty" in wanted:
            days = float(params.get("novelty", {}).get("days", 30))
            since = now - days * 86400
            stale_action = last_action is None or last_action < since
            stale_type = last_type is None or last_type < since
            if not known:
                found.append(_FIRST_REQUEST)
            elif stale_action or stale_type:
                new = [f"action {action}"] if stale_action else []
                new += [f"resource type {kind}"] if stale_type else []
                why = f"first use of {' and '.join(new)} in {days:.0f} days"
                found.append(Signal("novelty", 1.0, {"new": new}, why, source))
            else:
                found.append(_USED_BEFORE)
        if rates is not None:
            if velocity:
                found.append(self._velocity(params.get("velocity", {}), rates, source))
            if denials:
                found.append(self._denials(params.get("denial_rate", {}), rates, source))
        return found

    def repeated(
        self, principal: EntityRef, action: EntityRef, resource_type: str, now: float
    ) -> None:
        """The assessor reused an assessment made this second for the same request
        (assessor.py `_held_or_assessed`): the request still counts towards the rates."""
        if self._state is not None:
            self._state.use(*self._keys(principal, action, resource_type), now)

    def _keys(
        self, principal: EntityRef, action: EntityRef, resource_type: str
    ) -> tuple[str, str, str]:
        """The history's keys of the request's principal, action and resource type, made
        column-safe once per distinct triple rather than on every request."""
        asked = (principal.type, principal.id, action.type, action.id, resource_type)
        keys = self._key_memo.get(asked)
        if keys is None:
            keys = (
                principal_key(str(principal)),
                name_key(str(action)),
                name_key(resource_type),
            )
            if len(self._key_memo) >= 4096:
                self._key_memo.clear()
            self._key_memo[asked] = keys
        return keys

    @staticmethod
    def _velocity(params: Mapping[str, Any], rates: Rates, source: str) -> Signal:
        floor = float(params.get("min_requests", 20))
        baseline = rates.baseline
        if rates.now < floor or baseline is None:
            return constant_signal("velocity", 0.0, "below the floor, or no baseline", source)
        if rates.minutes < float(params.get("min_minutes", 5)):
            return constant_signal("velocity", 0.0, "too little history for a baseline", source)
        factor = float(params.get("factor", 3))
        top = float(params.get("max_factor", 10))
        ratio = rates.now / max(baseline, 1.0)
        value = ramp(ratio, factor, top)
        if not value:
            return constant_signal("velocity", 0.0, "within the baseline", source)
        return Signal(
            "velocity",
            value,
            {"per_minute": rates.now, "baseline": round(baseline, 1)},
            f"{rates.now}/min, {ratio:.1f}× the baseline {baseline:.1f}/min "
            f"(from {factor:g}×, at least {floor:.0f}/min)",
            source,
        )

    @staticmethod
    def _denials(params: Mapping[str, Any], rates: Rates, source: str) -> Signal:
        if rates.denied < float(params.get("min_denials", 5)):
            return constant_signal("denial_rate", 0.0, "below the floor", source)
        if rates.minutes < float(params.get("min_minutes", 5)):
            why = "too little history for a baseline"
            return constant_signal("denial_rate", 0.0, why, source)
        low = float(params.get("low", 0.2))
        high = float(params.get("high", 0.6))
        share = rates.denied / rates.now if rates.now else 0.0
        value = ramp(share - rates.baseline_share, low, high)
        if not value:
            return constant_signal("denial_rate", 0.0, "within the baseline", source)
        return Signal(
            "denial_rate",
            value,
            {
                "denied": rates.denied,
                "share": round(share, 2),
                "baseline": round(rates.baseline_share, 2),
            },
            f"{rates.denied} of {rates.now} denied in the last minute ({share:.0%}, usually "
            f"{rates.baseline_share:.0%})",
            source,
        )

    def outcome(self, inputs_principal: str, denied: bool, now: float) -> None:
        """A decision was made for a request this provider saw: count a denial."""
        if denied and self._state is not None:
            self._state.denied(principal_key(inputs_principal), now)
