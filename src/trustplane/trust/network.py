"""Network signals: where the request comes from.

`country` and `asn` come from the source address through geoip2fast's database (shipped in
the package, loaded once per process on first use: about 0.6 s and 130 MB with ASN names);
`bad_network` and `corporate_network` from CIDR list files the operator keeps
(`trust.bad_networks_files`, `trust.corporate_networks_files`). City coordinates, which
impossible travel needs, come from a MaxMind-format city database when one is configured
(`trust.city_database`, read with `maxminddb`).

The source address is what the PDP's own adapters saw or believed: forwarded headers only from
trusted proxies (enforcement/credentials.ProxyTrust), or `inputs.source_ip` from a PEP the
configuration trusts (assessor.py). Private and loopback addresses have no country.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

from trustplane.trust.signals import Signal, TrustInputs


class NetworkListError(ValueError):
    """A CIDR list file that cannot be read or has a line that is not a network."""


@dataclass(frozen=True, slots=True)
class Location:
    country: str | None  # ISO 3166 alpha-2; None for private or unknown addresses
    asn: str | None  # the network's name (geoip2fast has names, not numbers)
    latitude: float | None = None
    longitude: float | None = None
    source: str = "geoip2fast"


_GEOIP_LOCK = threading.Lock()
_GEOIP: list[Any] = []  # geoip2fast's database, once loaded: shared by every Locator


def geoip_database() -> Any:
    """geoip2fast's database, loaded on first use once per process (about 0.6 s and 130 MB:
    every decision point's Locator shares it, and nothing loads it before a request needs it)."""
    if not _GEOIP:
        with _GEOIP_LOCK:
            if not _GEOIP:
                from geoip2fast import GeoIP2Fast  # type: ignore[import-untyped]

                _GEOIP.append(GeoIP2Fast(geoip2fast_data_file="geoip2fast-asn-ipv6.dat.gz"))
    return _GEOIP[0]


class Locator:
    """Source address → Location. geoip2fast is loaded on first use (thread-safe); answers are
    cached per address, since the same clients ask again and again."""

    def __init__(self, *, geoip: bool = True, city_database: Path | None = None) -> None:
        self._geoip = geoip
        self._city_path = city_database
        self._lock = threading.Lock()
        self._fast: Any = None
        self._city: Any = None
        self.locate = lru_cache(maxsize=4096)(self._locate)

    def _databases(self) -> tuple[Any, Any]:
        if (self._fast is None and self._geoip) or (self._city is None and self._city_path):
            with self._lock:
                if self._fast is None and self._geoip:
                    self._fast = geoip_database()
                if self._city is None and self._city_path is not None:
                    import maxminddb

                    self._city = maxminddb.open_database(str(self._city_path))
        return self._fast, self._city

    def _locate(self, address: str) -> Location:
        try:
            parsed = ip_address(address)
        except ValueError:
            return Location(None, None, source="not an address")
        if not parsed.is_global:  # loopback, private, documentation: no database knows them
            return Location(None, None, source="not a global address")
        fast, city = self._databases()
        country = asn = None
        latitude = longitude = None
        source = "geoip2fast"
        if fast is not None:
            found = fast.lookup(address)
            code = getattr(found, "country_code", "")
            if code and code != "--" and not found.is_private:
                country = code
                asn = found.asn_name or None
        if city is not None:
            record = city.get(address)
            if isinstance(record, dict):
                where = record.get("location") or {}
                latitude, longitude = where.get("latitude"), where.get("longitude")
                code = (record.get("country") or {}).get("iso_code")
                if isinstance(code, str):
                    country = code
                source = "city database" if fast is None else "geoip2fast+city database"
        return Location(country, asn, latitude, longitude, source)


class NetworkList:
    """Networks from CIDR list files: one network a line, `#` starts a comment."""

    def __init__(self, networks: Sequence[IPv4Network | IPv6Network], files: str = "") -> None:
        self._networks = tuple(networks)
        self.files = files
        self.contains = lru_cache(maxsize=4096)(self._contains)

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> NetworkList:
        networks: list[IPv4Network | IPv6Network] = []
        for path in paths:
            try:
                lines = path.read_text().splitlines()
            except OSError as exc:
                raise NetworkListError(f"{path}: cannot read ({exc.strerror})") from None
            for number, line in enumerate(lines, 1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                try:
                    networks.append(ip_network(text, strict=False))
                except ValueError:
                    raise NetworkListError(
                        f"{path}:{number}: not a CIDR network: {text!r}"
                    ) from None
        return cls(networks, ", ".join(p.name for p in paths))

    def __bool__(self) -> bool:
        return bool(self._networks)

    def _contains(self, address: str) -> str | None:
        """The first listed network holding `address`, as text; None when none does."""
        try:
            parsed = ip_address(address)
        except ValueError:
            return None
        for network in self._networks:
            if parsed.version == network.version and parsed in network:
                return str(network)
        return None


class NetworkSignals:
    names: tuple[str, ...] = ("country", "asn", "bad_network", "corporate_network")
    params: Mapping[str, Mapping[str, Any]] = {
        "country": {"risky": [], "allowed": []},  # ISO codes; `allowed` set: others are risky
        "asn": {"risky": []},  # network names (substrings, case-insensitive): hosting, VPNs
    }

    def __init__(self, locator: Locator, bad: NetworkList, corporate: NetworkList) -> None:
        self._locator = locator
        self._bad = bad
        self._corporate = corporate
        # Nothing here depends on the time or the principal: the signals of an address are
        # computed once per trust.yaml parameter set (the lists and databases do not change
        # while the process runs).
        self._memo: dict[tuple[Any, ...], tuple[Mapping[str, Any], tuple[Signal, ...]]] = {}

    def signals(self, inputs: TrustInputs, wanted: frozenset[str]) -> Iterable[Signal]:
        key = (inputs.source_ip, inputs.source, wanted, id(inputs.params))
        found = self._memo.get(key)
        if found is not None and found[0] is inputs.params:
            return found[1]
        signals = tuple(self._signals(inputs, wanted))
        if len(self._memo) >= 4096:
            self._memo.clear()
        self._memo[key] = (inputs.params, signals)
        return signals

    def _signals(self, inputs: TrustInputs, wanted: frozenset[str]) -> Iterator[Signal]:
        address = inputs.source_ip
        source = inputs.source
        if not address:
            for name in self.names:
                if name in wanted:
                    yield Signal(name, 0.0, None, "no source address", source)
            return
        if "bad_network" in wanted:
            hit = self._bad.contains(address)
            yield Signal(
                "bad_network",
                1.0 if hit else 0.0,
                hit,
                f"{address} is in known-bad {hit} ({self._bad.files})"
                if hit
                else f"{address} is in no known-bad network",
                source,
            )
        if "corporate_network" in wanted:
            hit = self._corporate.contains(address)
            yield Signal(
                "corporate_network",
                1.0 if hit else 0.0,
                hit,
                f"{address} is in corporate {hit}"
                if hit
                else f"{address} is off the corporate networks",
                source,
            )
        if not wanted.intersection(("country", "asn")):
            return
        location = self._locator.locate(address)
        where = f"{source}, {location.source}"
        if "country" in wanted:
            risky = set(inputs.param("country", "risky", []))
            allowed = set(inputs.param("country", "allowed", []))
            country = location.country
            flagged = country is not None and (
                country in risky or (bool(allowed) and country not in allowed)
            )
            yield Signal(
                "country",
                1.0 if flagged else 0.0,
                country,
                f"{address} is in {country or 'no known country'}"
                + (" (a risky or not allowed country)" if flagged else ""),
                where,
            )
        if "asn" in wanted:
            names = [str(n).lower() for n in inputs.param("asn", "risky", [])]
            network = location.asn
            flagged = network is not None and any(n in network.lower() for n in names)
            yield Signal(
                "asn",
                1.0 if flagged else 0.0,
                network,
                f"{address} is announced by {network or 'no known network'}"
                + (" (a risky network)" if flagged else ""),
                where,
            )
