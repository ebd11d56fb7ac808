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
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
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


class DenySpikeDetector:
    def __init__(
        self,
        gauge: Gauge,
        *,
        threshold: float,
        window_seconds: float,
        min_decisions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
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
            self._deadline = self._clock() + self._window
            self._recent.clear()
            self.alarm = None
        if previous is not None:
            self._gauge.labels(previous.revision).set(0)

    def observe(self, denied: bool) -> None:
        """One decision of the active bundle (the decision path: a few operations)."""
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
