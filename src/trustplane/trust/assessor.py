"""One request's assessment: run the providers, weigh their signals, explain the score.

`TrustAssessor` is what the decision point calls before evaluating (decision/point.py): it
returns the request Cedar sees — `context.trust` set to the computed score, level and enforced
signals when the bundle has trust.yaml, and whatever the caller wrote there removed otherwise —
and the record that goes in the decision (`Decision.trust`): score, level, a one-line summary
and every signal with its value, points, mode and source.

Caller-supplied values under `context.trust` are believed only from a PEP the configuration
names (`trust.trusted_peps`): `inputs` (`source_ip`, `amr`, `acr`, `auth_time`, `iat`, `exp`)
stand in for evidence this PDP did not verify itself, and `signals` (name → value 0–1) replace
computed ones. From anyone else they are ignored, and the record says so.

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
        self._unverified: dict[tuple[Any, ...], tuple[dict[str, Any] | None, dict[str, Any]]] = {}
        self._plans: dict[TrustPolicy, list[tuple[Provider, frozenset[str]]]] = {}
        self._assembled: dict[tuple[Any, ...], tuple[list[Any], Any, dict[str, Any]]] = {}

    def __call__(
        self, request: AccessRequest, bundle: Bundle | None
    ) -> tuple[AccessRequest, dict[str, Any]]:
        policy = trust_policy(bundle)
        try:
            return self._assess(request, policy)
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

    def prepare(self, request: AccessRequest, bundle: Bundle | None) -> Callable[[], None] | None:
        """The blocking work assessing `request` would do (reading a principal's travel history
        from the store, loading geoip2fast), for the decision point to run in a worker thread
        before it assesses on the event loop; None when there is none (nearly always)."""
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

    def _assess(
        self, request: AccessRequest, policy: TrustPolicy
    ) -> tuple[AccessRequest, dict[str, Any]]:
        supplied = request.context.get(TRUST_KEY)
        pep = None
        believed = None
        if supplied is not None:
            pep = CALLING_PEP.get()
            if isinstance(supplied, dict) and pep in self._trusted:
                believed = supplied
        if believed is None and request.evidence is None:
            # Nothing verified, nothing believed: every provider answers the same for the same
            # trust.yaml (most AuthZEN traffic), so the assessment is computed once per policy
            # (and, where the caller wrote a context.trust that is ignored, per calling PEP,
            # which the record names).
            key = (policy, supplied is not None, pep)
            known = self._unverified.get(key)
            if known is None:
                known = self._score(request, policy, None, pep, supplied)
                if len(self._unverified) > 64:
                    self._unverified.clear()
                self._unverified[key] = known
            cedar, record = known
        else:
            cedar, record = self._score(request, policy, believed, pep, supplied)
        if TRUST_KEY not in request.context and cedar is None:
            return request, record
        context = {k: v for k, v in request.context.items() if k != TRUST_KEY}
        if cedar is not None:
            context[TRUST_KEY] = cedar
        # Field by field: dataclasses.replace costs twice as much, on every request.
        return (
            AccessRequest(
                request.principal, request.action, request.resource, context, request.evidence
            ),
            record,
        )

    def _score(
        self,
        request: AccessRequest,
        policy: TrustPolicy,
        believed: dict[str, Any] | None,
        pep: str | None,
        supplied: Any,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Cedar's `context.trust` (None without trust.yaml) and the record. Shared between
        decisions when memoised: nothing downstream may change them."""
        inputs = self._inputs(request, believed, pep, self._clock(), policy)
        rules = policy.rules
        signals: dict[str, Signal] = {}
        results: list[Iterable[Signal]] = []
        for provider, asked in self._plan(policy):
            try:
                found = provider.signals(inputs, asked)
                if type(found) is not tuple:
                    found = tuple(found)
                results.append(found)
                for signal in found:
                    signals[signal.name] = signal
            except Exception as exc:  # fail closed, per signal, with the reason recorded
                error = f"{type(exc).__name__}: {exc}"
                results.append([])  # never the same object twice: the record is not shared
                for name in asked:
                    value = rules[name].on_error
                    signals[name] = Signal(name, value, None, "provider failed", "error", error)
        # Providers that memoise answer with the very same signals for the same token, address
        # and second: the score and the record built from them are then the same too.
        memo_key: tuple[Any, ...] | None = None
        if believed is None and supplied is None:
            memo_key = (policy, *map(id, results))
            known = self._assembled.get(memo_key)
            if known is not None and all(a is b for a, b in zip(known[0], results, strict=True)):
                return known[1], known[2]
        cedar, record = self._weigh(policy, signals, believed, pep, supplied)
        if memo_key is not None:
            if len(self._assembled) >= 4096:
                self._assembled.clear()
            self._assembled[memo_key] = (results, cedar, record)
        return cedar, record

    @staticmethod
    def _weigh(
        policy: TrustPolicy,
        signals: dict[str, Signal],
        believed: dict[str, Any] | None,
        pep: str | None,
        supplied: Any,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        rules = policy.rules
        if believed is not None:
            source = f"pep:{pep}"
            given = believed.get("signals")
            for name, value in (given if isinstance(given, dict) else {}).items():
                if name in rules and isinstance(value, int | float):
                    number = min(1.0, max(0.0, float(value)))
                    signals[name] = Signal(name, number, value, f"supplied by PEP {pep}", source)
        # Every signal that moved the score (or would have, observed) or failed is recorded in
        # full; the others by name only: a record stays small when nothing is unusual.
        rows: list[dict[str, Any]] = []
        quiet: list[str] = []
        counted: dict[str, int] = {}
        score = 0
        for name, rule in rules.items():
            found = signals.get(name)
            if found is None:
                continue
            signal = found
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
    ) -> TrustInputs:
        evidence = request.evidence
        claims = evidence.claims if evidence is not None else None
        source_ip = evidence.source_ip if evidence is not None else None
        workload = evidence.workload if evidence is not None else False
        source = evidence.source if evidence is not None else "none"
        given = (believed or {}).get("inputs")
        if isinstance(given, dict) and evidence is None:  # this PDP's own evidence comes first
            claims = {k: given[k] for k in _INPUT_CLAIMS if k in given} or None
            source_ip = given.get("source_ip") if isinstance(given.get("source_ip"), str) else None
            workload = given.get("workload") is True
            source = f"pep:{pep}"
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
        )
