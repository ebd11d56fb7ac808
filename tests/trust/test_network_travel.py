"""Network and travel signals on each backend, with an injected clock: CIDR lists, countries
from geoip2fast, and impossible travel from a city database the test writes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
from sqlalchemy import Engine

from trustplane.model import AccessRequest, EntityRef, Evidence
from trustplane.trust.assessor import TrustAssessor
from trustplane.trust.network import Locator, NetworkList, NetworkListError, NetworkSignals
from trustplane.trust.policy import SignalRule, TrustPolicy
from trustplane.trust.travel import TravelSignals, distance_km

LONDON, NEW_YORK = "81.2.69.160", "8.8.8.8"  # GB and US in geoip2fast's database
T0 = 1_900_000_000.0


def city_database(path: Path) -> Path:
    """A two-city MaxMind-format database: London and New York."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    places = {
        "81.2.69.0/24": ("GB", 51.51, -0.13),
        "8.8.8.0/24": ("US", 40.71, -74.01),
    }
    for network, (country, lat, lon) in places.items():
        writer.insert_network(
            IPSet([network]),
            {"country": {"iso_code": country}, "location": {"latitude": lat, "longitude": lon}},
        )
    writer.to_db_file(str(path))
    return path


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Bundle:
    def __init__(self, *rules: SignalRule, **weights: int) -> None:
        found = {n: SignalRule(n, w, True, 1.0) for n, w in weights.items()}
        found.update({r.name: r for r in rules})
        self.extras = {"trust.yaml": TrustPolicy(MappingProxyType(found), declared=True)}
        self.schema_text = ""  # no fragment: Cedar's view keeps `signals` (assessor.py)
        self.policies: list[object] = []


def ask(assessor: TrustAssessor, bundle: Bundle, address: str, who: str = "alice") -> dict:
    request = AccessRequest(
        EntityRef("User", who),
        EntityRef("Action", "db:query"),
        EntityRef("Database", "prod"),
        {},
        Evidence({"amr": ["hwk"]}, address, False, "token"),
    )
    _, record = assessor(request, bundle)  # type: ignore[arg-type]
    return {s["name"]: s for s in record["signals"]} | {"_": record}


def quiet(found: dict) -> list[str]:
    """The signals that moved nothing, recorded by name only."""
    return list(found["_"]["quiet"])


@pytest.fixture
def travel(engine: Engine) -> Iterator[Callable[[Locator], TravelSignals]]:
    """Travel signals on the test's store (a replica each), their writers stopped at the end."""
    made: list[TravelSignals] = []

    def make(locator: Locator) -> TravelSignals:
        made.append(TravelSignals(engine, locator))
        return made[-1]

    yield make
    for signals in made:
        signals.history.stop()


def test_cidr_lists_and_countries(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("# scanners\n203.0.113.0/24\n2001:db8:bad::/48\n")
    corporate = tmp_path / "corp.txt"
    corporate.write_text("81.2.69.0/24\n")
    signals = NetworkSignals(
        Locator(), NetworkList.from_files([bad]), NetworkList.from_files([corporate])
    )
    assessor = TrustAssessor([signals], clock=lambda: T0)
    country = SignalRule("country", 20, True, 1.0, {"allowed": ["GB"]})
    bundle = Bundle(country, bad_network=80, corporate_network=-10)
    scanner = ask(assessor, bundle, "203.0.113.9")
    assert (
        scanner["bad_network"]["points"] == 80
        and "203.0.113.0/24" in scanner["bad_network"]["explanation"]
    )
    assert "country" in quiet(scanner)  # a documentation address has no country
    office = ask(assessor, bundle, LONDON)
    assert office["corporate_network"]["points"] == -10
    assert "country" in quiet(office)  # GB is allowed
    abroad = ask(assessor, bundle, NEW_YORK)
    assert abroad["country"]["observed"] == "US" and abroad["country"]["points"] == 20
    assert abroad["_"]["score"] == 20


def test_a_bad_cidr_line_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("10.0.0.0/8\nnot-a-network\n")
    with pytest.raises(NetworkListError, match=r"bad.txt:2: not a CIDR network: 'not-a-network'"):
        NetworkList.from_files([bad])


def test_impossible_travel_and_new_country_across_replicas(
    travel: Callable[[Locator], TravelSignals], tmp_path: Path
) -> None:
    assert 5500 < distance_km((51.51, -0.13), (40.71, -74.01)) < 5600
    locator = Locator(city_database=city_database(tmp_path / "city.mmdb"))
    clock = Clock()
    # Two assessors on one store: two replicas.
    one = TrustAssessor([travel(locator)], clock=clock)
    two = TrustAssessor([travel(Locator(city_database=tmp_path / "city.mmdb"))], clock=clock)
    bundle = Bundle(impossible_travel=65, new_country=15)
    first = ask(one, bundle, LONDON)
    assert quiet(first) == ["impossible_travel", "new_country"]  # a first sighting
    assert first["_"]["score"] == 0
    clock.now += 60
    again = ask(two, bundle, LONDON)
    assert again["_"]["score"] == 0 and "impossible_travel" in quiet(again)
    clock.now += 600  # ten minutes later, 5,570 km away, on the other replica
    flown = ask(one, bundle, NEW_YORK)
    assert flown["impossible_travel"]["points"] == 65
    assert flown["new_country"]["points"] == 15
    assert flown["_"]["summary"] == "risk 80: impossible_travel +65, new_country +15"
    assert flown["impossible_travel"]["source"] == "store"
    clock.now += 12 * 3600  # twelve hours later: a flight, not impossible; US is known now
    home = ask(two, bundle, LONDON)
    assert quiet(home) == ["impossible_travel", "new_country"]
    other = ask(two, bundle, NEW_YORK, who="bob")
    assert other["_"]["score"] == 0, "each principal has a history of its own"


def test_unusual_principals_keep_a_history_of_their_own(
    travel: Callable[[Locator], TravelSignals],
) -> None:
    """NUL, a lone surrogate and a 5,000-character id: stored on both backends, never merged."""
    from trustplane.trust.travel import history_key

    clock = Clock()
    assessor = TrustAssessor([travel(Locator())], clock=clock)
    bundle = Bundle(new_country=15)
    long_a, long_b = "a" * 5000, "a" * 4999 + "b"
    assert history_key(long_a) != history_key(long_b) and len(history_key(long_a)) < 100
    for who in ("nul\x00id", "lone\ud800", long_a, long_b):
        assert ask(assessor, bundle, LONDON, who=who)["_"]["score"] == 0
        clock.now += 3600
        moved = ask(assessor, bundle, NEW_YORK, who=who)
        assert moved["new_country"]["points"] == 15, who[:20]


def test_a_replica_holding_a_principal_merges_the_others_sightings(
    travel: Callable[[Locator], TravelSignals], tmp_path: Path
) -> None:
    """The history is in memory first: a replica that already holds a principal learns of
    another replica's sighting through the store when the change feed calls `refresh`."""
    database = city_database(tmp_path / "city.mmdb")
    one, two = travel(Locator(city_database=database)), travel(Locator(city_database=database))
    clock = Clock()
    first, second = TrustAssessor([one], clock=clock), TrustAssessor([two], clock=clock)
    bundle = Bundle(impossible_travel=65, new_country=15)
    assert ask(second, bundle, LONDON)["_"]["score"] == 0  # the second replica holds alice
    two.history.flush()
    clock.now += 12 * 3600
    assert ask(first, bundle, NEW_YORK)["_"]["score"] == 15  # a new country, a plausible flight
    one.history.flush()  # written behind, then announced on the change feed
    two.history.refresh()  # what the feed's subscriber does on every replica
    clock.now += 600
    back = ask(second, bundle, LONDON)  # 5,570 km in ten minutes, seen across replicas
    assert back["impossible_travel"]["points"] == 65
    assert back["impossible_travel"]["observed"]["seconds"] == 600
