"""The trust plane as the server builds it: the providers configured, in one assessor.

State other planes keep (device reports, behaviour history, the identity plane's registration
entries and image attestations) is handed in by the composition layer (server/runtime.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine

from trustplane.config import ConfigError, Settings
from trustplane.trust.assessor import TrustAssessor
from trustplane.trust.authentication import AuthenticationSignals
from trustplane.trust.behaviour import BehaviourSignals, BehaviourState
from trustplane.trust.device import DeviceIndex, DeviceSignals
from trustplane.trust.network import Locator, NetworkList, NetworkListError, NetworkSignals
from trustplane.trust.signals import Provider
from trustplane.trust.travel import TravelSignals
from trustplane.trust.travel_history import TravelHistory
from trustplane.trust.workload import WorkloadSignals

# (drift, digests, attested): see workload.py; None when the identity plane is not configured.
WorkloadLookups = tuple[
    Callable[[str], str | None], Callable[[str], tuple[str, ...]], Callable[[str], tuple[str, ...]]
]


def assessor_from_settings(
    settings: Settings,
    engine: Engine,
    clock: Callable[[], float] = time.time,
    *,
    devices: DeviceIndex | None = None,
    behaviour: BehaviourState | None = None,
    workload: WorkloadLookups | None = None,
    history: TravelHistory | None = None,
) -> TrustAssessor:
    """Raises ConfigError naming the file and line of a CIDR list that does not parse.
    `history`: the process's travel history (the runtime's); a new one when not given."""
    config = settings.trust
    try:
        bad = NetworkList.from_files(config.bad_networks_files)
        corporate = NetworkList.from_files(config.corporate_networks_files)
    except NetworkListError as exc:
        raise ConfigError(f"trust: {exc}") from None
    if config.city_database is not None and not config.city_database.is_file():
        raise ConfigError(f"trust.city_database: {config.city_database} is not a file")
    locator = Locator(geoip=config.geoip, city_database=config.city_database)
    providers: list[Provider] = [
        AuthenticationSignals(),
        NetworkSignals(locator, bad, corporate),
        TravelSignals(engine, locator, history),
        DeviceSignals(devices),
        WorkloadSignals(*(workload or (None, None, None))),
        BehaviourSignals(behaviour),
    ]
    return TrustAssessor(providers, trusted_peps=config.trusted_peps, clock=clock)
