"""Evaluation of one compiled bundle: the enforced answer and the shadow answer.

The enforced decision uses enforce-mode policies; the shadow decision adds observe-mode ones.
Both come from one Cedar evaluation of the full policy set in the common case: when the full set
allows, its satisfied permits tell whether an enforced permit holds; only a deny caused solely by
observe-mode forbids needs a second evaluation of the enforced set.

Fail closed: a request Cedar cannot build, an error in any enforced policy or an internal failure
is a deny with the reason in `errors`.

Answers are cached per evaluator (so per bundle revision) and per expiry interval: a Cedar answer
depends only on the request, the policy set and the entities, and Cedar has no clock of its own.
A cached answer still gets a new decision id and is recorded like any other.
"""

from __future__ import annotations

import bisect
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cedarpy
import orjson

from trustplane.decision.canary import ENFORCED, cohort
from trustplane.decision.policy_bundle import Bundle, PolicyInfo, first_nonconforming
from trustplane.model import (
    AccessRequest,
    Decision,
    Effect,
    Elevation,
    ExceptionRef,
    GrantRef,
    PolicyReason,
    new_decision_id,
)

# The decision point's reuse rule (decision/risk_cache.py through decision/point.py):
# (ttl, reasons, shadow_reasons, errors, cached) → (final ttl, cache note).
Settle = Callable[
    [int, tuple[PolicyReason, ...], tuple[PolicyReason, ...], tuple[str, ...], bool],
    tuple[int, dict[str, Any] | None],
]
_ERROR_POLICY_RE = re.compile(r"policy `([^`]+)`")
_BASE_CACHE_SIZE = 256


@dataclass(frozen=True)
class _Generation:
    """The policy sets that apply between two consecutive @expires boundaries."""

    enforced: Any  # cedarpy.PolicySet
    full: Any | None  # None when no observe-mode policy applies: shadow == enforced
    enforced_ids: frozenset[str]


@dataclass(frozen=True)
class _Outcome:
    effect: Effect
    reasons: tuple[str, ...]
    errors: tuple[str, ...]


class Evaluator:
    """Answers AccessRequests against one bundle. Thread-safe; holds no per-request state."""

    def __init__(
        self,
        bundle: Bundle,
        clock: Callable[[], float] = time.time,
        cache_size: int = 0,
        max_ttl_seconds: int = 0,
    ) -> None:
        self.bundle = bundle
        self.revision = bundle.revision
        self._clock = clock
        self._schema = bundle.schema
        self._infos = {p.policy_id: p for p in bundle.policies}
        # Canary policies with their percentage: each request learns its cohort per policy.
        self._canaries = tuple(
            (p.policy_id, p.canary or 0.0) for p in bundle.policies if p.mode == "canary"
        )
        self._reasons = {p.policy_id: _reason(p) for p in bundle.policies}
        # @expires instants as UNIX timestamps: the decision path compares floats, not datetimes.
        self._boundaries = sorted(
            {p.expires.timestamp() for p in bundle.policies if p.expires is not None}
        )
        self._static = {(e["uid"]["type"], e["uid"]["id"]): e for e in bundle.entities}
        self._entities = cedarpy.Entities.from_json_str(
            json.dumps(bundle.entities), schema=self._schema
        )
        self._bases: OrderedDict[frozenset[tuple[str, str]], Any] = OrderedDict()
        # Entity sets with a request's principal/resource attributes added, by their JSON: a
        # caller's attributes (from its token, say) repeat, and building the set costs more
        # than evaluating. Insertion-ordered; the oldest go first.
        self._with_added: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._generations: dict[int, _Generation] = {}
        self._generation_at(clock())
        self._cache_size = cache_size
        self._max_ttl = max_ttl_seconds
        self._cache: OrderedDict[bytes, Decision] = OrderedDict()
        # Policy sets without the forbids that approved exceptions set aside, per interval.
        self._exempt: OrderedDict[tuple[int, frozenset[str], frozenset[str]], _Generation] = (
            OrderedDict()
        )

    # -- public -------------------------------------------------------------------------------

    def evaluate(
        self,
        request: AccessRequest,
        at: datetime | None = None,
        revocation_epoch: int = 0,
        elevation: Elevation | None = None,
        trust: dict[str, Any] | None = None,
        reuse: bool = True,
        settle: Settle | None = None,
        cache_epoch: int = 0,
    ) -> Decision:
        """`revocation_epoch`: the caller's revocation list version, carried in the answer.
        `elevation`: grants and exceptions for this principal; only those whose window holds
        at this evaluation's time apply (checked here, against this clock). `trust`: the trust
        plane's assessment of this request, carried in the answer (never part of the cache
        key: the score Cedar sees is in the request's context). `reuse` False: evaluated live,
        neither answered from the cache nor kept in it (decision/risk_cache.py); an answer a
        Tier 0 policy determined is never kept either. `settle(ttl, reasons, shadow_reasons,
        errors, cached)`: the decision point's reuse rule, giving the answer's final TTL and its
        cache note as the answer is built (a second copy of the decision costs more than a
        cached evaluation); `cache_epoch` is carried in the answer."""
        started = time.perf_counter_ns()
        now_ts = self._clock() if at is None else at.timestamp()
        grants, exceptions, edge = _in_force(elevation, now_ts)
        # The cohort depends on the principal only, which the cache key holds.
        cohorts = self._cohorts(request) if self._canaries else ()
        key = self._cache_key(request, now_ts, grants, exceptions) if reuse else None
        known = self._cached(key)
        if known is not None:
            ttl = 0 if known.errors else self._ttl(now_ts, edge)
            note = None
            if settle is not None:
                ttl, note = settle(ttl, known.reasons, known.shadow_reasons, known.errors, True)
            # Built field by field rather than with dataclasses.replace, which costs twice as
            # much on this, the commonest path (test_engine checks every field is carried).
            return Decision(
                decision_id=new_decision_id(),
                effect=known.effect,
                reasons=known.reasons,
                shadow_effect=known.shadow_effect,
                shadow_reasons=known.shadow_reasons,
                shadow_changes=known.shadow_changes,
                errors=known.errors,
                revision=known.revision,
                eval_micros=(time.perf_counter_ns() - started) // 1000,
                timestamp=now_ts,
                cached=True,
                ttl_seconds=ttl,
                revocation_epoch=revocation_epoch,
                grant_ids=known.grant_ids,
                exception_ids=known.exception_ids,
                trust=trust,
                canary=known.canary,
                cache_epoch=cache_epoch,
                cache=note,
            )
        failed = False
        try:
            enforced, shadow = self._evaluate(request, now_ts, grants, exceptions, cohorts)
        except Exception as exc:  # fail closed on anything unexpected, with the reason
            failed = True
            enforced = shadow = _Outcome(
                Effect.DENY, (), (f"internal error: {type(exc).__name__}: {exc}",)
            )
        reasons = self._explain(enforced.reasons)
        shadow_reasons = self._explain(shadow.reasons)
        errors = tuple(dict.fromkeys(enforced.errors + shadow.errors))
        ttl = 0 if failed or errors else self._ttl(now_ts, edge)
        note = None
        if settle is not None:
            ttl, note = settle(ttl, reasons, shadow_reasons, errors, False)
        decision = Decision(
            decision_id=new_decision_id(),
            effect=enforced.effect,
            reasons=reasons,
            shadow_effect=shadow.effect,
            shadow_reasons=shadow_reasons,
            shadow_changes=self._shadow_changes(enforced, shadow, cohorts),
            errors=errors,
            revision=self.revision,
            eval_micros=(time.perf_counter_ns() - started) // 1000,
            timestamp=now_ts,
            ttl_seconds=ttl,
            revocation_epoch=revocation_epoch,
            grant_ids=tuple(g.grant_id for g in grants),
            exception_ids=tuple(e.exception_id for e in exceptions),
            trust=trust,
            canary=cohorts,
            cache_epoch=cache_epoch,
            cache=note,
        )
        if not failed and not _tier0(decision):
            self._remember(key, decision)
        return decision

    def _ttl(self, now: float, edge: float | None = None) -> int:
        """Seconds an answer given at `now` stays valid: the configured maximum, cut at the next
        @expires boundary (a policy that stops applying changes answers) and at `edge`, where
        a grant or exception of the request starts or ends."""
        if not self._max_ttl:
            return 0
        ttl = self._max_ttl
        index = bisect.bisect_right(self._boundaries, now)
        if index < len(self._boundaries):
            ttl = min(ttl, int(self._boundaries[index] - now))
        if edge is not None:
            ttl = min(ttl, int(edge - now))
        return max(0, ttl)

    def policy(self, policy_id: str) -> PolicyInfo | None:
        return self._infos.get(policy_id)

    def _cohorts(self, request: AccessRequest) -> tuple[tuple[str, str], ...]:
        """Each canary policy's cohort for this request's principal (decision/canary.py)."""
        principal = request.principal
        uid = f'{principal.type}::"{principal.id}"'
        return tuple((policy, cohort(uid, policy, share)) for policy, share in self._canaries)

    # -- evaluation ---------------------------------------------------------------------------

    def _evaluate(
        self,
        request: AccessRequest,
        now: float,
        grants: tuple[GrantRef, ...] = (),
        exceptions: tuple[ExceptionRef, ...] = (),
        cohorts: tuple[tuple[str, str], ...] = (),
    ) -> tuple[_Outcome, _Outcome]:
        generation = self._generation_at(now)
        promoted = frozenset(p for p, c in cohorts if c == ENFORCED)
        if exceptions or promoted:
            generation = self._generation_without(
                now, frozenset(e.policy_id for e in exceptions), promoted
            )
        parents = tuple(dict.fromkeys((g.parent_type, g.parent_id) for g in grants))
        try:
            entities = self._entities_for(request, parents)
        except ValueError as exc:
            bad = _Outcome(Effect.DENY, (), (str(exc),))
            return bad, bad
        cedar_request = {
            "principal": request.principal.uid(),
            "action": request.action.uid(),
            "resource": request.resource.uid(),
            "context": _context_json(request.context),
        }
        if generation.full is None:
            outcome = self._run(cedar_request, generation.enforced, entities)
            return outcome, outcome

        result = cedarpy.is_authorized(cedar_request, generation.full, entities, self._schema)
        return self._split(result, generation, cedar_request, entities)

    def _split(
        self, result: Any, generation: _Generation, cedar_request: dict[str, Any], entities: Any
    ) -> tuple[_Outcome, _Outcome]:
        """The enforced and shadow outcomes from one evaluation of the full policy set."""
        shadow = _outcome(result)
        errors = tuple(result.diagnostics.errors)
        enforced_errors = tuple(
            e
            for e in errors
            if _errored_policy(e) in generation.enforced_ids or _errored_policy(e) is None
        )
        satisfied = tuple(result.diagnostics.reasons)
        enforced_satisfied = tuple(p for p in satisfied if p in generation.enforced_ids)
        if enforced_errors:
            enforced = _Outcome(
                Effect.DENY, _forbids(enforced_satisfied, self._infos), enforced_errors
            )
        elif result.decision == cedarpy.Decision.Allow:
            effect = Effect.ALLOW if enforced_satisfied else Effect.DENY
            enforced = _Outcome(effect, enforced_satisfied, ())
        elif enforced_satisfied or not satisfied:
            # Denied by an enforced forbid, or no permit of any mode holds.
            enforced = _Outcome(Effect.DENY, enforced_satisfied, ())
        else:
            # Only observe-mode forbids fired: the enforced answer needs its own evaluation.
            enforced = self._run(cedar_request, generation.enforced, entities)
        return enforced, shadow

    def evaluate_batch(
        self, items: Sequence[tuple[AccessRequest, float, Elevation | None]]
    ) -> list[Decision]:
        """Many requests, each at its own time with its own elevation (impact replay): one
        Cedar call per policy generation and entity set instead of one per request, which is
        most of what a single evaluation costs beyond Cedar's own work. Each answer is the
        one `evaluate` gives, without the answer cache, trust or revocation epoch."""
        decisions: list[Decision | None] = [None] * len(items)
        groups: dict[tuple[int, int], tuple[_Generation, Any, list[Any]]] = {}
        for index, (request, now, elevation) in enumerate(items):
            grants, exceptions, _edge = _in_force(elevation, now)
            try:
                generation = self._generation_at(now)
                if exceptions:
                    exempt = frozenset(e.policy_id for e in exceptions)
                    generation = self._generation_without(now, exempt)
                parents = tuple(dict.fromkeys((g.parent_type, g.parent_id) for g in grants))
                entities = self._entities_for(request, parents)
            except Exception:  # the single path says why, the same way
                decisions[index] = self.evaluate(
                    request, at=datetime.fromtimestamp(now, UTC), elevation=elevation
                )
                continue
            cedar_request = {
                "principal": request.principal.uid(),
                "action": request.action.uid(),
                "resource": request.resource.uid(),
                "context": _context_json(request.context),
            }
            key = (id(generation), id(entities))
            group = groups.setdefault(key, (generation, entities, []))
            group[2].append((index, cedar_request, now, grants, exceptions))
        for generation, entities, members in groups.values():
            policies = generation.enforced if generation.full is None else generation.full
            try:
                results = cedarpy.is_authorized_batch(
                    [m[1] for m in members], policies, entities, self._schema
                )
            except Exception:  # one request Cedar cannot build: each on its own, fail closed
                for index, _cedar, now, _grants, _exceptions in members:
                    request, _at, elevation = items[index]
                    decisions[index] = self.evaluate(
                        request, at=datetime.fromtimestamp(now, UTC), elevation=elevation
                    )
                continue
            for (index, cedar_request, now, grants, exceptions), result in zip(
                members, results, strict=True
            ):
                if generation.full is None:
                    enforced = shadow = _outcome(result)
                else:
                    enforced, shadow = self._split(result, generation, cedar_request, entities)
                decisions[index] = Decision(
                    decision_id=new_decision_id(),
                    effect=enforced.effect,
                    reasons=self._explain(enforced.reasons),
                    shadow_effect=shadow.effect,
                    shadow_reasons=self._explain(shadow.reasons),
                    shadow_changes=self._shadow_changes(enforced, shadow),
                    errors=tuple(dict.fromkeys(enforced.errors + shadow.errors)),
                    revision=self.revision,
                    eval_micros=0,
                    timestamp=now,
                    grant_ids=tuple(g.grant_id for g in grants),
                    exception_ids=tuple(e.exception_id for e in exceptions),
                )
        return [d for d in decisions if d is not None]

    def _run(self, cedar_request: dict[str, Any], policies: Any, entities: Any) -> _Outcome:
        result = cedarpy.is_authorized(cedar_request, policies, entities, self._schema)
        return _outcome(result)

    def _explain(self, policy_ids: Iterable[str]) -> tuple[PolicyReason, ...]:
        return tuple(self._reasons[p] for p in policy_ids if p in self._reasons)

    def _shadow_changes(
        self, enforced: _Outcome, shadow: _Outcome, cohorts: tuple[tuple[str, str], ...] = ()
    ) -> tuple[PolicyReason, ...]:
        if enforced.effect is shadow.effect:
            return ()
        promoted = {p for p, c in cohorts if c == ENFORCED}

        def observed(policy: str | None) -> bool:
            info = self._infos.get(policy) if policy else None
            return info is not None and info.mode != "enforce" and policy not in promoted

        changed = [p for p in shadow.reasons if observed(p)]
        changed += [p for e in shadow.errors if observed(p := _errored_policy(e)) and p]
        return self._explain(dict.fromkeys(changed))

    # -- answer cache -------------------------------------------------------------------------

    def _cache_key(
        self,
        request: AccessRequest,
        now: float,
        grants: tuple[GrantRef, ...] = (),
        exceptions: tuple[ExceptionRef, ...] = (),
    ) -> bytes | None:
        """The request in canonical JSON, prefixed by its expiry interval and the grants and
        exceptions in force; None when caching is off or the request holds values JSON cannot
        carry."""
        if not self._cache_size:
            return None
        p, a, r = request.principal, request.action, request.resource
        try:
            body = orjson.dumps(
                (
                    p.type,
                    p.id,
                    p.properties,
                    a.type,
                    a.id,
                    r.type,
                    r.id,
                    r.properties,
                    request.context,
                ),
                option=orjson.OPT_SORT_KEYS,
            )
        except TypeError:
            return None
        interval = bisect.bisect_right(self._boundaries, now)
        if grants or exceptions:
            held = ",".join([g.grant_id for g in grants] + [e.exception_id for e in exceptions])
            return b"%d:%b:%b" % (interval, held.encode(), body)
        return b"%d:%b" % (interval, body)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _cached(self, key: bytes | None) -> Decision | None:
        if key is None:
            return None
        with self._lock:
            decision = self._cache.get(key)
            if decision is not None:
                self._cache.move_to_end(key)
            return decision

    def _remember(self, key: bytes | None, decision: Decision) -> None:
        if key is None:
            return
        with self._lock:
            self._cache[key] = decision
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    # -- policy generations (expiry) ----------------------------------------------------------

    def _generation_at(self, now: float) -> _Generation:
        """The compiled policy sets for `now`. Generations are cached per interval between
        expiry boundaries, so evaluating at another time (tests, `--at`) never evicts the
        current one."""
        index = bisect.bisect_right(self._boundaries, now)
        generation = self._generations.get(index)
        if generation is None:
            generation = self._compile(now)
            self._generations[index] = generation
        return generation

    def _generation_without(
        self, now: float, exempt: frozenset[str], promoted: frozenset[str] = frozenset()
    ) -> _Generation:
        """The policy sets for `now` without the policies in `exempt` (approved exceptions),
        with the canary policies in `promoted` enforced (the request's enforced cohorts)."""
        key = (bisect.bisect_right(self._boundaries, now), exempt, promoted)
        with self._lock:
            found = self._exempt.get(key)
            if found is not None:
                self._exempt.move_to_end(key)
                return found
        generation = self._compile(now, exempt, promoted)
        with self._lock:
            self._exempt[key] = generation
            while len(self._exempt) > _BASE_CACHE_SIZE:
                self._exempt.popitem(last=False)
        return generation

    def _compile(
        self,
        now: float,
        exempt: frozenset[str] = frozenset(),
        promoted: frozenset[str] = frozenset(),
    ) -> _Generation:
        instant = datetime.fromtimestamp(now, UTC)
        live = [
            p
            for p in self.bundle.policies
            if p.applies_at(instant) and not (p.policy_id in exempt and p.effect == "forbid")
        ]
        enforced = [p for p in live if p.mode == "enforce" or p.policy_id in promoted]
        observe = [p for p in live if p.mode != "enforce" and p.policy_id not in promoted]
        return _Generation(
            enforced=_policy_set(enforced),
            full=_policy_set(live) if observe else None,
            enforced_ids=frozenset(p.policy_id for p in enforced),
        )

    # -- entities -----------------------------------------------------------------------------

    def _entities_for(
        self, request: AccessRequest, granted: tuple[tuple[str, str], ...] = ()
    ) -> Any:
        """Static entities plus the request's principal and resource, with request properties
        merged over static attributes (static parents, such as group membership, are kept) and
        `granted` parents (roles from grants in force) added to the principal."""
        delta: dict[tuple[str, str], dict[str, Any]] = {}
        roles: dict[tuple[str, str], str] = {}
        replaced: set[tuple[str, str]] = set()
        for role, ref in (("principal", request.principal), ("resource", request.resource)):
            key = (ref.type, ref.id)
            static = self._static.get(key)
            extra = granted if role == "principal" else ()
            if static is not None and not ref.properties and not extra:
                continue
            entity = delta.get(key) or {
                "uid": {"type": ref.type, "id": ref.id},
                "attrs": dict(static.get("attrs", {})) if static else {},
                "parents": list(static.get("parents", [])) if static else [],
            }
            entity["attrs"].update(ref.properties or {})
            for parent_type, parent_id in extra:
                parent = {"type": parent_type, "id": parent_id}
                if parent not in entity["parents"]:
                    entity["parents"].append(parent)
            delta[key] = entity
            roles.setdefault(key, role)
            if static is not None:
                replaced.add(key)
        base = self._entities if not replaced else self._base_without(frozenset(replaced))
        if not delta:
            return base
        added = list(delta.values())
        try:
            text = orjson.dumps(added).decode()
        except TypeError:
            text = json.dumps(added)  # values orjson refuses; Cedar reports them below
        known = self._with_added.get(text)  # the same caller attributes again: reuse the set
        if known is not None:
            return known
        try:
            entities = base.with_added_json_str(text, schema=self._schema)
        except ValueError:
            found = first_nonconforming(added, self._schema)
            if found is None:
                raise ValueError("request entities do not match the schema") from None
            index, exc = found
            key = list(delta)[index]
            raise ValueError(
                f'{roles[key]} {key[0]}::"{key[1]}": properties do not match the schema ({exc})'
            ) from None
        with self._lock:
            self._with_added[text] = entities
            while len(self._with_added) > _BASE_CACHE_SIZE:
                self._with_added.popitem(last=False)
        return entities

    def _base_without(self, uids: frozenset[tuple[str, str]]) -> Any:
        with self._lock:
            cached = self._bases.get(uids)
            if cached is not None:
                self._bases.move_to_end(uids)
                return cached
        kept = [e for key, e in self._static.items() if key not in uids]
        handle = cedarpy.Entities.from_json_str(json.dumps(kept), schema=self._schema)
        with self._lock:
            self._bases[uids] = handle
            while len(self._bases) > _BASE_CACHE_SIZE:
                self._bases.popitem(last=False)
        return handle


def _in_force(
    elevation: Elevation | None, now: float
) -> tuple[tuple[GrantRef, ...], tuple[ExceptionRef, ...], float | None]:
    """The grants and exceptions whose window holds at `now`, and the next instant at which
    that set changes (an answer must not be reused past it)."""
    if elevation is None or not (elevation.grants or elevation.exceptions):
        return (), (), None
    grants = tuple(g for g in elevation.grants if g.starts_at <= now < g.expires_at)
    exceptions = tuple(e for e in elevation.exceptions if e.starts_at <= now < e.expires_at)
    edges = [g.expires_at for g in grants] + [e.expires_at for e in exceptions]
    edges += [g.starts_at for g in elevation.grants if g.starts_at > now]
    edges += [e.starts_at for e in elevation.exceptions if e.starts_at > now]
    return grants, exceptions, min(edges) if edges else None


def _context_json(context: dict[str, Any]) -> str | dict[str, Any]:
    """cedarpy takes the context as JSON text too, and orjson writes it faster than its json
    call; values orjson refuses (integers beyond 64 bits) go through cedarpy, which reports
    them as a Cedar error."""
    try:
        return orjson.dumps(context).decode()
    except TypeError:
        return context


def _policy_set(policies: list[PolicyInfo]) -> Any:
    document = {
        "staticPolicies": {p.policy_id: p.est for p in policies},
        "templates": {},
        "templateLinks": [],
    }
    return cedarpy.PolicySet.from_json_str(json.dumps(document))


def _outcome(result: Any) -> _Outcome:
    errors = tuple(result.diagnostics.errors)
    reasons = tuple(result.diagnostics.reasons)
    if result.decision == cedarpy.Decision.Allow and not errors:
        return _Outcome(Effect.ALLOW, reasons, ())
    if result.decision == cedarpy.Decision.Allow:
        return _Outcome(Effect.DENY, (), errors)  # an error in any policy never allows
    return _Outcome(Effect.DENY, reasons, errors)


def _forbids(policy_ids: tuple[str, ...], infos: dict[str, PolicyInfo]) -> tuple[str, ...]:
    return tuple(p for p in policy_ids if infos[p].effect == "forbid")


def _errored_policy(error: str) -> str | None:
    match = _ERROR_POLICY_RE.search(error)
    return match.group(1) if match else None


def _tier0(decision: Decision) -> bool:
    """Whether a Tier 0 policy determined the answer, enforced or shadow."""
    return any(r.tier == "0" for r in decision.reasons) or any(
        r.tier == "0" for r in decision.shadow_reasons
    )


def _reason(info: PolicyInfo) -> PolicyReason:
    return PolicyReason(
        policy_id=info.policy_id,
        effect=info.effect,
        mode=info.mode,
        owner=info.owner,
        description=info.description,
        tier=info.tier,
        step_up=info.step_up,
    )
