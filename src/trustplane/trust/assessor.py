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

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from trustplane.decision.policy_bundle import Bundle
from trustplane.model import CALLING_PEP, AccessRequest, Evidence
from trustplane.trust.policy import TrustPolicy, signals_optional, trust_policy
from trustplane.trust.signals import Provider, Signal, TrustInputs

TRUST_KEY = "trust"  # the context attribute: Cedar's view, and the caller-supplied namespace
_INPUT_CLAIMS = ("amr", "acr", "auth_time", "iat", "exp")
_WHOLE_SECONDS = (int, type(None))  # times of a token whose ages hold for a clock second
DEVICE_ID_LIMIT = 200
SCORED_MEMO = 4096  # weighed signal sets kept for reuse (TrustAssessor._scored)
HELD_MEMO = 4096  # assessments held for the current second (TrustAssessor._held)


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
        self._split_plans: dict[TrustPolicy, tuple[Plan, Plan]] = {}
        # Reused weighings, keyed by the identity of the signals they weighed (see _weighed):
        # (policy, ids) → (the signals, their weighing), and (policy, shared weighing, caller,
        # ids of the personal signals) → (the signals, shared, Cedar's view, the record).
        self._weighings: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._scored: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        # Providers whose answer depends on who asks (behaviour): no shared assessment.
        self._personal = frozenset(
            id(p) for p in self._providers if getattr(p, "per_principal", False)
        )
        self._outcomes = tuple(p for p in self._providers if hasattr(p, "outcome"))
        # Per policy: when Cedar's view carries `signals` (see `_signals_view`).
        self._signals_view: dict[TrustPolicy, str] = {}
        # The assessments made in the current second of the clock (see `_held_or_assessed`).
        self._held: dict[tuple[Any, ...], tuple[dict[str, Any] | None, dict[str, Any]]] = {}
        self._held_second: int | None = None
        self._stateful = tuple(p for p in self._providers if hasattr(p, "epoch"))
        self._repeats = tuple(p for p in self._providers if hasattr(p, "repeated"))

    def __call__(
        self, request: AccessRequest, bundle: Bundle | None, *, remember: bool = True
    ) -> tuple[AccessRequest, dict[str, Any]]:
        """The request with `context.trust`, and the assessment to record. `remember=False`
        asks what the score would be without it counting as a sighting or a use (a search's
        candidates): history-keeping providers read their state and leave it as it was."""
        policy = trust_policy(bundle)
        if policy.declared and policy not in self._signals_view:
            if len(self._signals_view) > 16:
                self._signals_view.clear()
            self._signals_view[policy] = _signals_view(bundle)
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
            return _with_context(request, context), record

    def _assess(
        self, request: AccessRequest, policy: TrustPolicy, remember: bool = True
    ) -> tuple[AccessRequest, dict[str, Any]]:
        supplied = request.context.get(TRUST_KEY)
        pep = CALLING_PEP.get() if supplied is not None else None
        believed = supplied if isinstance(supplied, dict) and pep in self._trusted else None
        if believed is None and remember:
            cedar, record = self._held_or_assessed(request, policy, pep, supplied)
        else:
            cedar, record = self._assessed(request, policy, believed, pep, supplied, remember)
        if TRUST_KEY not in request.context and cedar is None:
            return request, record
        context = {k: v for k, v in request.context.items() if k != TRUST_KEY}
        if cedar is not None:
            context[TRUST_KEY] = cedar
        return _with_context(request, context), record

    def _held_or_assessed(
        self, request: AccessRequest, policy: TrustPolicy, pep: str | None, supplied: Any
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """An assessment holds for the second of the clock it was made in: the same principal
        asking the same action on the same type of resource with the same evidence within
        that second gets the same score and record, while the providers that count requests
        (behaviour) still count each one. A busy caller's requests are then assessed once a
        second, not one by one; what changes within the second shows from the next (a rate
        crossing its threshold; a first use stays flagged for the rest of its second), and a
        device's posture changing shows at once (the trust epoch is part of the key).
        Workloads are assessed every time: their attestation state has no epoch."""
        evidence = request.evidence
        if evidence is not None and evidence.workload:
            return self._assessed(request, policy, None, pep, supplied)
        if evidence is None and supplied is None and not self._personal_plan(policy):
            return self._assessed(request, policy, None, pep, supplied)  # one per policy
        now = self._clock()
        second = int(now)
        if second != self._held_second:
            self._held.clear()
            self._held_second = second
        evidence_key = None if evidence is None else _evidence_key(evidence)
        if evidence is not None and evidence_key is None:
            return self._assessed(request, policy, None, pep, supplied, now=now)
        principal, action = request.principal, request.action
        key = (
            policy,
            _epochs(self._stateful),
            principal.type,
            principal.id,
            action.type,
            action.id,
            request.resource.type,
            supplied is not None,
            pep,
            evidence_key,
        )
        try:
            known = self._held.get(key)
        except TypeError:  # an unhashable claim: assessed alone
            return self._assessed(request, policy, None, pep, supplied, now=now)
        if known is not None:
            for provider in self._repeats:
                try:
                    provider.repeated(principal, action, request.resource.type, now)
                except Exception:  # a counter that failed must not fail the answer
                    continue
            return known
        found = self._assessed(request, policy, None, pep, supplied, now=now)
        if len(self._held) >= HELD_MEMO:
            self._held.clear()
        self._held[key] = found
        return found

    def _assessed(
        self,
        request: AccessRequest,
        policy: TrustPolicy,
        believed: dict[str, Any] | None,
        pep: str | None,
        supplied: Any,
        remember: bool = True,
        *,
        now: float | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Cedar's view and the record, computed for this request."""
        if supplied is None and request.evidence is None:
            # Nothing verified, nothing supplied: every provider answers the same for the same
            # trust.yaml (most AuthZEN traffic), so the assessment is computed once per policy;
            # but providers whose answer depends on the principal (behaviour) run every time,
            # over the others' shared signals.
            if self._personal_plan(policy):
                return self._score(
                    request,
                    policy,
                    None,
                    None,
                    None,
                    self._shared_signals(request, policy),
                    remember=remember,
                    now=now,
                )
            known = self._unverified.get(policy)
            if known is None:
                known = self._score(request, policy, None, None, None, now=now)
                if len(self._unverified) > 16:
                    self._unverified.clear()
                self._unverified[policy] = known
            return known
        return self._score(request, policy, believed, pep, supplied, remember=remember, now=now)

    def _shared_signals(self, request: AccessRequest, policy: TrustPolicy) -> Weighed:
        """The signals of the providers that answer alike for every unverified request,
        weighed once per policy."""
        known = self._unverified_signals.get(policy)
        if known is None:
            inputs = self._inputs(request, None, None, self._clock(), policy)
            known = _weigh(policy, self._run(self._common_plan(policy), inputs, policy))
            if len(self._unverified_signals) > 16:
                self._unverified_signals.clear()
            self._unverified_signals[policy] = known
        return known

    def _weighed(self, policy: TrustPolicy, signals: dict[str, Signal]) -> Weighed:
        """`_weigh`, reused for the same signal objects: providers answer the everyday cases
        with objects they share (memoised per token and second, constant signals). The entry
        holds the signals it is keyed by, so while it exists their ids name them alone."""
        key = (policy, *map(id, signals.values()))
        known = self._weighings.get(key)
        if known is not None:
            return known[1]  # type: ignore[no-any-return]
        weighed = _weigh(policy, signals)
        if len(self._weighings) >= SCORED_MEMO:
            self._weighings.clear()
        self._weighings[key] = (tuple(signals.values()), weighed)
        return weighed

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
        return self._split_plan(policy)[1]

    def _common_plan(self, policy: TrustPolicy) -> list[tuple[Provider, frozenset[str]]]:
        """The providers of this policy's plan whose answer does not."""
        return self._split_plan(policy)[0]

    def _split_plan(self, policy: TrustPolicy) -> tuple[Plan, Plan]:
        known = self._split_plans.get(policy)
        if known is None:
            plan = self._plan(policy)
            known = (
                [(p, a) for p, a in plan if id(p) not in self._personal],
                [(p, a) for p, a in plan if id(p) in self._personal],
            )
            if len(self._split_plans) > 16:
                self._split_plans.clear()
            self._split_plans[policy] = known
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
        return _epochs(self._stateful)

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
        now: float | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Cedar's `context.trust` (None without trust.yaml) and the record. Shared between
        decisions when memoised: nothing downstream may change them. `shared`: the signals of
        the providers that do not depend on the principal, already weighed (computed here
        when not given); the personal providers (behaviour) run on every call."""
        when = self._clock() if now is None else now
        inputs = self._inputs(request, believed, pep, when, policy, remember)
        if believed is not None:  # a trusted PEP's signals replace computed ones: no reuse
            return self._believed(policy, inputs, believed, pep, supplied)
        if shared is None:
            shared = self._weighed(policy, self._run(self._common_plan(policy), inputs, policy))
        personal = self._run(self._personal_plan(policy), inputs, policy)
        # The same shared weighing and the same personal signal objects give the same answer
        # (the entry holds what its ids name, as in `_weighed`).
        ignored_by = (supplied is not None, pep if supplied is not None else None)
        key = (policy, id(shared), ignored_by, *map(id, personal.values()))
        known = self._scored.get(key)
        if known is not None:
            return known[2], known[3]
        cedar, record = self._assemble(policy, shared, _weigh(policy, personal), pep, supplied)
        # Signals that observed something (a rate, a new action) are built for one request:
        # an entry keyed by them would never be asked for again.
        if all(signal.observed is None for signal in personal.values()):
            if len(self._scored) >= SCORED_MEMO:
                self._scored.clear()
            self._scored[key] = (tuple(personal.values()), shared, cedar, record)
        return cedar, record

    def _believed(
        self,
        policy: TrustPolicy,
        inputs: TrustInputs,
        believed: dict[str, Any],
        pep: str | None,
        supplied: Any,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The assessment with a trusted PEP's signals in place of the computed ones."""
        signals = self._run(self._plan(policy), inputs, policy)
        source = f"pep:{pep}"
        given = believed.get("signals")
        for name, value in (given if isinstance(given, dict) else {}).items():
            if name in policy.rules and isinstance(value, int | float):
                number = min(1.0, max(0.0, float(value)))
                signals[name] = Signal(name, number, value, f"supplied by PEP {pep}", source)
        return self._assemble(policy, _weigh(policy, signals), None, pep, supplied, believed)

    def _assemble(
        self,
        policy: TrustPolicy,
        first: Weighed,
        second: Weighed | None,
        pep: str | None,
        supplied: Any,
        believed: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Cedar's view and the record of weighed signals (two parts: shared and personal)."""
        score, counted, rows, quiet = first
        if second is not None:
            score += second[0]
            counted = counted | second[1]
            rows = rows + second[2]
            quiet = quiet + second[3]
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
            # Only the signals that moved the score: each one Cedar's context carries costs
            # it several µs per evaluation, and the schema's fragment declares all optional.
            # The `signals` record itself costs most (a nested record, about 20 µs of each
            # evaluation against the schema): left out where the fragment allows it and no
            # policy reads it, or when it would be empty.
            cedar = {"score": score, "level": level}
            view = self._signals_view.get(policy, ALWAYS)
            if view != NEVER:
                moved_signals = dict(moved_points(counted))
                if moved_signals or view == ALWAYS:
                    cedar["signals"] = moved_signals
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


Plan = list[tuple[Provider, frozenset[str]]]  # the providers to run, and the signals asked

# When Cedar's `context.trust` carries `signals`: in every request (the fragment requires it),
# when a signal moved the score (a policy reads it), or never (no policy can tell).
ALWAYS, MOVED, NEVER = "always", "moved", "never"
_SIGNALS_WORD = re.compile(r"\bsignals\b")


def _signals_view(bundle: Bundle | None) -> str:
    """A policy that never names `signals` cannot tell whether Cedar's view has it: where the
    fragment declares it optional (`signals?`), it is left out for such a bundle."""
    if bundle is None or not signals_optional(bundle.schema_text):
        return ALWAYS
    if any(_SIGNALS_WORD.search(info.text) for info in bundle.policies):
        return MOVED
    return NEVER


def _epochs(providers: Iterable[Provider]) -> int:
    """The sum of the providers' epochs (those that keep state have one)."""
    total = 0
    for provider in providers:
        epoch = getattr(provider, "epoch", None)
        if isinstance(epoch, int):
            total += epoch
    return total


def _evidence_key(evidence: Evidence) -> tuple[Any, ...] | None:
    """What of the evidence the providers read (the claims `_INPUT_CLAIMS` names; the
    authentication signals read no others), as a key of `TrustAssessor._held`; None when
    the assessment cannot hold for a second: a token's times not in whole seconds make ages
    that change within one."""
    claims = evidence.claims
    read = None
    if claims is not None:
        get = claims.get
        amr, auth_time, iat, exp = get("amr"), get("auth_time"), get("iat"), get("exp")
        if not (
            type(auth_time) in _WHOLE_SECONDS
            and type(iat) in _WHOLE_SECONDS
            and type(exp) in _WHOLE_SECONDS
        ):
            return None
        read = (tuple(amr) if isinstance(amr, list) else amr, get("acr"), auth_time, iat, exp)
    return (
        read,
        evidence.source_ip,
        evidence.source,
        evidence.subject,
        evidence.device,
        evidence.device_source,
    )


def _with_context(request: AccessRequest, context: dict[str, Any]) -> AccessRequest:
    """`request` with `context`, built field by field: dataclasses.replace costs twice as
    much, on every request (test_assessor checks that every field is carried)."""
    return AccessRequest(
        request.principal, request.action, request.resource, context, request.evidence
    )


def moved_points(counted: Mapping[str, int]) -> Iterable[tuple[str, int]]:
    """The enforced signals that moved the score, with their points."""
    return ((name, points) for name, points in counted.items() if points)


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
