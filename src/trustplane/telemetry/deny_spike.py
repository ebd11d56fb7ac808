"""The deny-spike alarm: a bundle activation after which far more requests are denied.

A bundle that compiles and passes its own tests can still be wrong for the traffic it meets (a
permit scoped to the wrong namespace, a forbid that matches everyone). Fail-closed makes that
safe but loud only to the callers; this alarm makes it loud to the operator. Every decision the
active bundle makes is counted into a window of the most recent `min_decisions` outcomes. At each
activation the deny rate of that window is the baseline; the next `min_decisions` decisions the
new revision makes within `window_seconds` are compared with it. A rise of `threshold` or more
(0.3: from 5 % denied to 35 %) raises the alarm: a warning in the log, the gauge
`trustplane_deny_spike{revision}` at 1, and the alarm in the bundle status (`GET /v1/bundle`).
The next activation clears it. Without a baseline (fewer than `min_decisions` decisions before
the activation, as at start-up) or without enough decisions in the window, nothing is judged.

A whole-bundle rate hides a forbid that blocks one busy route among many quiet ones, so the
detector also judges each route and denying policy (the forbid that decided, or `default-deny`
when no permit held) apart: the decisions of the `window_seconds` before the activation are the
preceding window, and after it a (route, policy) whose denies reach `jump_min_denies` with a
deny rate on that route of `jump_ratio` times its rate before (smoothed: (denies + 1) /
(decisions + 1), so a route that was never denied has a small rate rather than none) is a
`DenyJump`, handed once per activation to `on_jump` (rollout/rollback.py: the alarm's ledger
record and webhook, and the automatic rollback). Routes unseen in the preceding window are not
judged: nothing says what their rate should be.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import Gauge

log = logging.getLogger("trustplane.bundle")


@dataclass(frozen=True)
class DenySpike:
    revision: str
    deny_rate_before: float
    deny_rate_after: float
    decisions_before: int
    decisions_after: int
    detected_at: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DenyJump:
    """One route's deny rate, by one denying policy, jumped after an activation."""

    revision: str
    route: str
    policy: str
    denies_before: int
    decisions_before: int
    denies_after: int
    decisions_after: int
    rate_before: float
    rate_after: float
    seconds_after_activation: float
    detected_at: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.policy} denied {self.denies_after} of {self.decisions_after} decisions on "
            f"{self.route} ({self.rate_after:.0%}) in the {self.seconds_after_activation:.1f} s "
            f"after revision {self.revision[:12]} was activated, against {self.denies_before} of "
            f"{self.decisions_before} ({self.rate_before:.0%}) in the window before"
        )


Route = Hashable  # (type, id) of the request's resource: formatted only when judged
_NO_POLICY = "default-deny"


class DenySpikeDetector:
    def __init__(
        self,
        gauge: Gauge,
        *,
        threshold: float,
        window_seconds: float,
        min_decisions: int,
        clock: Callable[[], float] = time.monotonic,
        jump_ratio: float = 0.0,
        jump_min_denies: int = 20,
        on_jump: Callable[[DenyJump], None] | None = None,
        history: int = 20_000,
    ) -> None:
        """`jump_ratio` 0 turns the per-route judgement off; `history` bounds the decisions
        kept for the preceding window."""
        self._gauge = gauge
        self._threshold = threshold
        self._window = window_seconds
        self._min = max(1, min_decisions)
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[bool] = deque(maxlen=self._min)  # True: denied
        self._revision: str | None = None
        self._baseline: float | None = None
        self._baseline_count = 0
        self._after_denied = 0
        self._after_total = 0
        self._deadline = 0.0
        self.alarm: DenySpike | None = None
        # Per route and policy (DenyJump): the preceding window, then the counts after.
        self._jump_ratio = jump_ratio
        self._jump_min = max(1, jump_min_denies)
        self._on_jump = on_jump
        self._history: deque[tuple[float, Route, str | None]] = deque(maxlen=max(1, history))
        self._jump_open = False
        self._activated_at = 0.0
        self._before_total: dict[Route, int] = {}
        self._before_denied: dict[tuple[Route, str], int] = {}
        self._after_route: dict[Route, int] = {}
        self._after_denied_by: dict[tuple[Route, str], int] = {}
        self.jump: DenyJump | None = None

    def activated(self, revision: str) -> None:
        """A new revision serves from now: take the baseline, clear an earlier alarm."""
        with self._lock:
            if revision == self._revision:
                return
            previous = self.alarm
            self._revision = revision
            full = len(self._recent) >= self._min
            self._baseline = sum(self._recent) / len(self._recent) if full else None
            self._baseline_count = len(self._recent)
            self._after_denied = self._after_total = 0
            now = self._clock()
            self._deadline = now + self._window
            self._recent.clear()
            self.alarm = None
            self._start_jump_window(now)
        if previous is not None:
            self._gauge.labels(previous.revision).set(0)

    def _start_jump_window(self, now: float) -> None:
        """Under the lock: the preceding window's counts per route and denying policy."""
        self.jump = None
        self._after_route, self._after_denied_by = {}, {}
        self._before_total, self._before_denied = {}, {}
        self._jump_open = bool(self._jump_ratio)
        self._activated_at = now
        if not self._jump_open:
            return
        since = now - self._window
        for at, route, policy in self._history:
            if at < since:
                continue
            self._before_total[route] = self._before_total.get(route, 0) + 1
            if policy is not None:
                key = (route, policy)
                self._before_denied[key] = self._before_denied.get(key, 0) + 1
        self._history.clear()

    def observe(self, denied: bool, route: Route = None, policy: str | None = None) -> None:
        """One decision of the active bundle (the decision path: a few operations). `route`
        and `policy` (the denying policy of a deny) feed the per-route judgement."""
        if self._jump_ratio and route is not None:
            self._observe_route(denied, route, (policy or _NO_POLICY) if denied else None)
        self._recent.append(denied)
        if self._baseline is None:
            return
        with self._lock:
            if self._baseline is None:
                return
            self._after_total += 1
            self._after_denied += denied
            if self._after_total < self._min:
                if self._clock() > self._deadline:
                    self._baseline = None  # too few decisions in the window: nothing judged
                return
            baseline, self._baseline = self._baseline, None  # judged once per activation
            after = self._after_denied / self._after_total
            revision = self._revision
            if revision is None or after - baseline < self._threshold:
                return
            self.alarm = DenySpike(
                revision,
                round(baseline, 4),
                round(after, 4),
                self._baseline_count,
                self._after_total,
                time.time(),
            )
        self._gauge.labels(revision).set(1)
        log.warning(
            "deny spike after activating revision %s: %.0f%% of %d decisions denied, "
            "against %.0f%% before; check the bundle (trustplane policy rollback undoes it)",
            revision[:12],
            after * 100,
            self._after_total,
            baseline * 100,
        )

    def _observe_route(self, denied: bool, route: Route, policy: str | None) -> None:
        now = self._clock()
        self._history.append((now, route, policy))
        if not self._jump_open:
            return
        found = None
        with self._lock:
            if not self._jump_open:
                return
            if now > self._deadline:
                self._jump_open = False
                return
            self._after_route[route] = seen = self._after_route.get(route, 0) + 1
            if policy is None:
                return
            key = (route, policy)
            self._after_denied_by[key] = denies = self._after_denied_by.get(key, 0) + 1
            before = self._before_total.get(route, 0)
            if denies < self._jump_min or not before:
                return
            denied_before = self._before_denied.get(key, 0)
            rate_before = (denied_before + 1) / (before + 1)
            rate_after = denies / seen
            if rate_after < self._jump_ratio * rate_before:
                return
            self._jump_open = False  # judged once per activation
            found = DenyJump(
                self._revision or "",
                _route_text(route),
                policy,
                denied_before,
                before,
                denies,
                seen,
                round(denied_before / before, 4),
                round(rate_after, 4),
                round(now - self._activated_at, 3),
                time.time(),
            )
            self.jump = found
        log.warning("deny rate jump: %s", found.describe())
        if self._on_jump is not None:
            self._on_jump(found)


def _route_text(route: Route) -> str:
    if isinstance(route, tuple) and len(route) == 2:
        return f'{route[0]}::"{route[1]}"'
    return str(route)
