"""Value types every plane shares: the request, the decision, a reference to an entity.

Kept free of any framework so that the decision plane, the adapters and the CLI can pass them
around without importing each other.
"""

from __future__ import annotations

import os
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class EntityRef:
    """A Cedar entity: `type::"id"`, with optional attributes supplied by the caller."""

    type: str
    id: str
    properties: dict[str, Any] | None = None

    def uid(self) -> dict[str, str]:
        return {"type": self.type, "id": self.id}

    def __str__(self) -> str:
        return f'{self.type}::"{self.id}"'


@dataclass(frozen=True, slots=True)
class Evidence:
    """What an enforcement point of this PDP verified about a request, for the trust plane:
    the verified token's authentication claims (`amr`, `acr`, `auth_time`, `iat`, `exp`) and
    the original client's address (forwarded headers only from trusted proxies). Built by the
    PDP's own adapters, never from what a caller writes in the request's context."""

    claims: dict[str, Any] | None = None
    source_ip: str | None = None
    workload: bool = False
    source: str = "pdp"  # who vouches for it: `token`, `mtls`, `proxy`
    subject: str | None = None  # the authenticated caller: a SPIFFE ID for workloads
    # The device the request came from: its id (a trusted proxy's header, the mTLS
    # certificate's URI under trust.device_uri_prefix) or `serial:N` (the client certificate's
    # serial, which a posture report may name), and who vouched for it (`mtls`, `proxy`).
    device: str | None = None
    device_source: str | None = None


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """One question: may `principal` perform `action` on `resource` given `context`?"""

    principal: EntityRef
    action: EntityRef
    resource: EntityRef
    context: dict[str, Any] = field(default_factory=dict)
    # What the enforcement point verified about the caller (never part of the Cedar request).
    evidence: Evidence | None = None

    def as_document(self) -> dict[str, Any]:
        """The request as a JSON document (the shape masking pointers address)."""
        return {
            "principal": _entity_doc(self.principal),
            "action": _entity_doc(self.action),
            "resource": _entity_doc(self.resource),
            "context": self.context,
        }


def _entity_doc(ref: EntityRef) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": ref.type, "id": ref.id}
    if ref.properties:
        doc["properties"] = ref.properties
    return doc


@dataclass(frozen=True, slots=True)
class PolicyReason:
    """A policy that determined an answer, with what a human needs to act on it."""

    policy_id: str
    effect: str
    mode: str
    owner: str
    description: str = ""
    tier: str | None = None
    step_up: str | None = None  # @step_up: what authentication would change a deny

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "policy": self.policy_id,
            "effect": self.effect,
            "mode": self.mode,
            "owner": self.owner,
            "description": self.description,
        }
        if self.tier is not None:
            out["tier"] = self.tier
        if self.step_up is not None:
            out["step_up"] = self.step_up
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to an AccessRequest, with everything needed to explain and audit it."""

    decision_id: str
    effect: Effect
    reasons: tuple[PolicyReason, ...]
    shadow_effect: Effect
    shadow_reasons: tuple[PolicyReason, ...]
    # Observe-mode policies whose promotion would change the answer.
    shadow_changes: tuple[PolicyReason, ...]
    errors: tuple[str, ...]
    revision: str | None
    eval_micros: int
    timestamp: float
    cached: bool = False  # answered from the evaluator's cache (same request, same bundle)
    # How long an enforcement point may reuse this answer: 0 for failures and for answers
    # evaluated live (decision/risk_cache.py), never past the next @expires boundary.
    ttl_seconds: int = 0
    # The revocation list's version when this was answered (recovery/revocation.py).
    revocation_epoch: int = 0
    # Governance: the grants (JIT or break-glass) and exceptions in force for this request.
    grant_ids: tuple[str, ...] = ()
    exception_ids: tuple[str, ...] = ()
    # The trust plane's assessment: score, level and each signal with its value and source.
    trust: dict[str, Any] | None = None
    # Each canary policy's cohort for this principal: (policy id, "enforced" | "observed").
    canary: tuple[tuple[str, str], ...] = ()
    # decision/epoch.py: moves on revocations, grants, activations and trust-state changes;
    # a cache holding answers of an older epoch drops them.
    cache_epoch: int = 0
    # decision/risk_cache.py: the tier and risk level the reuse was decided by, and why the
    # request was evaluated live (None: it may be reused for ttl_seconds).
    cache: dict[str, Any] | None = None

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW

    @property
    def shadow_mismatch(self) -> bool:
        return self.effect is not self.shadow_effect

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "decision": self.effect.value,
            "reasons": [r.as_dict() for r in self.reasons],
            "shadow": {
                "decision": self.shadow_effect.value,
                "reasons": [r.as_dict() for r in self.shadow_reasons],
                "would_change": [r.as_dict() for r in self.shadow_changes],
            },
            "errors": list(self.errors),
            "revision": self.revision,
            "eval_micros": self.eval_micros,
            "cached": self.cached,
            "ttl_seconds": self.ttl_seconds,
            "revocation_epoch": self.revocation_epoch,
            "cache_epoch": self.cache_epoch,
            **({"cache": self.cache} if self.cache is not None else {}),
            **({"grants": list(self.grant_ids)} if self.grant_ids else {}),
            **({"exceptions": list(self.exception_ids)} if self.exception_ids else {}),
            **({"trust": self.trust} if self.trust is not None else {}),
            **({"canary": dict(self.canary)} if self.canary else {}),
        }


@dataclass(frozen=True, slots=True)
class GrantRef:
    """A grant as the decision path sees it: `parent` (a role entity) is added to the
    principal's parents while `starts_at <= now < expires_at`."""

    grant_id: str
    parent_type: str
    parent_id: str
    starts_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class ExceptionRef:
    """An approved exception: forbid `policy_id` does not apply while in its window."""

    exception_id: str
    policy_id: str
    starts_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class Elevation:
    """What governance adds to one request; the evaluator checks each window against its own
    clock, so nothing applies outside it whatever the caller passed."""

    grants: tuple[GrantRef, ...] = ()
    exceptions: tuple[ExceptionRef, ...] = ()


class _RandomPool(threading.local):
    """Random bytes drawn from the OS 4 KiB at a time, per thread.

    `os.urandom` is a system call that releases the GIL; on the decision path each release lets
    the ledger writer thread in, and getting the GIL back can take a whole switch interval.
    Drawing in bulk keeps the ids just as unpredictable with one call per ~400 decisions.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.offset = 0

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.buffer):
            self.buffer = os.urandom(4096)
            self.offset = 0
        start = self.offset
        self.offset += n
        return self.buffer[start : start + n]


_random = _RandomPool()


def _fresh_pool_after_fork() -> None:
    # A forked child must never hand out the parent's remaining bytes again.
    global _random
    _random = _RandomPool()


os.register_at_fork(after_in_child=_fresh_pool_after_fork)


def refusal(error: str, revision: str | None = None, revocation_epoch: int = 0) -> Decision:
    """A deny settled before any policy is asked (no bundle, revoked, no credential, no route).
    `error` starts with the reason's code, `code: detail` (`credential_missing: no credential`):
    the ledger's queries read the code from it (telemetry/query.py)."""
    return Decision(
        decision_id=new_decision_id(),
        effect=Effect.DENY,
        reasons=(),
        shadow_effect=Effect.DENY,
        shadow_reasons=(),
        shadow_changes=(),
        errors=(error,),
        revision=revision,
        eval_micros=0,
        timestamp=time.time(),
        revocation_epoch=revocation_epoch,
    )


_MS_MASK = (1 << 48) - 1
_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_RAND_A_MASK = 0xFFF << 64  # rand_a: bits 62-73 of the random draw, moved up two bits
_RAND_B_MASK = (1 << 62) - 1


def new_decision_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so ids sort the way decisions happened."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(_random.take(10), "big")
    value = (
        ((ms & _MS_MASK) << 80)
        | _VERSION_AND_VARIANT
        | ((rand << 2) & _RAND_A_MASK)
        | (rand & _RAND_B_MASK)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# The enforcement point on whose behalf the current request is answered (a registered PEP's
# name, or "anonymous"), set by the PEP gate around each decision endpoint call and read where
# the decision record is built. A context variable rather than a parameter: every adapter's
# record path (decide, refuse, record) then names its PEP without each signature carrying it,
# and each asyncio task (one per HTTP request or gRPC call) has its own value.
CALLING_PEP: ContextVar[str | None] = ContextVar("calling_pep", default=None)

# The trace the current decision belongs to (32 hex digits), set by telemetry/tracing.py while a
# traced decision is answered and read where its record, its answer's headers and its log lines
# are made. None whenever tracing is off.
TRACE_ID: ContextVar[str | None] = ContextVar("trace_id", default=None)

# The id of the decision the current task answered last, for log lines (telemetry/logs.py).
DECISION_ID: ContextVar[str | None] = ContextVar("decision_id", default=None)
