"""Device posture: what an MDM/EDR integration last reported about the device a request came
from, and the `device` signal.

Reports arrive through the admin API (`POST /v1/trust/devices/{id}/posture`, stored by
`device_store.py`); every serving process keeps all of them in a `DeviceIndex` in memory,
replaced whole when the change feed's `trust-devices` topic moves, so the decision path reads
one dict and replicas agree within the feed's latency. Each reload that changes anything bumps
`epoch` and calls the `on_change` hooks: a cache of decisions (or anything else that
remembered an answer given with the old posture) drops what it holds, so a device turning
non-compliant is seen by the very next decision.

The request names its device (enforcement/ finds it; `TrustInputs.device`): an id from a
trusted proxy's header or the mTLS certificate's URI, `serial:N` for the certificate's serial
(a report may name it), or a trusted PEP's `inputs.device_id`. A device nobody named, one with
no report, or one whose report is older than `max_age_seconds` is a signal, not an error.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from trustplane.trust.signals import Signal, TrustInputs, constant_signal

TOPIC = "trust-devices"
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
CHECKS = ("disk_encryption", "edr", "screen_lock", "managed", "patched")


@dataclass(frozen=True, slots=True)
class Posture:
    device_id: str
    disk_encrypted: bool
    os_patch_age_days: int
    edr_running: bool
    screen_lock: bool
    managed: bool
    reported_at: float
    received_at: float
    reported_by: str
    certificate_serial: str | None = None
    owner: str = ""

    def failing(self, required: Iterable[str], max_patch_age_days: float) -> list[str]:
        """The required checks this report fails, in CHECKS order."""
        ok = {
            "disk_encryption": self.disk_encrypted,
            "edr": self.edr_running,
            "screen_lock": self.screen_lock,
            "managed": self.managed,
            "patched": self.os_patch_age_days <= max_patch_age_days,
        }
        wanted = set(required)
        return [check for check in CHECKS if check in wanted and not ok[check]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "disk_encrypted": self.disk_encrypted,
            "os_patch_age_days": self.os_patch_age_days,
            "edr_running": self.edr_running,
            "screen_lock": self.screen_lock,
            "managed": self.managed,
            "reported_at": self.reported_at,
            "received_at": self.received_at,
            "reported_by": self.reported_by,
            "certificate_serial": self.certificate_serial,
            "owner": self.owner or None,
        }


class DeviceIndex:
    """Every device's newest report, in memory. `load` is the store read (device_store.py's
    `all_postures`), injected so this module stays free of the store."""

    def __init__(self, load: Callable[[], tuple[int, list[Posture]]]) -> None:
        self._load = load
        self._by_id: dict[str, Posture] = {}
        self._by_serial: dict[str, Posture] = {}
        self.version = -1
        self.epoch = 0  # bumped whenever a reload changed any device's posture
        self._hooks: list[Callable[[int], None]] = []
        self._lock = threading.Lock()

    def on_change(self, hook: Callable[[int], None]) -> None:
        """Call `hook(epoch)` after each reload that changed a posture (a decision cache drops
        its answers)."""
        self._hooks.append(hook)

    def refresh(self, _topic: str = TOPIC) -> None:
        version, postures = self._load()
        by_id = {p.device_id: p for p in postures}
        with self._lock:
            if version < self.version:
                return  # an older read finishing late
            changed = by_id != self._by_id
            self._by_id = by_id
            self._by_serial = {p.certificate_serial: p for p in postures if p.certificate_serial}
            self.version = version
            if changed:
                self.epoch += 1
            epoch = self.epoch
        if changed:
            for hook in self._hooks:
                hook(epoch)

    def find(self, device: str) -> Posture | None:
        """The report of a device id, or of `serial:N` (a certificate serial a report named)."""
        if device.startswith("serial:"):
            return self._by_serial.get(device[7:])
        return self._by_id.get(device)

    def __len__(self) -> int:
        return len(self._by_id)


class DeviceSignals:
    """The `device` signal: 0 for a known, fresh, compliant device; 1 for a report failing a
    required check; `unknown` when no device was named or none has a report; `stale` when the
    report is older than `max_age_seconds`. Workloads have no device: 0."""

    names: tuple[str, ...] = ("device",)
    params: Mapping[str, Mapping[str, Any]] = {
        "device": {
            "max_age_seconds": 86400,
            "max_patch_age_days": 30,
            "require": list(CHECKS),
            "unknown": 1.0,
            "stale": 1.0,
        }
    }
    choices: Mapping[str, Mapping[str, tuple[str, ...]]] = {"device": {"require": CHECKS}}
    fractions: Mapping[str, tuple[str, ...]] = {"device": ("unknown", "stale")}

    def __init__(self, index: DeviceIndex | None) -> None:
        self._index = index

    @property
    def epoch(self) -> int:
        """Moves whenever a device's posture changed (`DeviceIndex.epoch`)."""
        return self._index.epoch if self._index is not None else 0

    def signals(self, inputs: TrustInputs, wanted: frozenset[str]) -> Iterator[Signal]:
        if "device" not in wanted:
            return
        if inputs.workload:
            yield constant_signal("device", 0.0, "a workload: no device", inputs.source)
            return
        device = inputs.device
        source = inputs.device_source or inputs.source
        unknown = min(1.0, float(inputs.param("device", "unknown", 1.0)))
        if device is None:
            yield constant_signal("device", unknown, "the request names no device", source)
            return
        found = self._index.find(device) if self._index is not None else None
        if found is None:
            yield Signal(
                "device", unknown, {"device": device}, f"no posture report for {device}", source
            )
            return
        age = max(0.0, inputs.now - found.reported_at)
        limit = float(inputs.param("device", "max_age_seconds", 86400))
        observed: dict[str, Any] = {"device": found.device_id, "report_age": round(age)}
        if age > limit:
            stale = min(1.0, float(inputs.param("device", "stale", 1.0)))
            yield Signal(
                "device",
                stale,
                observed,
                f"{found.device_id}: report {round(age)} s old (stale after {limit:.0f} s)",
                source,
            )
            return
        required = inputs.param("device", "require", CHECKS)
        patch = float(inputs.param("device", "max_patch_age_days", 30))
        failing = found.failing(required, patch)
        observed["failing"] = failing
        if failing:
            why = f"{found.device_id} fails {', '.join(failing)}"
            if "patched" in failing:
                why += f" (patches {found.os_patch_age_days} days old, limit {patch:.0f})"
            yield Signal("device", 1.0, observed, why, source)
        else:
            yield Signal("device", 0.0, observed, f"{found.device_id} is compliant", source)
