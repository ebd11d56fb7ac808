"""Workload registration entries: which SPIFFE ID a caller of the Workload API gets.

An entry holds a SPIFFE ID and unix selectors; a caller matches when every selector of the entry
is among the selectors attested for it (`workload_attestation.py`). Entries live in the store
and are announced on the change feed; each serving process keeps them in an `EntryIndex` in memory.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from trustplane.errors import TrustplaneError
from trustplane.identity.spiffe_id import SpiffeId, SpiffeIdError
from trustplane.store.feed import announce
from trustplane.store.tables import identity_entries

TOPIC = "identity_entries"
_NUMBER = re.compile(r"[0-9]{1,10}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class EntryError(TrustplaneError):
    """A registration entry that cannot be stored or found; the message names the field."""


def parse_selector(text: str) -> str:
    """`unix:uid:N`, `unix:gid:N`, `unix:path:/abs/path` or `unix:sha256:<64 hex>`."""
    kind, _, value = text.partition(":")
    name, _, value = value.partition(":")
    if kind != "unix" or name not in ("uid", "gid", "path", "sha256"):
        raise EntryError(
            f"selectors: {text!r}: expected unix:uid:N, unix:gid:N, unix:path:/path or "
            "unix:sha256:HEX"
        )
    if name in ("uid", "gid") and not _NUMBER.fullmatch(value):
        raise EntryError(f"selectors: {text!r}: {name} must be a number")
    if name == "path" and not value.startswith("/"):
        raise EntryError(f"selectors: {text!r}: the path must be absolute")
    if name == "sha256" and not _SHA256.fullmatch(value):
        raise EntryError(f"selectors: {text!r}: sha256 must be 64 lowercase hex digits")
    return f"unix:{name}:{value}"


@dataclass(frozen=True)
class RegistrationEntry:
    id: str
    spiffe_id: SpiffeId
    selectors: tuple[str, ...]
    x509_ttl_seconds: int | None
    jwt_ttl_seconds: int | None
    owner: str
    created_by: str
    created_at: float

    def matches(self, attested: frozenset[str]) -> bool:
        return all(s in attested for s in self.selectors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spiffe_id": str(self.spiffe_id),
            "selectors": list(self.selectors),
            "x509_ttl_seconds": self.x509_ttl_seconds,
            "jwt_ttl_seconds": self.jwt_ttl_seconds,
            "owner": self.owner,
            "created_by": self.created_by,
            "created_at": self.created_at,
        }


class EntryStore:
    def __init__(self, engine: Engine, trust_domain: str, max_ttl_seconds: int) -> None:
        self._engine = engine
        self._trust_domain = trust_domain
        self._max_ttl = max_ttl_seconds

    def create(
        self,
        spiffe_id: str,
        selectors: Sequence[str],
        *,
        owner: str = "",
        created_by: str = "",
        x509_ttl_seconds: int | None = None,
        jwt_ttl_seconds: int | None = None,
    ) -> RegistrationEntry:
        try:
            parsed = SpiffeId.parse(spiffe_id)
        except SpiffeIdError as exc:
            raise EntryError(f"spiffe_id: {exc}") from None
        if not parsed.member_of(self._trust_domain):
            raise EntryError(
                f"spiffe_id: {parsed} is not in this trust domain ({self._trust_domain})"
            )
        if not parsed.path:
            raise EntryError("spiffe_id: a workload ID needs a path (the trust domain is the CA)")
        if not selectors:
            raise EntryError("selectors: at least one selector is required")
        normalised = tuple(sorted({parse_selector(s) for s in selectors}))
        for name, ttl in (
            ("x509_ttl_seconds", x509_ttl_seconds),
            ("jwt_ttl_seconds", jwt_ttl_seconds),
        ):
            if ttl is not None and not 30 <= ttl <= self._max_ttl:
                raise EntryError(f"{name}: must be within 30..{self._max_ttl} seconds")
        entry = RegistrationEntry(
            id=str(uuid.uuid4()),
            spiffe_id=parsed,
            selectors=normalised,
            x509_ttl_seconds=x509_ttl_seconds,
            jwt_ttl_seconds=jwt_ttl_seconds,
            owner=owner,
            created_by=created_by,
            created_at=time.time(),
        )
        with self._engine.begin() as connection:
            connection.execute(
                insert(identity_entries).values(
                    id=entry.id,
                    spiffe_id=str(entry.spiffe_id),
                    selectors=json.dumps(list(normalised)),
                    x509_ttl_seconds=x509_ttl_seconds,
                    jwt_ttl_seconds=jwt_ttl_seconds,
                    owner=owner,
                    created_by=created_by,
                    created_at=entry.created_at,
                )
            )
            announce(connection, TOPIC)
        return entry

    def list(self) -> list[RegistrationEntry]:
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(identity_entries).order_by(
                    identity_entries.c.spiffe_id, identity_entries.c.created_at
                )
            ).all()
        return [_entry(row) for row in rows]

    def delete(self, entry_id: str) -> RegistrationEntry:
        with self._engine.begin() as connection:
            row = connection.execute(
                select(identity_entries).where(identity_entries.c.id == entry_id)
            ).first()
            if row is None:
                raise EntryError(f"no registration entry {entry_id!r}")
            connection.execute(delete(identity_entries).where(identity_entries.c.id == entry_id))
            announce(connection, TOPIC)
        return _entry(row)


def _entry(row: Any) -> RegistrationEntry:
    return RegistrationEntry(
        id=row.id,
        spiffe_id=SpiffeId.parse(row.spiffe_id),
        selectors=tuple(json.loads(row.selectors)),
        x509_ttl_seconds=row.x509_ttl_seconds,
        jwt_ttl_seconds=row.jwt_ttl_seconds,
        owner=row.owner,
        created_by=row.created_by,
        created_at=row.created_at,
    )


class EntryIndex:
    """The entries in memory, for the Workload API's hot path; `refresh` on the feed topic."""

    def __init__(self, store: EntryStore) -> None:
        self._store = store
        self._entries: tuple[RegistrationEntry, ...] = ()
        self._lock = threading.Lock()
        self.generation = 0  # moves on every change, for streams watching the entries

    def refresh(self, _topic: str = TOPIC) -> None:
        entries = tuple(self._store.list())
        with self._lock:
            self._entries = entries
            self.generation += 1

    def replace(self, entries: Iterable[RegistrationEntry]) -> None:
        with self._lock:
            self._entries = tuple(entries)
            self.generation += 1

    def snapshot(self) -> tuple[RegistrationEntry, ...]:
        """The current entries; a new tuple after every change."""
        return self._entries

    def match(self, attested: frozenset[str]) -> list[RegistrationEntry]:
        return [e for e in self._entries if e.matches(attested)]
