"""The monthly Zero Trust scorecard: each figure the seeds judge a program by, computed from the
store and the ledger, with its target, a verdict and the query that reproduces it.

Nothing is estimated silently: a figure whose inputs do not exist says "not measured" and what
would measure it. Decision figures come from one pass over the period's ledger records (the
signed records, not the query columns, so what is counted is what `audit verify` proves); the
rest from the governance, identity and rollout tables.
"""

from __future__ import annotations

import bisect
import calendar
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, and_, case, func, select

from trustplane.decision.policy_bundle import Bundle
from trustplane.governance.catalog import access_catalog
from trustplane.outcomes.simulation_runs import SimulationRun, latest_run
from trustplane.rollout.gates import named_principals, wilson
from trustplane.store.tables import (
    access_grants,
    access_requests,
    break_glass_reviews,
    checkpoints,
    decisions,
    identity_inventory,
    identity_keys,
    policy_exceptions,
    revocations,
    rollout_labels,
)
from trustplane.telemetry.query import reason_code

__all__ = [
    "Figure",
    "Scorecard",
    "ScorecardError",
    "Stage",
    "compute_scorecard",
    "parse_period",
]

MET, NOT_MET, NOT_MEASURED, INFO = "met", "not met", "not measured", "info"
LONG_LIVED_SECONDS = 24 * 3600
"""A workload or CI credential living longer than a day counts as long-lived."""
REVOKE_TARGET_SECONDS = 600.0
"""The seeds' mean time to revoke a privileged identity: under ten minutes."""
EXPIRING_SECONDS = 7 * 86400
_AUTH_FAILURE = re.compile(r"^(credential|token|certificate|svid)_")
_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


class ScorecardError(ValueError):
    """A period or option the scorecard cannot use; the message says which."""


@dataclass(frozen=True)
class Figure:
    """One line of the scorecard."""

    key: str
    title: str
    group: str
    value: float | None
    unit: str  # "%" (value is a share 0..1), "s", "µs", "count", "ratio", "per user"
    target: str
    verdict: str  # met | not met | not measured | info
    evidence: str
    query: str = ""  # the command or SQL that reproduces the figure
    to_measure: str = ""  # for "not measured": what would measure it

    def shown(self) -> str:
        """The value as people read it."""
        if self.value is None:
            return "—"
        if self.unit == "%":
            return f"{self.value:.1%}"
        if self.unit == "count":
            return f"{self.value:,.0f}"
        if self.unit == "s":
            return f"{self.value:,.1f} s"
        if self.unit == "µs":
            return f"{self.value:,.0f} µs"
        return f"{self.value:,.2f}"


@dataclass(frozen=True)
class Stage:
    """A CISA Zero Trust Maturity Model v2 stage for one pillar or cross-cutting capability."""

    pillar: str
    stage: str  # Traditional | Initial | Advanced | Optimal
    criteria: tuple[str, ...]  # what each stage needed
    evidence: tuple[str, ...]  # what was found


@dataclass(frozen=True)
class Scorecard:
    period: str
    start: float
    end: float
    computed_at: float
    revision: str | None
    figures: tuple[Figure, ...]
    stages: tuple[Stage, ...]

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["figures"] = [{**asdict(f), "shown": f.shown()} for f in self.figures]
        return document

    def figure(self, key: str) -> Figure:
        return next(f for f in self.figures if f.key == key)


def parse_period(text: str | None, now: float | None = None) -> tuple[str, float, float]:
    """`YYYY-MM` → (period, start, end) in epoch seconds, end exclusive; the current month
    (up to now) when `text` is None."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    if text is None:
        year, month = moment.year, moment.month
    else:
        match = _PERIOD.match(text.strip())
        if not match or not 1 <= int(match[2]) <= 12:
            raise ScorecardError(f"period {text!r}: expected a month as YYYY-MM, like 2026-11")
        year, month = int(match[1]), int(match[2])
    start = datetime(year, month, 1, tzinfo=UTC).timestamp()
    days = calendar.monthrange(year, month)[1]
    end = start + days * 86400
    return f"{year:04d}-{month:02d}", start, end


@dataclass
class _Tally:
    """What one pass over the period's decision records counts."""

    decisions: int = 0
    allows: int = 0
    denies: int = 0
    auth_failures: int = 0
    errors: int = 0
    eval_micros: list[int] = field(default_factory=list)
    privileged: int = 0
    privileged_mfa: int = 0
    privileged_named: int = 0
    step_ups: int = 0
    users: set[str] = field(default_factory=set)
    user_denies: int = 0
    pairs: dict[tuple[str, str], bool] = field(default_factory=dict)  # explicit policy seen?
    proof_delays: list[float] = field(default_factory=list)
    last_allow: dict[str, float] = field(default_factory=dict)  # revoked principal → ts
    trust_scored: int = 0
    device_signals: int = 0
    workload_callers: int = 0


def compute_scorecard(
    engine: Engine,
    bundle: Bundle | None,
    period: str | None = None,
    *,
    now: float | None = None,
    drift_checked: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Scorecard:
    """The scorecard of `period` (YYYY-MM; the current month by default) from the store behind
    `engine` and the active bundle (None: the figures that need it are not measured).
    `drift_checked`: whether the server's periodic drift check runs (`policy.drift_check_seconds`
    above 0 with a bundle directory), without which no drift incident could have been seen."""
    now = time.time() if now is None else now
    name, start, end = parse_period(period, now)
    until = min(end, now)
    with engine.connect() as conn:
        revoked = {
            row.target: row.created_at
            for row in conn.execute(
                select(revocations.c.target, revocations.c.created_at).where(
                    revocations.c.kind == "principal",
                    revocations.c.created_at >= start,
                    revocations.c.created_at < end,
                )
            )
        }
        proofs = [
            (int(row.size), float(row.created_at))
            for row in conn.execute(
                select(checkpoints.c.size, checkpoints.c.created_at).order_by(checkpoints.c.size)
            )
        ]
    roles = _privileged_roles(bundle)
    tally = _tally_decisions(engine, bundle, roles, start, end, revoked, proofs, progress)
    figures = [
        *_privilege_figures(engine, bundle, roles, tally, start, end),
        *_error_figures(engine, tally, revoked, start, end),
        *_sli_figures(engine, tally, start, end, drift_checked),
        *_hygiene_figures(engine, start, end, now),
    ]
    return Scorecard(
        period=name,
        start=start,
        end=until,
        computed_at=now,
        revision=None if bundle is None else bundle.revision,
        figures=tuple(figures),
        stages=tuple(_stages(figures, tally)),
    )


def is_auth_failure(code: str) -> bool:
    """Whether a decision's reason code is a refused credential: what M1 (and the 99.9% SLO
    of deploy/prometheus) counts against authentication success."""
    return bool(_AUTH_FAILURE.match(code))


@dataclass(frozen=True)
class AuthCounts:
    """Decisions in a window: how many, how many refused a credential (M1's failures) and how
    many carry an error (failed closed: what `trustplane_decision_errors_total` counts, the
    SLI of the 99.9% auth-success SLO in deploy/prometheus/)."""

    decisions: int
    refused: int
    errors: int


def auth_success(engine: Engine, start: float, end: float) -> AuthCounts:
    """M1's counts and the SLO's for any window (the executive page's 30 days), one pass
    over the window's decision records."""
    query = (
        select(decisions.c.record)
        .where(decisions.c.kind == "decision", _window(decisions.c.ts, start, end))
        .execution_options(yield_per=5000)
    )
    total = refused = errors = 0
    with engine.connect() as conn:
        for row in conn.execute(query):
            record = orjson.loads(row.record)
            total += 1
            refused += is_auth_failure(reason_code(record))
            errors += bool(record.get("errors"))
    return AuthCounts(total, refused, errors)


def _privileged_roles(bundle: Bundle | None) -> frozenset[str]:
    """Privileged roles: those access.yaml makes requestable just in time or grants through
    break-glass; holding one permanently is standing privilege."""
    if bundle is None:
        return frozenset()
    catalog = access_catalog(bundle)
    return frozenset(catalog.requestable) | frozenset(p.role for p in catalog.profiles.values())


def _window(column: Any, start: float, end: float) -> Any:
    return and_(column >= start, column < end)


def _tally_decisions(
    engine: Engine,
    bundle: Bundle | None,
    roles: frozenset[str],
    start: float,
    end: float,
    revoked: Mapping[str, float],
    proofs: list[tuple[int, float]],
    progress: Callable[[int], None] | None,
) -> _Tally:
    tally = _Tally()
    ancestors = access_catalog(bundle).ancestors if bundle is not None else {}
    named = named_principals(bundle) if bundle is not None else frozenset()
    step_up = (
        frozenset(p.policy_id for p in bundle.policies if p.step_up) if bundle else frozenset()
    )
    sizes = [size for size, _ in proofs]
    query = (
        select(decisions.c.seq, decisions.c.ts, decisions.c.record)
        .where(decisions.c.kind == "decision", _window(decisions.c.ts, start, end))
        .order_by(decisions.c.seq)
        .execution_options(yield_per=5000)
    )
    with engine.connect() as conn:
        for count, row in enumerate(conn.execute(query), 1):
            record = orjson.loads(row.record)
            _count(tally, record, ancestors, roles, named, step_up, revoked)
            at = bisect.bisect_right(sizes, int(row.seq))  # first checkpoint covering seq
            if at < len(proofs):
                tally.proof_delays.append(max(0.0, proofs[at][1] - float(row.ts)))
            if progress is not None and count % 5000 == 0:
                progress(count)
    return tally


def _count(
    tally: _Tally,
    record: Mapping[str, Any],
    ancestors: Mapping[str, frozenset[str]],
    roles: frozenset[str],
    named: frozenset[str],
    step_up: frozenset[str],
    revoked: Mapping[str, float],
) -> None:
    request = record.get("request") or {}
    principal = _entity(request.get("principal"))
    resource = _entity(request.get("resource"))
    action = _entity(request.get("action"))
    context = request.get("context") or {}
    allowed = record.get("decision") == "allow"
    code = reason_code(record)
    tally.decisions += 1
    tally.allows += allowed
    tally.denies += not allowed
    tally.auth_failures += is_auth_failure(code)
    tally.errors += code == "evaluation_error"
    micros = record.get("eval_micros")
    if isinstance(micros, int):
        tally.eval_micros.append(micros)
    if principal:
        tally.users.add(principal)
        tally.user_denies += not allowed
    if action and resource:
        explicit = bool(record.get("reasons"))
        tally.pairs[(action, resource)] = tally.pairs.get((action, resource), False) or explicit
    privileged = bool(record.get("grants")) or bool(ancestors.get(principal, frozenset()) & roles)
    if privileged and allowed:
        tally.privileged += 1
        tally.privileged_mfa += context.get("mfa") is True
        tally.privileged_named += principal in named
    if not allowed and step_up.intersection(record.get("reasons") or ()):
        tally.step_ups += 1
    trust = record.get("trust")
    if isinstance(trust, dict):
        tally.trust_scored += 1
        signals = trust.get("signals")
        if isinstance(signals, Mapping) and "device" in signals:
            tally.device_signals += 1
    if principal.startswith("Workload::") or principal.startswith("Service::"):
        tally.workload_callers += 1
    if allowed and principal in revoked:
        ts = _record_ts(record)
        if ts is not None and ts >= revoked[principal]:
            tally.last_allow[principal] = max(tally.last_allow.get(principal, 0.0), ts)


def _entity(value: Any) -> str:
    if not isinstance(value, Mapping):
        return ""
    return f'{value.get("type")}::"{value.get("id")}"'


def _record_ts(record: Mapping[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


def _share(part: float, whole: float) -> float | None:
    return None if whole <= 0 else part / whole


def _verdict(ok: bool | None) -> str:
    return NOT_MEASURED if ok is None else MET if ok else NOT_MET


def _decisions_cli(start: float, end: float, *extra: str) -> str:
    since, until = _stamp(start), _stamp(end)
    return " ".join(
        ["trustplane decisions --kind decision", f"--since {since} --until {until}", *extra]
    )


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _privilege_figures(
    engine: Engine,
    bundle: Bundle | None,
    roles: frozenset[str],
    tally: _Tally,
    start: float,
    end: float,
) -> list[Figure]:
    figures = []
    if bundle is None:
        figures.append(
            Figure(
                "standing_privilege",
                "Standing privilege",
                "privilege",
                None,
                "%",
                "0 permanent holders of privileged roles",
                NOT_MEASURED,
                "no active policy bundle",
                to_measure="activate a bundle whose access.yaml lists the privileged roles",
            )
        )
    else:
        ancestors = access_catalog(bundle).ancestors
        standing = sorted(
            f"{who} in {role}"
            for who, parents in ancestors.items()
            for role in parents & roles
            if who not in roles
        )
        with engine.connect() as conn:
            jit = conn.execute(
                select(func.count())
                .select_from(access_grants)
                .where(access_grants.c.starts_at < end, access_grants.c.expires_at > start)
            ).scalar_one()
        held = len(standing) + int(jit)
        figures.append(
            Figure(
                "standing_privilege",
                "Privileged access held just in time",
                "privilege",
                _share(jit, held) if roles else None,
                "%",
                "100% (no permanent holder)",
                _verdict(None if not roles else not standing),
                f"{jit} grants in the period, {len(standing)} permanent memberships"
                + (f": {', '.join(standing[:5])}" + (" …" if len(standing) > 5 else ""))
                if standing
                else f"{jit} grants in the period, no permanent membership of "
                f"{len(roles)} privileged roles",
                "trustplane access list --json; the bundle's entities.json parents",
                "" if roles else "list privileged roles as requestable in access.yaml",
            )
        )
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                identity_inventory.c.kind,
                func.count(),
                func.sum(
                    case(
                        (identity_inventory.c.max_lifetime_seconds > LONG_LIVED_SECONDS, 1), else_=0
                    )
                ),
            )
            .where(identity_inventory.c.last_seen >= start, identity_inventory.c.first_seen < end)
            .group_by(identity_inventory.c.kind)
        ).all()
    total = sum(int(r[1]) for r in rows)
    long_lived = sum(int(r[2] or 0) for r in rows)
    figures.append(
        Figure(
            "long_lived_secrets",
            "Identities with credentials living over a day",
            "privilege",
            float(long_lived) if total else None,
            "count",
            "0",
            _verdict(None if not total else long_lived == 0),
            f"{long_lived} of {total} identities active in the period "
            "(issued lifetimes from the identity inventory; static secrets in files are "
            "`trustplane scan`'s findings, not counted here)",
            "trustplane identity inventory --json",
            "" if total else "issue SVIDs or exchanged tokens through trustplane",
        )
    )
    figures.append(
        Figure(
            "mfa_privileged",
            "Privileged actions with MFA (M8)",
            "privilege",
            _share(tally.privileged_mfa, tally.privileged),
            "%",
            "100%",
            _verdict(None if not tally.privileged else tally.privileged_mfa == tally.privileged),
            f"{tally.privileged_mfa} of {tally.privileged} allowed decisions of principals in "
            "privileged roles or under a grant carried context.mfa = true",
            _decisions_cli(start, end, "--decision allow --json"),
            "" if tally.privileged else "no privileged decision in the period",
        )
    )
    attributable = _share(tally.privileged_named, tally.privileged)
    figures.append(
        Figure(
            "attributable_privileged",
            "Privileged actions attributable to named identities",
            "privilege",
            attributable,
            "%",
            "≥ 95%",
            _verdict(None if attributable is None else attributable >= 0.95),
            f"{tally.privileged_named} of {tally.privileged} privileged decisions by a bundle "
            "entity not marked shared",
            _decisions_cli(start, end, "--decision allow --json"),
            "" if tally.privileged else "no privileged decision in the period",
        )
    )
    return figures


def _error_figures(
    engine: Engine, tally: _Tally, revoked: Mapping[str, float], start: float, end: float
) -> list[Figure]:
    with engine.connect() as conn:
        labels = conn.execute(
            select(rollout_labels.c.verdict, func.count())
            .where(_window(rollout_labels.c.labelled_at, start, end))
            .group_by(rollout_labels.c.verdict)
        ).all()
        waits = [
            float(r.decided_at - r.created_at)
            for r in conn.execute(
                select(access_requests.c.created_at, access_requests.c.decided_at).where(
                    access_requests.c.status == "approved",
                    _window(access_requests.c.decided_at, start, end),
                )
            )
        ]
    run = latest_run(engine, start, end)
    counts = {str(verdict): int(n) for verdict, n in labels}
    labelled = sum(counts.values())
    false_pos = counts.get("false-positive", 0)
    low, high = wilson(false_pos, labelled)
    figures = [
        Figure(
            "false_positives",
            "False positives of observed policies (M11)",
            "errors",
            _share(false_pos, labelled),
            "%",
            "< 5% (upper 95% bound)",
            _verdict(None if not labelled else high < 0.05),
            f"{false_pos} of {labelled} labelled would-denies; 95% interval {low:.1%}–{high:.1%}"
            if labelled
            else "no would-deny labelled in the period",
            "trustplane rollout status --json",
            "" if labelled else "label would-denies: trustplane rollout queue / rollout label",
        ),
        _false_negatives(run),
    ]
    delays = [tally.last_allow.get(p, at) - at for p, at in revoked.items()]
    mean = statistics.fmean(delays) if delays else None
    figures.append(
        Figure(
            "time_to_revoke",
            "Mean time to revoke (last allow after a revocation)",
            "errors",
            mean,
            "s",
            "< 600 s",
            _verdict(None if mean is None else mean < REVOKE_TARGET_SECONDS),
            f"{len(delays)} principal revocations; the slowest took "
            f"{max(delays):.1f} s to stop the last allow, on any replica"
            if delays
            else "no principal revoked in the period",
            "SELECT target, created_at FROM revocations WHERE kind = 'principal'; then "
            + _decisions_cli(start, end, "--decision allow --principal TARGET"),
            "" if delays else "revoke a principal (trustplane revoke principal …)",
        )
    )
    figures.append(_lateral_movement(run))
    users = len(tally.users)
    figures.append(
        Figure(
            "friction_denials",
            "Denials and step-up prompts per active principal",
            "friction",
            _share(tally.user_denies, users),
            "per user",
            "trend down",
            INFO if users else NOT_MEASURED,
            f"{tally.user_denies} denials ({tally.step_ups} of them step-up prompts) over "
            f"{users} active principals",
            _decisions_cli(start, end, "--decision deny --json"),
            "" if users else "no decision in the period",
        )
    )
    wait = statistics.median(waits) if waits else None
    figures.append(
        Figure(
            "jit_wait",
            "Just-in-time approval wait, median",
            "friction",
            wait,
            "s",
            "trend down",
            INFO if waits else NOT_MEASURED,
            f"{len(waits)} approved requests",
            "trustplane access list --json",
            "" if waits else "no just-in-time request approved in the period",
        )
    )
    return figures


def _lateral_movement(run: SimulationRun | None) -> Figure:
    """The share of simulated paths to tier 0 that service authorization blocks, from the
    month's newest `trustplane simulate --all --save`."""
    if run is None:
        return Figure(
            "lateral_movement",
            "Lateral-movement resistance",
            "errors",
            None,
            "%",
            "100% of simulated paths blocked",
            NOT_MEASURED,
            "no compromise simulation saved in the period",
            to_measure="trustplane simulate --all --save (with --manifests)",
        )
    resistance = run.resistance
    return Figure(
        "lateral_movement",
        "Lateral-movement resistance",
        "errors",
        resistance,
        "%",
        "100% of simulated paths blocked",
        _verdict(None if resistance is None else run.blocked == run.paths),
        f"{run.blocked} of {run.paths} paths to tier 0 blocked by service authorization "
        f"(simulation of {_stamp(run.run_at)}, revision {(run.revision or '?')[:12]})",
        "trustplane simulate --all --json",
        "" if resistance is not None else "manifests whose RBAC or network reach tier 0",
    )


def _false_negatives(run: SimulationRun | None) -> Figure:
    """Allows that should not be: no label says so yet, so the figure is the simulation's
    paths to tier 0 that the policy leaves open."""
    if run is None:
        return Figure(
            "false_negatives",
            "False negatives (paths to tier 0 left open)",
            "errors",
            None,
            "count",
            "0",
            NOT_MEASURED,
            "labels exist for would-denies only, and no simulation was saved in the period",
            to_measure="trustplane simulate --all --save; labels on allowed decisions",
        )
    left = run.paths - run.blocked
    shown = ", ".join(f"{p['start']} → {p['target']}" for p in run.open_paths[:3])
    return Figure(
        "false_negatives",
        "False negatives (paths to tier 0 left open)",
        "errors",
        float(left),
        "count",
        "0",
        _verdict(left == 0),
        f"{left} paths to tier 0 the policy leaves open in the simulation"
        + (f": {shown}" + (" …" if len(run.open_paths) > 3 else "") if shown else "")
        + "; allowed decisions are not labelled yet",
        "trustplane simulate --all --json",
    )


def _percentile(values: list[float] | list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _sli_figures(
    engine: Engine, tally: _Tally, start: float, end: float, drift_checked: bool
) -> list[Figure]:
    n = tally.decisions
    success = _share(n - tally.auth_failures, n)
    p50, p99 = _percentile(tally.eval_micros, 0.5), _percentile(tally.eval_micros, 0.99)
    coverage = _share(sum(tally.pairs.values()), len(tally.pairs))
    with engine.connect() as conn:
        rotated = conn.execute(
            select(func.count())
            .select_from(identity_keys)
            .where(_window(identity_keys.c.superseded_at, start, end))
        ).scalar_one()
        lapsed = conn.execute(
            select(func.count())
            .select_from(identity_keys)
            .where(
                identity_keys.c.state == "active", _window(identity_keys.c.not_after, start, end)
            )
        ).scalar_one()
        issued = conn.execute(select(func.sum(identity_inventory.c.issued))).scalar_one()
    rotations = int(rotated) + int(lapsed)
    none = "no decision in the period"
    window = _decisions_cli(start, end, "--json")
    proof_p99 = _percentile(tally.proof_delays, 0.99)
    return [
        Figure(
            "auth_success",
            "Authentication success (M1)",
            "sli",
            success,
            "%",
            "≥ 99.9%",
            _verdict(None if success is None else success >= 0.999),
            f"{tally.auth_failures} of {n} decisions refused a credential" if n else none,
            window,
        ),
        Figure(
            "latency_p50",
            "Decision evaluation latency p50 (M2)",
            "sli",
            p50,
            "µs",
            "≤ 1,000 µs",
            _verdict(None if p50 is None else p50 <= 1000),
            f"evaluation time recorded in {len(tally.eval_micros)} decisions",
            window,
        ),
        Figure(
            "latency_p99",
            "Decision evaluation latency p99 (M2)",
            "sli",
            p99,
            "µs",
            "≤ 5,000 µs",
            _verdict(None if p99 is None else p99 <= 5000),
            f"evaluation time recorded in {len(tally.eval_micros)} decisions",
            window,
        ),
        Figure(
            "pdp_errors",
            "Policy evaluation errors (M3)",
            "sli",
            float(tally.errors) if n else None,
            "count",
            "0",
            _verdict(None if not n else tally.errors == 0),
            f"{tally.errors} decisions denied on an evaluation error" if n else none,
            _decisions_cli(start, end, "--json"),
        ),
        Figure(
            "deny_permit",
            "Deny/permit ratio (M4)",
            "sli",
            tally.denies / tally.allows if tally.allows else None,
            "ratio",
            "stable",
            INFO if tally.allows else NOT_MEASURED,
            f"{tally.denies} denies, {tally.allows} allows",
            window,
        ),
        Figure(
            "token_issuance",
            "Credentials issued (M5)",
            "sli",
            None,
            "count",
            "per period",
            NOT_MEASURED,
            f"the identity inventory counts {int(issued or 0)} issued in all, per identity, "
            "not per period",
            "trustplane identity inventory --json",
            "issuance events per period (the inventory keeps lifetime counts)",
        ),
        Figure(
            "rotation_success",
            "Key rotation success (M6)",
            "sli",
            _share(int(rotated), rotations),
            "%",
            "100%",
            _verdict(None if not rotations else int(lapsed) == 0),
            f"{rotated} keys superseded by rotation, {lapsed} expired while still active"
            if rotations
            else "no key rotated or expired in the period",
            "trustplane identity keys --json",
            "" if rotations else "a rotation in the period (trustplane identity rotate)",
        ),
        Figure(
            "entitlement_coverage",
            "Entitlement coverage (M7)",
            "sli",
            coverage,
            "%",
            "100%",
            _verdict(None if coverage is None else coverage >= 1.0),
            f"{sum(tally.pairs.values())} of {len(tally.pairs)} observed action–resource "
            "pairs decided by an explicit policy rather than default deny"
            if tally.pairs
            else none,
            window,
        ),
        Figure(
            "audit_ingest",
            "Audit ingest to signed checkpoint, p99 (M9)",
            "sli",
            proof_p99,
            "s",
            "≤ 30 s",
            _verdict(None if proof_p99 is None else proof_p99 <= 30),
            f"{len(tally.proof_delays)} records covered by a checkpoint; "
            f"{n - len(tally.proof_delays)} not yet"
            if n
            else none,
            "trustplane audit verify --json",
            "" if tally.proof_delays else "a checkpoint after the period's records",
        ),
        _drift_figure(engine, start, end, drift_checked),
    ]


def _drift_figure(engine: Engine, start: float, end: float, checked: bool) -> Figure:
    """M10 from the drift check's incidents (rollout/drift.py) that began in the period."""
    from trustplane.rollout.drift import DriftLog

    history = DriftLog(engine).history(since=start)
    began = [i for i in history["incidents"] if i["detected_at"] < end]
    if not checked and not began:
        return Figure(
            "drift_incidents",
            "Policy drift incidents (M10)",
            "sli",
            None,
            "count",
            "0",
            NOT_MEASURED,
            "the server's periodic drift check is off",
            "trustplane policy drift --history --json",
            "policy.drift_check_seconds above 0, with a bundle directory to compare",
        )
    return Figure(
        "drift_incidents",
        "Policy drift incidents (M10)",
        "sli",
        float(len(began)),
        "count",
        "0",
        _verdict(not began),
        f"{len(began)} incidents of the active revision departing from its source began in "
        "the period",
        "trustplane policy drift --history --json",
    )


def _hygiene_figures(engine: Engine, start: float, end: float, now: float) -> list[Figure]:
    with engine.connect() as conn:
        live = conn.execute(
            select(policy_exceptions.c.expires_at).where(
                policy_exceptions.c.status == "approved",
                policy_exceptions.c.revoked_at.is_(None),
                policy_exceptions.c.starts_at < end,
            )
        ).all()
        overdue_reviews = conn.execute(
            select(func.count())
            .select_from(break_glass_reviews)
            .where(break_glass_reviews.c.closed_at.is_(None), break_glass_reviews.c.due_at < now)
        ).scalar_one()
        open_reviews = conn.execute(
            select(func.count())
            .select_from(break_glass_reviews)
            .where(break_glass_reviews.c.closed_at.is_(None))
        ).scalar_one()
    expiries = [float(r.expires_at) for r in live if r.expires_at is not None]
    open_now = [e for e in expiries if e > now]
    expiring = [e for e in open_now if e - now <= EXPIRING_SECONDS]
    return [
        Figure(
            "exceptions_open",
            "Policy exceptions open",
            "hygiene",
            float(len(open_now)),
            "count",
            "each with an owner and an expiry",
            INFO,
            f"{len(open_now)} open, {len(expiring)} expiring within 7 days",
            "trustplane exceptions list --json",
        ),
        Figure(
            "exceptions_overdue",
            "Policy exceptions past their expiry and still approved",
            "hygiene",
            float(len(expiries) - len(open_now)),
            "count",
            "0",
            _verdict(len(expiries) == len(open_now)),
            f"{len(expiries) - len(open_now)} approved, unrevoked exceptions past their expiry",
            "trustplane exceptions list --json",
        ),
        Figure(
            "breakglass_overdue",
            "Break-glass reviews overdue",
            "hygiene",
            float(overdue_reviews),
            "count",
            "0",
            _verdict(int(overdue_reviews) == 0),
            f"{overdue_reviews} of {open_reviews} open reviews past their due time",
            "trustplane break-glass list --json",
        ),
    ]


def _stages(figures: Iterable[Figure], tally: _Tally) -> list[Stage]:
    """CISA ZTMM v2 stages from the figures: each pillar climbs while its criteria hold, and
    the evidence says what was found. Pillars trustplane cannot see stay Traditional, said so."""
    by = {f.key: f for f in figures}

    def met(key: str) -> bool:
        return by[key].verdict == MET

    def climb(pillar: str, steps: list[tuple[str, str, bool]], evidence: list[str]) -> Stage:
        stage = "Traditional"
        for name, _criterion, ok in steps:
            if not ok:
                break
            stage = name
        return Stage(pillar, stage, tuple(f"{n}: {c}" for n, c, _ in steps), tuple(evidence))

    trusted = tally.trust_scored > 0
    return [
        climb(
            "Identity",
            [
                ("Initial", "MFA on every privileged action (M8)", met("mfa_privileged")),
                (
                    "Advanced",
                    "privileged access just in time, none standing",
                    met("standing_privilege"),
                ),
                ("Optimal", "continuous risk evaluation on every decision", trusted),
            ],
            [
                f"{by['mfa_privileged'].evidence}",
                by["standing_privilege"].evidence,
                f"{tally.trust_scored} of {tally.decisions} decisions carried a trust score",
            ],
        ),
        climb(
            "Devices",
            [
                ("Initial", "device posture reported for decisions", tally.device_signals > 0),
                (
                    "Advanced",
                    "device posture on most decisions",
                    tally.decisions > 0 and tally.device_signals * 2 > tally.decisions,
                ),
                (
                    "Optimal",
                    "device posture on every decision",
                    tally.decisions > 0 and tally.device_signals == tally.decisions,
                ),
            ],
            [f"{tally.device_signals} of {tally.decisions} decisions carried a device signal"],
        ),
        climb(
            "Networks",
            [
                (
                    "Initial",
                    "service calls authorized per request, not per network",
                    tally.workload_callers > 0,
                ),
                (
                    "Advanced",
                    "lateral movement measured by simulation",
                    by["lateral_movement"].verdict != NOT_MEASURED,
                ),
                ("Optimal", "every simulated path blocked", met("lateral_movement")),
            ],
            [
                f"{tally.workload_callers} decisions for workload callers",
                by["lateral_movement"].evidence,
            ],
        ),
        climb(
            "Applications and Workloads",
            [
                (
                    "Initial",
                    "requests decided by policy with recorded evidence",
                    tally.decisions > 0,
                ),
                (
                    "Advanced",
                    "every observed entitlement covered by an explicit policy",
                    met("entitlement_coverage"),
                ),
                (
                    "Optimal",
                    "no policy evaluation errors and false positives bounded",
                    met("pdp_errors") and met("false_positives"),
                ),
            ],
            [
                by["entitlement_coverage"].evidence,
                by["pdp_errors"].evidence,
                by["false_positives"].evidence,
            ],
        ),
        Stage(
            "Data",
            "Traditional",
            ("Initial: data classified and access tied to classification",),
            ("not measured: trustplane holds no data inventory or classification",),
        ),
        climb(
            "Visibility and Analytics",
            [
                ("Initial", "every decision in a tamper-evident ledger", tally.decisions > 0),
                (
                    "Advanced",
                    "records under a signed checkpoint within 30 s (M9)",
                    met("audit_ingest"),
                ),
                ("Optimal", "revocations effective within 10 minutes", met("time_to_revoke")),
            ],
            [by["audit_ingest"].evidence, by["time_to_revoke"].evidence],
        ),
        climb(
            "Governance",
            [
                ("Initial", "no exception past its expiry", met("exceptions_overdue")),
                ("Advanced", "break-glass reviews on time", met("breakglass_overdue")),
                (
                    "Optimal",
                    "privileged actions attributable (≥ 95%)",
                    met("attributable_privileged"),
                ),
            ],
            [
                by["exceptions_overdue"].evidence,
                by["breakglass_overdue"].evidence,
                by["attributable_privileged"].evidence,
            ],
        ),
    ]
