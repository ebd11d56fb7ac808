"""Promotion gates: the bundle's `rollout.yaml` and the measured evidence it is compared with.

`rollout.yaml` sets, per tier (a policy's `@tier` annotation; `default` for the rest), the
evidence an observe-mode policy needs before it is enforced: days in observe, decisions recorded
meanwhile, labelled would-denies, the false-positive bound and the attributable-share bound. It is
compiled with the bundle (an `ExtraFile`, like `trust.yaml`): a mistake refuses the bundle with
its file and line, and the file is hashed into the revision. Without it, `DEFAULT_GATES` apply.

The false-positive rate is estimated from the labels with a 95% Wilson score interval and a gate
passes on the interval's upper bound, not on the point estimate: ten clean labels (upper bound
28%) do not show a rate below 5%; about 73 do. The labels are a sample stratified by principal,
so the estimate weighs each principal by its share of the would-denies and the interval uses the
sample's effective size (`stratified_rate`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from trustplane.decision.policy_bundle import Bundle
from trustplane.decision.source import split_policies
from trustplane.rollout.labels import LabelStore
from trustplane.rollout.policy import (
    TierGate,
    rollout_policy,
)
from trustplane.store.policy_revisions import BundleStore
from trustplane.telemetry.ledger import rfc3339

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile
DAY = 86400.0


# -- the measurement ---------------------------------------------------------------------------


def wilson(successes: float, trials: float, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; (0, 1) when nothing was tried.
    Fractional counts are a weighted sample's (see `stratified_rate`)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    # The bounds bracket p exactly; rounding would otherwise put 3e-17 above p = 0.
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


@dataclass(frozen=True, slots=True)
class Stratum:
    """One principal's would-denies: how many there are, how many are labelled, and how many
    of those are false positives."""

    would_denies: int
    labelled: int
    false_positives: int


def stratified_rate(strata: list[Stratum]) -> tuple[float | None, float]:
    """The false-positive rate of all would-denies estimated from labels taken per principal
    (the queue samples principals evenly, not in proportion to their would-denies), and the
    effective number of labels behind it.

    Each labelled principal weighs by its share of the would-denies of labelled principals; a
    label of principal s stands for N_s / n_s would-denies, and the effective size is Kish's
    (sum of weights)^2 / sum of squared weights. When every principal is labelled in the same
    proportion, this is the plain rate and the plain count. Principals with no label are not
    represented (the queue gives each one a turn before anyone's second)."""
    sampled = [s for s in strata if s.labelled > 0]
    if not sampled:
        return None, 0.0
    total = sum(s.would_denies for s in sampled)
    rate = sum(s.would_denies / total * s.false_positives / s.labelled for s in sampled)
    weights = sum(s.would_denies for s in sampled)  # n_s labels of weight N_s / n_s each
    squares = sum(s.would_denies * s.would_denies / s.labelled for s in sampled)
    return rate, weights * weights / squares


def named_principals(bundle: Bundle) -> frozenset[str]:
    """The principals a would-deny is attributable to: entities of the bundle that are not
    marked shared (`"shared": true` among their attributes), as `Type::"id"`."""
    named = set()
    for entity in bundle.entities:
        uid, attrs = entity.get("uid") or {}, entity.get("attrs") or {}
        if attrs.get("shared") is True:
            continue
        named.add(f'{uid.get("type")}::"{uid.get("id")}"')
    return frozenset(named)


@dataclass(frozen=True)
class Cohort:
    """The evidence of one cohort of a policy: `observed` (would-denies: observe mode, or a
    canary's principals outside its share) or `enforced` (a canary's denials)."""

    name: str
    would_denies: int
    labelled: int
    false_positives: int
    fp_estimate: float | None
    fp_low: float
    fp_high: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "would_denies": self.would_denies,
            "labelled": self.labelled,
            "false_positives": self.false_positives,
            "false_positive_rate": {
                "estimate": self.fp_estimate,
                "low": self.fp_low,
                "high": self.fp_high,
                "confidence": 0.95,
            },
        }


@dataclass(frozen=True)
class PolicyStatus:
    policy_id: str
    tier: str | None
    owner: str
    observing_since: float | None
    days_observed: float
    decisions: int
    would_denies: int
    labelled: int
    false_positives: int
    fp_estimate: float | None
    fp_low: float
    fp_high: float
    attributable: float | None
    gate: TierGate
    failing: tuple[str, ...]
    mode: str = "observe"
    canary: float | None = None  # the enforced percentage of a canary policy
    cohorts: tuple[Cohort, ...] = ()

    @property
    def passes(self) -> bool:
        return not self.failing

    def as_dict(self) -> dict[str, Any]:
        since = self.observing_since
        return {
            "policy_id": self.policy_id,
            "mode": self.mode,
            "canary_percent": self.canary,
            "tier": self.tier,
            "owner": self.owner,
            "observing_since": None if since is None else rfc3339(since),
            "days_observed": round(self.days_observed, 3),
            "decisions": self.decisions,
            "would_denies": self.would_denies,
            "labelled": self.labelled,
            "false_positives": self.false_positives,
            "false_positive_rate": {
                "estimate": self.fp_estimate,
                "low": self.fp_low,
                "high": self.fp_high,
                "confidence": 0.95,
            },
            "cohorts": {cohort.name: cohort.as_dict() for cohort in self.cohorts},
            "attributable_share": self.attributable,
            "gate": asdict(self.gate),
            "verdict": "pass" if self.passes else "fail",
            "failing": list(self.failing),
        }


_MODE = re.compile(r'@mode\s*\(\s*"(?:observe|canary)"\s*\)')
ROLLING_MODES = ("observe", "canary")


def observed_in(files: Mapping[str, bytes], policy_id: str) -> bool:
    """Whether a revision's files hold `policy_id` in observe or canary mode (read from the
    text: older revisions are not compiled again)."""
    marker = re.compile(r'@id\s*\(\s*"' + re.escape(policy_id) + r'"\s*\)')
    for path, data in files.items():
        if not path.endswith(".cedar"):
            continue
        for statement in split_policies(data.decode("utf-8", "replace")):
            if marker.search(statement.text):
                return bool(_MODE.search(statement.text))
    return False


def _estimate(name: str, strata: list[Stratum]) -> Cohort:
    estimate, effective = stratified_rate(strata)
    low, high = wilson((estimate or 0.0) * effective, effective)
    return Cohort(
        name,
        sum(s.would_denies for s in strata),
        sum(s.labelled for s in strata),
        sum(s.false_positives for s in strata),
        estimate,
        low,
        high,
    )


class RolloutStatus:
    """The gate verdict of every observe-mode and canary policy of the active bundle."""

    def __init__(self, labels: LabelStore, revisions: BundleStore) -> None:
        self._labels = labels
        self._revisions = revisions
        self._observed: dict[tuple[str, str], bool] = {}  # (revision, policy) → observe mode

    def observing_since(self, policy_id: str) -> float | None:
        """When the policy's current stretch in observe (or canary) mode began: the oldest
        activation of the unbroken run of activations, newest first, whose revision holds it
        in one of those modes."""
        since = None
        for activation in self._revisions.history(limit=1000):
            key = (activation.revision, policy_id)
            if key not in self._observed:
                files = self._revisions.load_files(activation.revision) or {}
                self._observed[key] = observed_in(files, policy_id)
            if not self._observed[key]:
                break
            since = activation.activated_at
        return since

    def evaluate(self, bundle: Bundle, now: float | None = None) -> list[PolicyStatus]:
        """Every observe and canary policy against its tier's gate. Reads counts by index
        (`rollout_evidence`, decisions by kind and time), never the records."""
        now = time.time() if now is None else now
        policy = rollout_policy(bundle)
        named = named_principals(bundle)
        found = []
        for info in bundle.policies:
            if info.mode not in ROLLING_MODES:
                continue
            gate = policy.gate(info.tier)
            since = self.observing_since(info.policy_id)
            start = now if since is None else since
            days = max(0.0, (now - start) / DAY)
            decided = self._labels.decisions_since(start) if since is not None else 0
            rows = self._labels.strata(info.policy_id, since=since) if since is not None else []
            by_cohort: dict[str, list[Stratum]] = {}
            for cohort_name, _, n, labelled, fp in rows:
                by_cohort.setdefault(cohort_name, []).append(Stratum(n, labelled, fp))
            names = ("observed", "enforced") if info.mode == "canary" else ("observed",)
            cohorts = tuple(_estimate(name, by_cohort.get(name, [])) for name in names)
            # All cohorts together, each principal one stratum per cohort.
            total = _estimate("all", [s for group in by_cohort.values() for s in group])
            would = sum(n for _, _, n, _, _ in rows)
            attributable = (
                sum(n for _, principal, n, _, _ in rows if principal in named) / would
                if would
                else None
            )
            failing = []
            if days < gate.min_days:
                failing.append(f"observed {days:.1f} days, fewer than {gate.min_days:g}")
            if decided < gate.min_decisions:
                failing.append(f"{decided} decisions recorded, fewer than {gate.min_decisions}")
            if total.labelled < gate.min_labels:
                failing.append(
                    f"{total.labelled} would-denies labelled, fewer than {gate.min_labels}"
                )
            if total.fp_high > gate.max_false_positive:
                failing.append(
                    f"false-positive rate up to {total.fp_high:.1%} (95% upper bound), above "
                    f"{gate.max_false_positive:.1%}"
                )
            if info.mode == "canary":
                # A cohort with enough labels of its own is judged alone too: a canary's
                # enforced denials can be wrong where its observed would-denies are not.
                for cohort in cohorts:
                    judged = cohort.labelled >= max(1, gate.min_labels)
                    if judged and cohort.fp_high > gate.max_false_positive:
                        failing.append(
                            f"{cohort.name} cohort: false-positive rate up to "
                            f"{cohort.fp_high:.1%} (95% upper bound), above "
                            f"{gate.max_false_positive:.1%}"
                        )
            if attributable is not None and attributable < gate.min_attributable:
                failing.append(
                    f"{attributable:.1%} of would-denies attributable to named principals, "
                    f"below {gate.min_attributable:.0%}"
                )
            found.append(
                PolicyStatus(
                    info.policy_id,
                    info.tier,
                    info.owner,
                    since,
                    days,
                    decided,
                    would,
                    total.labelled,
                    total.false_positives,
                    total.fp_estimate,
                    total.fp_low,
                    total.fp_high,
                    attributable,
                    gate,
                    tuple(failing),
                    mode=info.mode,
                    canary=info.canary,
                    cohorts=cohorts,
                )
            )
        return found
