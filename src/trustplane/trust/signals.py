"""What a signal is, and what a provider sees when it computes one.

A provider turns `TrustInputs` (what this PDP verified, or what a trusted PEP supplied) into
`Signal`s: a value from 0 (nothing unusual) to 1 (as risky as this signal gets), what was
observed, a one-line explanation and the source of its input. The bundle's `trust.yaml`
weighs the value into points (policy.py); providers know nothing of weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from trustplane.model import EntityRef


@dataclass(slots=True)  # not frozen: a dozen per request, and a frozen init costs twice as much
class Signal:
    name: str
    value: float  # 0.0 (nothing unusual) … 1.0 (as risky as this signal gets)
    observed: Any  # what was seen: "otp", 1800 (seconds), "DE"; JSON-serialisable
    explanation: str
    source: str  # where the input came from: token, mtls, proxy, pep:NAME, geoip2fast, store
    error: str | None = None  # the provider failed: value is what trust.yaml's on_error says


@lru_cache(maxsize=4096)
def constant_signal(name: str, value: float, explanation: str, source: str) -> Signal:
    """The one shared object for a signal that observed nothing (its words are constant).
    The assessor reuses the weighing of a set of signals it has seen before, recognised by
    identity (assessor.py), so providers return these for their everyday answers rather than
    a new Signal per request. Nothing may change a Signal once a provider returned it."""
    return Signal(name, value, None, explanation, source)


@dataclass(slots=True)  # not frozen: built for every request, and frozen init costs twice
class TrustInputs:
    """Everything a provider may read about one request (providers must not change it)."""

    principal: EntityRef
    action: EntityRef
    resource: EntityRef
    claims: Mapping[str, Any] | None  # verified authentication claims, None when no token
    source_ip: str | None
    workload: bool
    source: str  # who vouches for `claims` and `source_ip`
    now: float
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per signal
    subject: str | None = None  # the authenticated caller (a workload's SPIFFE ID)
    device: str | None = None  # the device the request names (device.py), and who said so
    device_source: str | None = None
    # False for a what-if (a search's candidates): providers that keep history read it only.
    remember: bool = True

    def param(self, signal: str, name: str, default: Any) -> Any:
        return self.params.get(signal, {}).get(name, default)


class Provider(Protocol):
    """A source of signals. `names` are the signals it can produce and `params` their tunable
    thresholds with defaults (trust.yaml may set them); `signals` yields those asked for."""

    names: tuple[str, ...]
    params: Mapping[str, Mapping[str, Any]]

    def signals(self, inputs: TrustInputs, wanted: frozenset[str]) -> Iterable[Signal]: ...
