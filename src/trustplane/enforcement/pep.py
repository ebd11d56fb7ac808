"""Who may ask for decisions: authentication of the policy enforcement points (PEPs).

A PEP (an Envoy, an nginx, a service using AuthZEN, the kube-apiserver calling the admission
webhook) names the principal it asks about, and the decision endpoints believe it: so the PEP
itself must be known. Each registered PEP has a name (what decision records and the latency
metric show) and proves itself with one of:

- a token from `trustplane pep add NAME` (`tpp_…`; only its sha256 is stored), sent as
  `Authorization: Bearer` (gRPC: the call's `authorization` metadata; forward-auth and Envoy
  HTTP ext_authz, whose `Authorization` is the end user's, in `X-Trustplane-PEP-Authorization`);
- an mTLS client certificate issued by the trust domain's CA, when the server serves HTTPS,
  whose SPIFFE ID was registered with `trustplane pep add NAME --spiffe-id ID`;
- a JWT-SVID of the trust domain for `pep.audience`, same SPIFFE ID rule, in the same header
  as a token.

`pep.auth` says what happens without one: `off` (nobody is asked; every caller is
`anonymous`), `optional` (a credential presented must be valid, none is `anonymous`),
`required` (refused: 401 problem document, gRPC a denied CheckResponse with status
UNAUTHENTICATED). The hot path is one sha256 and one dict lookup: the table lives in memory,
reloaded when the change feed announces `peps`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from trustplane.config import ConfigError, PepAuth, Settings
from trustplane.errors import TrustplaneError
from trustplane.identity.keys import KeySet
from trustplane.identity.spiffe_id import SpiffeId, SpiffeIdError
from trustplane.identity.svid import SvidError, validate_jwt_svid
from trustplane.store.feed import announce
from trustplane.store.tables import peps

log = logging.getLogger("trustplane.pep")

TOPIC = "peps"
ANONYMOUS = "anonymous"  # no credential asked for (pep.auth off) or presented (optional)
TOKEN_PREFIX = "tpp_"
PEP_HEADER = "x-trustplane-pep-authorization"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
LOOPBACK_NAMES = ("localhost",)


class PepError(TrustplaneError):
    """A registry change that cannot be made; the message says why (CLI: exit 2)."""


class PepUnauthenticated(Exception):
    """A decision endpoint call whose PEP is not authenticated; `code` for machines."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class PepRecord:
    name: str
    spiffe_id: str | None
    has_token: bool
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spiffe_id": self.spiffe_id,
            "token": self.has_token,
            "created_at": self.created_at,
        }


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PepStore:
    """The `peps` table. Every change is announced on the change feed in its transaction, so
    each serving process reloads its in-memory copy within the feed's interval."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, name: str, spiffe_id: str | None = None) -> str | None:
        """Register a PEP; returns its token (shown once) or None for one that authenticates
        by SPIFFE ID (mTLS or JWT-SVID)."""
        if not _NAME.match(name):
            raise PepError(
                f"PEP name {name!r}: 1-63 characters of a-z, 0-9, '.', '_', '-', starting with "
                "a letter or digit"
            )
        if name == ANONYMOUS:
            raise PepError(f"PEP name {ANONYMOUS!r} is reserved for unauthenticated callers")
        token = None
        digest = None
        if spiffe_id is not None:
            try:
                spiffe_id = str(SpiffeId.parse(spiffe_id))
            except SpiffeIdError as exc:
                raise PepError(f"--spiffe-id: {exc}") from None
        else:
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            digest = token_digest(token)
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    insert(peps).values(
                        name=name, token_sha256=digest, spiffe_id=spiffe_id, created_at=time.time()
                    )
                )
                announce(connection, TOPIC)
        except IntegrityError:
            raise PepError(
                f"a PEP named {name!r} (or with SPIFFE ID {spiffe_id}) is already registered"
                if spiffe_id
                else f"a PEP named {name!r} is already registered"
            ) from None
        return token

    def remove(self, name: str) -> None:
        with self._engine.begin() as connection:
            removed = connection.execute(delete(peps).where(peps.c.name == name)).rowcount
            if not removed:
                raise PepError(f"no PEP named {name!r}")
            announce(connection, TOPIC)

    def list(self) -> list[PepRecord]:
        with self._engine.connect() as connection:
            rows = connection.execute(select(peps).order_by(peps.c.name)).all()
        return [
            PepRecord(row.name, row.spiffe_id, row.token_sha256 is not None, row.created_at)
            for row in rows
        ]

    def credentials(self) -> tuple[dict[str, str], dict[str, str]]:
        """token sha256 → name, SPIFFE ID → name."""
        with self._engine.connect() as connection:
            rows = connection.execute(select(peps.c.name, peps.c.token_sha256, peps.c.spiffe_id))
            tokens: dict[str, str] = {}
            spiffe: dict[str, str] = {}
            for row in rows:
                if row.token_sha256:
                    tokens[row.token_sha256] = row.name
                if row.spiffe_id:
                    spiffe[row.spiffe_id] = row.name
        return tokens, spiffe


class PepRegistry:
    """The registered PEPs in memory; `refresh` (a change-feed subscriber) replaces them
    whole, so a reader never sees half a reload."""

    def __init__(self, store: PepStore) -> None:
        self._store = store
        self._tables: tuple[dict[str, str], dict[str, str]] = ({}, {})

    def refresh(self, _topic: str = TOPIC) -> None:
        self._tables = self._store.credentials()

    def by_token(self, token: str) -> str | None:
        return self._tables[0].get(token_digest(token))

    def by_spiffe_id(self, spiffe_id: str) -> str | None:
        return self._tables[1].get(spiffe_id)

    def __len__(self) -> int:
        tokens, spiffe = self._tables
        return len(set(tokens.values()) | set(spiffe.values()))


class PepAuthenticator:
    """The PEP behind one decision endpoint call, per `pep.auth`."""

    def __init__(
        self,
        mode: PepAuth,
        registry: PepRegistry,
        audience: str,
        keys: Callable[[], KeySet] | None = None,
        revoked: Callable[[str | None, int | None], str | None] | None = None,
        refused: Callable[[str], None] | None = None,
    ) -> None:
        """`keys`: the trust domain's keys (JWT-SVIDs), None without the identity plane;
        `revoked(token_id, certificate_serial)`: why a credential is revoked, or None;
        `refused(code)`: told of every refusal (the refusals metric)."""
        self.mode = mode
        self._registry = registry
        self._audience = audience
        self._keys = keys
        self._revoked = revoked
        self._refused = refused

    def authenticate(
        self,
        authorization: str | None,
        peer_spiffe_id: str | None = None,
        peer_serial: int | None = None,
    ) -> str:
        """The calling PEP's name (or `anonymous`), or PepUnauthenticated. `authorization`: the
        `Bearer` credential the PEP sent; `peer_spiffe_id`: the SPIFFE ID of the client
        certificate the TLS handshake verified against the trust domain's CA."""
        try:
            return self._authenticate(authorization, peer_spiffe_id, peer_serial)
        except PepUnauthenticated as exc:
            if self._refused is not None:
                self._refused(exc.code)
            raise

    def _authenticate(
        self, authorization: str | None, peer_spiffe_id: str | None, peer_serial: int | None
    ) -> str:
        if self.mode is PepAuth.OFF:
            return ANONYMOUS
        if authorization:
            scheme, _, credential = authorization.strip().partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise PepUnauthenticated(
                    "pep_credential_unsupported", "send the PEP credential as 'Bearer <token>'"
                )
            if credential.startswith(TOKEN_PREFIX):
                name = self._registry.by_token(credential)
                if name is None:
                    raise PepUnauthenticated("pep_token_unknown", "the PEP token is not valid")
                return name
            return self._jwt_svid(credential)
        if peer_spiffe_id is not None:
            return self._by_spiffe_id(peer_spiffe_id, None, peer_serial)
        if self.mode is PepAuth.REQUIRED:
            raise PepUnauthenticated(
                "pep_credential_missing",
                "this endpoint answers registered PEPs only: present a PEP token or JWT-SVID "
                "(Bearer) or an mTLS client certificate of the trust domain",
            )
        return ANONYMOUS

    def _jwt_svid(self, token: str) -> str:
        if self._keys is None:
            raise PepUnauthenticated(
                "pep_token_unknown",
                "not a PEP token, and JWT-SVIDs need the identity plane (identity.kek_file)",
            )
        try:
            svid = validate_jwt_svid(self._keys(), token, self._audience)
        except SvidError as exc:
            raise PepUnauthenticated("pep_" + exc.code, f"JWT-SVID refused: {exc.detail}") from None
        jti = svid.claims.get("jti")
        return self._by_spiffe_id(str(svid.spiffe_id), jti if isinstance(jti, str) else None, None)

    def _by_spiffe_id(self, spiffe_id: str, token_id: str | None, serial: int | None) -> str:
        name = self._registry.by_spiffe_id(spiffe_id)
        if name is None:
            raise PepUnauthenticated(
                "pep_not_registered", f"{spiffe_id} is not a registered PEP (trustplane pep add)"
            )
        why = self._revoked(token_id, serial) if self._revoked is not None else None
        if why is not None:
            raise PepUnauthenticated("pep_credential_revoked", why)
        return name


class PepLatency:
    """`trustplane_pep_decision_seconds{pep}`: how long each PEP waits for its answers, from
    the call reaching the endpoint to the answer leaving it (authentication, decision, ledger
    under sync durability). The label is a registered PEP's name or `anonymous`; registered
    names are bounded by the registry, and past MAX_LABELS further names share `other`, so no
    caller can grow the metric."""

    MAX_LABELS = 64

    def __init__(self, registry: CollectorRegistry) -> None:
        self._histogram = Histogram(
            "trustplane_pep_decision_seconds",
            "Decision latency as each enforcement point sees it (endpoint in to answer out), "
            "by PEP name (`anonymous`: no PEP authentication).",
            ["pep"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=registry,
        )
        self._children: dict[str, Any] = {}

    def observe(self, pep: str, seconds: float) -> None:
        child = self._children.get(pep)
        if child is None:
            label = pep if len(self._children) < self.MAX_LABELS else "other"
            child = self._histogram.labels(label)
            self._children[pep] = child
        child.observe(seconds)


def refusal_counter(registry: CollectorRegistry) -> Callable[[str], None]:
    """`trustplane_pep_refusals_total{reason}`: decision endpoint calls refused because no
    registered PEP made them (probing shows here, not in the ledger: no decision is made).
    Reasons are the authenticator's fixed codes, so the label is bounded."""
    counter = Counter(
        "trustplane_pep_refusals",
        "Decision endpoint calls refused before any decision: the caller is not an "
        "authenticated, registered PEP; by reason.",
        ["reason"],
        registry=registry,
    )
    return lambda code: counter.labels(code).inc()


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen_policy(settings: Settings) -> None:
    """Refuse to serve decisions beyond loopback to callers that need not authenticate."""
    if is_loopback(settings.server.host):
        return
    if settings.pep.auth is PepAuth.REQUIRED or settings.pep.allow_unauthenticated:
        return
    raise ConfigError(
        f"server.host {settings.server.host} is beyond loopback but pep.auth is "
        f"{settings.pep.auth.value}: "
        "set pep.auth = required (PEPs then authenticate, `trustplane pep add`) or, knowing "
        "anyone who can connect gets decisions, --allow-unauthenticated-peps"
    )
