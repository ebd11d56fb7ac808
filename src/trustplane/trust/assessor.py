"""One request's assessment: run the providers, weigh their signals, explain the score.

`TrustAssessor` is what the decision point calls before evaluating (decision/point.py): it
returns the request Cedar sees — `context.trust` set to the computed score, level and enforced
signals when the bundle has trust.yaml, and whatever the caller wrote there removed otherwise —
and the record that goes in the decision (`Decision.trust`): score, level, a one-line summary
and every signal with its value, points, mode and source.

Caller-supplied values under `context.trust` are believed only from a PEP the configuration
names (`trust.trusted_peps`): `inputs` (`source_ip`, `amr`, `acr`, `auth_time`, `iat`, `exp`,
`workload`, `subject`, `device_id`) stand in for evidence this PDP did not verify itself, and
`signals` (name → value 0–1) replace computed ones. From anyone else they are ignored, and the
record says so.

Fail closed: a provider that raises gives each of its signals an error and the value trust.yaml's
`on_error` says (the full weight by default); nothing here raises into the decision path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from trustplane.decision.policy_bundle import Bundle
from trustplane.model import CALLING_PEP, AccessRequest
from trustplane.trust.policy import TrustPolicy, trust_policy
from trustplane.trust.signals import Provider, Signal, TrustInputs

TRUST_KEY = "trust"  # the context attribute: Cedar's view, and the caller-supplied namespace
_INPUT_CLAIMS = ("amr", "acr", "auth_time", "iat", "exp")
DEVICE_ID_LIMIT = 200


class TrustAssessor:
    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        trusted_peps: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._providers = tuple(providers)
        self._trusted = frozenset(trusted_peps)
        self._clock = clock
        self._unverified: dict[TrustPolicy, tuple[dict[str, Any] | None, dict[str, Any]]] = {}
        self._plans: dict[TrustPolicy, list[tuple[Provider, frozenset[str]]]] = {}
        self._unverified_signals: dict[TrustPolicy, Weighed] = {}
        self._personal_plans: dict[TrustPolicy, list[tuple[Provider, frozenset[str]]]] = {}
        # Providers whose answer depends on who asks (behaviour): no shared assessment.
        self._personal = frozenset(
            id(p) for p in self._providers if getattr(p, "per_principal", False)
        )
        self._outcomes = tuple(p for p in self._providers if hasattr(p, "outcome"))

    def __call__(
        self, request: AccessRequest, bundle: Bundle | None, *, remember: bool = True
    ) -> tuple[AccessRequest, dict[str, Any]]:
        """The request with `context.trust`, and the assessment to record. `remember=False`
        asks what the score would be without it counting as a sighting or a use (a search's
        candidates): history-keeping providers read their state and leave it as it was."""
        policy = trust_policy(bundle)
        try:
            return self._assess(request, policy, remember)
        except Exception as exc:  # never a 500: the assessment itself failed, deny-worthy
            record = {
                "score": 100,
                "level": "critical",
                "summary": f"risk 100: assessment failed ({type(exc).__name__}: {exc})",
                "signals": [],
                "error": f"{type(exc).__name__}: {exc}",
            }
            context = {k: v for k, v in request.context.items() if k != TRUST_KEY}
            if policy.declared:
                context[TRUST_KEY] = {"score": 100, "level": "critical", "signals": {}}
            return replace(request, context=context), record

    def _assess(
        self, request: AccessRequest, policy: TrustPolicy, remember: bool = True
    ) -> tuple[AccessRequest, dict[str, Any]]:
        supplied = request.context.get(TRUST_KEY)
        if supplied is None and request.evidence is None:
            # Nothing verified, nothing supplied: every provider answers the same for the same
            # trust.yaml (most AuthZEN traffic), so the assessment is computed once per policy;
            # but providers whose answer depends on the principal (behaviour) run every time,
            # over the others' shared signals.
            if self._personal_plan(policy):
                cedar, record = self._score(
                    request,
                    policy,
                    None,
                    None,
                    None,
                    self._shared_signals(request, policy),
                    remember=remember,
                )
            else:
                known = self._unverified.get(policy)
                if known is None:
                    known = self._score(request, policy, None, None, None)
                    if len(self._unverified) > 16:
                        self._unverified.clear()
                    self._unverified[policy] = known
                cedar, record = known
        else:
            pep = CALLING_PEP.get()
            trusted = isinstance(supplied, dict) and pep in self._trusted
            believed = supplied if trusted else None
            cedar, record = self._score(request, policy, believed, pep, supplied, remember=remember)
        if TRUST_KEY not in request.context and cedar is None:
            return request, record
        context = {k: v for k, v in request.context.items() if k != TRUST_KEY}
        if cedar is not None:
            context[TRUST_KEY] = cedar
        return replace(request, context=context), record

    def _shared_signals(self, request: AccessRequest, policy: TrustPolicy) -> Weighed:
        """The signals of the providers that answer alike for every unverified request,
        weighed once per policy."""
        known = self._unverified_signals.get(policy)
        if known is None:
            inputs = self._inputs(request, None, None, self._clock(), policy)
            signals = self._run(
                [(p, a) for p, a in self._plan(policy) if id(p) not in self._personal],
                inputs,
                policy,
            )
            known = _weigh(policy, signals)
            if len(self._unverified_signals) > 16:
                self._unverified_signals.clear()
            self._unverified_signals[policy] = known
        return known

    def _run(
        self,
        plan: list[tuple[Provider, frozenset[str]]],
        inputs: TrustInputs,
        policy: TrustPolicy,
    ) -> dict[str, Signal]:
        signals: dict[str, Signal] = {}
        for provider, asked in plan:
            try:
                for signal in provider.signals(inputs, asked):
                    signals[signal.name] = signal
            except Exception as exc:  # fail closed, per signal, with the reason recorded
                error = f"{type(exc).__name__}: {exc}"
                for name in asked:
                    value = policy.rules[name].on_error
                    signals[name] = Signal(name, value, None, "provider failed", "error", error)
        return signals

    def prepare(self, request: AccessRequest, bundle: Bundle | None) -> Callable[[], None] | None:
        """The blocking work assessing `request` would do (reading a principal's travel history
        from the store), for the decision point to run in a worker thread before it assesses
        on the event loop; None when there is none (nearly always)."""
        evidence = request.evidence
        if evidence is None or not evidence.source_ip:
            return None
        for provider, _asked in self._plan(trust_policy(bundle)):
            prepare = getattr(provider, "prepare", None)
            if prepare is not None:
                work: Callable[[], None] | None = prepare(request.principal, evidence.source_ip)
                if work is not None:
                    return work
        return None

    def _personal_plan(self, policy: TrustPolicy) -> list[tuple[Provider, frozenset[str]]]:
        """The providers of this policy's plan whose answer depends on the principal."""
        known = self._personal_plans.get(policy)
        if known is None:
            known = [(p, a) for p, a in self._plan(policy) if id(p) in self._personal]
            if len(self._personal_plans) > 16:
                self._personal_plans.clear()
            self._personal_plans[policy] = known
        return known

    def _plan(self, policy: TrustPolicy) -> list[tuple[Provider, frozenset[str]]]:
        """Which providers this trust.yaml needs, and for which signals."""
        plan = self._plans.get(policy)
        if plan is None:
            wanted = frozenset(policy.rules)
            plan = [(p, wanted.intersection(p.names)) for p in self._providers]
            plan = [(p, asked) for p, asked in plan if asked]
            if len(self._plans) > 16:
                self._plans.clear()
            self._plans[policy] = plan
        return plan

    @property
    def epoch(self) -> int:
        """Moves whenever trust state that can change an answer changed (a device's posture):
        a cache of decisions compares it, as it does the revocation epoch, and drops what it
        answered before. Providers with state say so with an `epoch` of their own."""
        return sum(self._epochs())

    def _epochs(self) -> Iterable[int]:
        for provider in self._providers:
            epoch = getattr(provider, "epoch", None)
            if isinstance(epoch, int):
                yield epoch

    def outcome(self, request: AccessRequest, denied: bool) -> None:
        """The decision point tells the providers that learn from answers (behaviour's denial
        rate) how a request they scored was answered. Never raises into the decision path."""
        if not self._outcomes:
            return
        now = self._clock()
        for provider in self._outcomes:
            try:
                provider.outcome(str(request.principal), denied, now)
            except Exception:  # a counter that failed must not fail the answer
                continue

    def _score(
        self,
        request: AccessRequest,
        policy: TrustPolicy,
        believed: dict[str, Any] | None,
        pep: str | None,
        supplied: Any,
        shared: Weighed | None = None,
        *,
        remember: bool = True,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Cedar's `context.trust` (None without trust.yaml) and the record. Shared between
        decisions when memoised: nothing downstream may change them. With `shared` (the other
        providers' signals, already weighed), only the personal providers run."""
        inputs = self._inputs(request, believed, pep, self._clock(), policy, remember)
        rules = policy.rules
        plan = self._plan(policy)
        if shared is None:
            signals = self._run(plan, inputs, policy)
        else:
            signals = self._run(self._personal_plan(policy), inputs, policy)
        if believed is not None:
            source = f"pep:{pep}"
            given = believed.get("signals")
            for name, value in (given if isinstance(given, dict) else {}).items():
                if name in rules and isinstance(value, int | float):
                    number = min(1.0, max(0.0, float(value)))
                    signals[name] = Signal(name, number, value, f"supplied by PEP {pep}", source)
        score, counted, rows, quiet = _weigh(policy, signals)
        if shared is not None:
            score += shared[0]
            counted = shared[1] | counted
            rows = shared[2] + rows
            quiet = shared[3] + quiet
        score = min(100, max(0, score))
        level = policy.level(score)
        moved = sorted(((p, n) for n, p in counted.items() if p), key=lambda pn: -abs(pn[0]))
        parts = ", ".join(f"{n} {p:+d}" for p, n in moved)
        record: dict[str, Any] = {
            "score": score,
            "level": level,
            "summary": f"risk {score}: {parts}" if parts else f"risk {score}",
            "signals": rows,
            "quiet": quiet,
        }
        if supplied is not None and believed is None:
            record["ignored"] = (
                f"context.trust from {'PEP ' + pep if pep else 'an unnamed caller'}: "
                "not a PEP trusted to supply trust values (trust.trusted_peps)"
            )
        cedar = None
        if policy.declared:
            cedar = {"score": score, "level": level, "signals": counted}
        return cedar, record

    @staticmethod
    def _inputs(
        request: AccessRequest,
        believed: Mapping[str, Any] | None,
        pep: str | None,
        now: float,
        policy: TrustPolicy,
        remember: bool = True,
    ) -> TrustInputs:
        evidence = request.evidence
        claims = evidence.claims if evidence is not None else None
        source_ip = evidence.source_ip if evidence is not None else None
        workload = evidence.workload if evidence is not None else False
        source = evidence.source if evidence is not None else "none"
        subject = evidence.subject if evidence is not None else None
        device = evidence.device if evidence is not None else None
        device_source = evidence.device_source if evidence is not None else None
        given = (believed or {}).get("inputs")
        if isinstance(given, dict) and evidence is None:  # this PDP's own evidence comes first
            claims = {k: given[k] for k in _INPUT_CLAIMS if k in given} or None
            source_ip = given.get("source_ip") if isinstance(given.get("source_ip"), str) else None
            workload = given.get("workload") is True
            source = f"pep:{pep}"
            named = given.get("subject")
            subject = named if isinstance(named, str) else None
        if isinstance(given, dict) and device is None:  # the PDP's own device evidence first
            named = given.get("device_id")
            if isinstance(named, str) and 0 < len(named) <= DEVICE_ID_LIMIT:
                device, device_source = named, f"pep:{pep}"
        return TrustInputs(
            principal=request.principal,
            action=request.action,
            resource=request.resource,
            claims=claims,
            source_ip=source_ip,
            workload=workload,
            source=source,
            now=now,
            params=policy.params(),
            subject=subject,
            device=device,
            device_source=device_source,
            remember=remember,
        )


# The signals of some providers weighed: the score they add (enforced points), the points per
# enforced signal, the recorded rows, the quiet names.
Weighed = tuple[int, dict[str, int], list[dict[str, Any]], list[str]]


def _weigh(policy: TrustPolicy, signals: Mapping[str, Signal]) -> Weighed:
    """Every signal that moved the score (or would have, observed) or failed is recorded in
    full; the others by name only: a record stays small when nothing is unusual."""
    rows: list[dict[str, Any]] = []
    quiet: list[str] = []
    counted: dict[str, int] = {}
    score = 0
    for name, rule in policy.rules.items():
        signal = signals.get(name)
        if signal is None:
            continue
        points = round(signal.value * rule.weight)
        if rule.enforce:
            score += points
            counted[name] = points
        if not points and signal.error is None:
            quiet.append(name)
            continue
        row: dict[str, Any] = {
            "name": name,
            "value": signal.value,
            "observed": signal.observed,
            "points": points,
            "weight": rule.weight,
            "mode": "enforce" if rule.enforce else "observe",
            "source": signal.source,
            "explanation": signal.explanation,
        }
        if signal.error is not None:
            row["error"] = signal.error
        rows.append(row)
    return score, counted, rows, quiet
