"""Impossible travel and new countries, from each principal's history in the store.

Every request with a located source address is compared with where the same principal was
seen before, then remembered: one row per principal and country in `trust_locations`, held in
memory and written behind, so every replica on the same database sees the others' sightings
within the change feed's latency (travel_history.py; docs/trust.md says what that costs).

- `impossible_travel`: the distance from the newest earlier sighting (city coordinates, from
  the configured city database) over the time between them exceeds `speed_kmh`; distances
  below `min_km` are ignored, since geolocation is only that precise.
- `new_country`: the principal was seen before, but not from this country in `days` days. A
  principal's very first sighting is not flagged (every country is new to a new principal).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from trustplane.store.text import column_text
from trustplane.trust.network import Location, Locator
from trustplane.trust.signals import Signal, TrustInputs

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from trustplane.trust.travel_history import TravelHistory

EARTH_RADIUS_KM = 6371.0


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle (haversine) distance between two (latitude, longitude) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def history_key(principal: str) -> str:
    """The principal as its history's key: column-safe text, or its SHA-256 when too long for
    the column (a cut prefix could merge two principals' histories)."""
    text = column_text(principal)
    if len(text) <= 1000:
        return text
    return "sha256:" + hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()


class TravelSignals:
    names: tuple[str, ...] = ("impossible_travel", "new_country")
    params: Mapping[str, Mapping[str, Any]] = {
        "impossible_travel": {"speed_kmh": 1000, "min_km": 500},
        "new_country": {"days": 90},
    }

    def __init__(
        self, engine: Engine, locator: Locator, history: TravelHistory | None = None
    ) -> None:
        """`history`: the process's (the runtime's, shared by every decision point); a new one
        on `engine` when not given."""
        if history is None:
            from trustplane.trust.travel_history import TravelHistory  # the store: when serving

            history = TravelHistory(engine)
        self._locator = locator
        self.history = history
        self._unlocated: dict[tuple[Any, ...], tuple[Signal, ...]] = {}
        self._memo: dict[tuple[Any, ...], tuple[Any, Any, tuple[Signal, ...]]] = {}

    def prepare(self, principal: Any, address: str | None) -> Callable[[], None] | None:
        """The blocking work this request would do on the caller's thread (locating the
        address, reading the principal's history), for the decision point to run in a worker
        thread first; None when memory has it all."""
        if not address:
            return None
        key = history_key(str(principal))
        history = self.history
        if history.known(key):
            return None

        def load() -> None:
            try:
                location = self._locator.locate(address)
                if location.country is not None:
                    history.load(key)
            except Exception:  # the assessment tries again, and fails closed
                pass

        return load

    def signals(self, inputs: TrustInputs, wanted: frozenset[str]) -> Iterable[Signal]:
        address = inputs.source_ip
        location = self._locator.locate(address) if address else None
        if location is None or location.country is None:
            # Nothing to remember (loopback, private): the same answer for every request.
            key = (address, inputs.source, wanted)
            found = self._unlocated.get(key)
            if found is None:
                why = "no source address" if not address else f"{address} has no known country"
                found = tuple(
                    Signal(name, 0.0, None, why, inputs.source)
                    for name in self.names
                    if name in wanted
                )
                if len(self._unlocated) >= 4096:
                    self._unlocated.clear()
                self._unlocated[key] = found
            return found
        return self._located(inputs, wanted, str(address), location)

    def _located(
        self, inputs: TrustInputs, wanted: frozenset[str], address: str, location: Location
    ) -> tuple[Signal, ...]:
        if not inputs.remember:  # a what-if is no sighting: nothing read, nothing queued
            return tuple(
                Signal(name, 0.0, None, "not assessed for a what-if", inputs.source)
                for name in self.names
                if name in wanted
            )
        # Sightings are kept in whole seconds: one client's requests within a second then see
        # the very same history, and their signals are computed once.
        now = float(int(inputs.now))
        principal = history_key(str(inputs.principal))
        sightings = self.history.remember(principal, address, location, now)
        key = (principal, address, now, wanted, id(inputs.params))
        found = self._memo.get(key)
        if found is not None and found[0] is sightings and found[1] is inputs.params:
            return found[2]
        signals = tuple(self._signals(inputs, wanted, location, list(sightings.values()), now))
        if len(self._memo) >= 4096:
            self._memo.clear()
        self._memo[key] = (sightings, inputs.params, signals)
        return signals

    def _signals(
        self,
        inputs: TrustInputs,
        wanted: frozenset[str],
        location: Location,
        history: list[dict[str, Any]],
        now: float,
    ) -> Iterator[Signal]:
        source = "store"
        if "impossible_travel" in wanted:
            yield self._travel(inputs, location, history, source, now)
        if "new_country" in wanted:
            days = float(inputs.param("new_country", "days", 90))
            since = now - days * 86400
            if not history:
                yield Signal(
                    "new_country", 0.0, location.country, "first sighting of this principal", source
                )
            else:
                seen = any(
                    row["country"] == location.country and row["last_seen"] >= since
                    for row in history
                )
                yield Signal(
                    "new_country",
                    0.0 if seen else 1.0,
                    location.country,
                    f"seen from {location.country} within {days:.0f} days"
                    if seen
                    else f"first request from {location.country} in {days:.0f} days",
                    source,
                )

    @staticmethod
    def _travel(
        inputs: TrustInputs,
        here: Location,
        history: list[dict[str, Any]],
        source: str,
        now: float,
    ) -> Signal:
        if here.latitude is None or here.longitude is None:
            return Signal(
                "impossible_travel", 0.0, None, "no coordinates (no city database)", source
            )
        placed = [r for r in history if r["latitude"] is not None and r["longitude"] is not None]
        if not placed:
            return Signal("impossible_travel", 0.0, None, "no earlier located sighting", source)
        last = max(placed, key=lambda r: r["last_seen"])
        km = distance_km((last["latitude"], last["longitude"]), (here.latitude, here.longitude))
        hours = max(now - last["last_seen"], 1.0) / 3600
        speed = km / hours
        limit = float(inputs.param("impossible_travel", "speed_kmh", 1000))
        floor = float(inputs.param("impossible_travel", "min_km", 500))
        flagged = km >= floor and speed > limit
        return Signal(
            "impossible_travel",
            1.0 if flagged else 0.0,
            {
                "km": round(km),
                "seconds": round(now - last["last_seen"]),
                "kmh": round(speed),
            },
            f"{round(km)} km from {last['country']} ({last['address']}) in "
            f"{round(now - last['last_seen'])} s: {round(speed)} km/h"
            + (f" > {limit:.0f}" if flagged else f" (limit {limit:.0f}, from {floor:.0f} km)"),
            source,
        )
