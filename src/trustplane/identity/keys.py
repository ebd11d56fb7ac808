"""The trust domain's keys: X.509 CAs that sign X.509-SVIDs and keys that sign JWT-SVIDs.

Each key moves through SPIRE's states, one transaction per step, each step announced on the
change feed so every serving process reloads its `KeySet`:

- prepared: published in bundles, not yet signing (verifiers learn it before they need it);
- active: signs new SVIDs (exactly one per kind once initialised);
- superseded: no longer signs, still published, because SVIDs it signed are still live;
- retired: removed from bundles, once every SVID it could have signed has expired
  (superseded_at + the longest SVID lifetime allowed, or its own expiry);
- compromised: removed from bundles at once by an emergency rotation (`emergency`), so every
  SVID it signed stops verifying; it no longer vouches for anything it signed before either.

Private keys are sealed with the KEK (`kek.py`) before they reach the store.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, insert, select, update

from trustplane.errors import TrustplaneError
from trustplane.identity.kek import Kek, KekError
from trustplane.store.feed import announce
from trustplane.store.tables import change_versions, identity_keys

log = logging.getLogger("trustplane.identity.keys")

TOPIC = "identity_keys"
ALGORITHM = "ES256"  # ECDSA P-256 with SHA-256, for CAs and JWT keys alike
REFRESH_HINT_SECONDS = 300
JWT_MAX_TTL_SECONDS = 900  # token exchange issues up to 15 minutes


class KeyKind(StrEnum):
    X509 = "x509"
    JWT = "jwt"


class KeyState(StrEnum):
    PREPARED = "prepared"
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    RETIRED = "retired"
    COMPROMISED = "compromised"


PUBLISHED = (KeyState.PREPARED, KeyState.ACTIVE, KeyState.SUPERSEDED)


class RotationError(TrustplaneError):
    """A rotation step that cannot be taken now; the message says why."""


@dataclass(frozen=True)
class KeyRecord:
    kid: str
    kind: KeyKind
    state: KeyState
    algorithm: str
    public_pem: str
    created_at: float
    not_after: float
    activated_at: float | None
    superseded_at: float | None
    retired_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "kind": self.kind.value,
            "state": self.state.value,
            "algorithm": self.algorithm,
            "created_at": self.created_at,
            "not_after": self.not_after,
            "activated_at": self.activated_at,
            "superseded_at": self.superseded_at,
            "retired_at": self.retired_at,
        }


@dataclass(frozen=True)
class SigningKey:
    """A published key with its private half (opened with the KEK) and, for a CA, its
    certificate."""

    record: KeyRecord
    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate | None

    @property
    def kid(self) -> str:
        return self.record.kid

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()


@dataclass(frozen=True)
class KeySet:
    """What one process signs and verifies with; replaced whole when the keys change."""

    trust_domain: str
    sequence: int
    x509_authorities: tuple[SigningKey, ...]
    jwt_authorities: tuple[SigningKey, ...]
    x509_signer: SigningKey | None
    jwt_signer: SigningKey | None

    def jwt_key(self, kid: str) -> SigningKey | None:
        for key in self.jwt_authorities:
            if key.kid == kid:
                return key
        return None


def _ca_certificate(
    private_key: ec.EllipticCurvePrivateKey, trust_domain: str, now: float, ttl: int
) -> x509.Certificate:
    """A self-signed trust-domain CA: the trust domain's SPIFFE ID as its one URI SAN."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trustplane"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} CA"),
        ]
    )
    start = dt.datetime.fromtimestamp(now - 60, dt.UTC)
    public = private_key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(dt.datetime.fromtimestamp(now + ttl, dt.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(private_key, hashes.SHA256())
    )


class IdentityKeys:
    """The keys in the store: create, rotate, load. Thread-safe through the database."""

    def __init__(
        self,
        engine: Engine,
        kek: Kek,
        trust_domain: str,
        *,
        ca_ttl_seconds: int = 604_800,
        svid_max_ttl_seconds: int = 86_400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._kek = kek
        self.trust_domain = trust_domain
        self._ca_ttl = ca_ttl_seconds
        self._svid_max_ttl = svid_max_ttl_seconds
        self._clock = clock

    # -- reading -------------------------------------------------------------------------------

    def records(self, *, include_retired: bool = False) -> list[KeyRecord]:
        query = select(identity_keys).order_by(identity_keys.c.created_at)
        if not include_retired:
            query = query.where(identity_keys.c.state.in_([s.value for s in PUBLISHED]))
        with self._engine.connect() as connection:
            return [_record(row) for row in connection.execute(query)]

    def initialised(self) -> bool:
        active = [r for r in self.records() if r.state is KeyState.ACTIVE]
        return {r.kind for r in active} == {KeyKind.X509, KeyKind.JWT}

    def load(self) -> KeySet:
        """Open every published key (the KEK is needed only here and when creating keys)."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(identity_keys)
                .where(identity_keys.c.state.in_([s.value for s in PUBLISHED]))
                .order_by(identity_keys.c.created_at)
            ).all()
            version = connection.execute(
                select(change_versions.c.version).where(change_versions.c.topic == TOPIC)
            ).scalar()
        keys = [self._open(row) for row in rows]
        x509_keys = tuple(k for k in keys if k.record.kind is KeyKind.X509)
        jwt_keys = tuple(k for k in keys if k.record.kind is KeyKind.JWT)
        return KeySet(
            trust_domain=self.trust_domain,
            sequence=int(version or 0),
            x509_authorities=x509_keys,
            jwt_authorities=jwt_keys,
            x509_signer=_active(x509_keys),
            jwt_signer=_active(jwt_keys),
        )

    def jwt_verification_keys(self) -> dict[str, ec.EllipticCurvePublicKey]:
        """Every JWT key the trust domain ever had (retired ones too), by kid, each opened
        with the KEK: what re-verifies the server's own countersignatures (an image
        attestation outlives the key that signed it). A key row written without the KEK does
        not open, so it cannot vouch for anything: it is logged and left out (one bad row must
        not stop the keys that do open from verifying)."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(identity_keys).where(
                    identity_keys.c.kind == KeyKind.JWT.value,
                    identity_keys.c.state != KeyState.COMPROMISED.value,
                )
            ).all()
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for row in rows:
            try:
                keys[row.kid] = self._open(row).public_key
            except (KekError, RotationError, ValueError) as exc:
                log.warning("JWT key %s left out of verification: %s", row.kid, exc)
        return keys

    def _open(self, row: Any) -> SigningKey:
        record = _record(row)
        der = self._kek.open(bytes(row.sealed_private), record.kid)
        private = serialization.load_der_private_key(der, password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise RotationError(f"key {record.kid} is not an ECDSA key")
        certificate = None
        if record.kind is KeyKind.X509:
            certificate = x509.load_pem_x509_certificate(record.public_pem.encode())
        return SigningKey(record, private, certificate)

    # -- changing ------------------------------------------------------------------------------

    def initialise(self) -> list[KeyRecord]:
        """Create an active CA and JWT key where none is active. Idempotent."""
        created: list[KeyRecord] = []
        if self.initialised():
            return created  # nothing to change: the bundle's sequence stays as it is
        with self._engine.begin() as connection:
            announce(connection, TOPIC)  # first: serialises concurrent key changes
            for kind in KeyKind:
                if not self._in_state(connection, kind, KeyState.ACTIVE):
                    created.append(self._create(connection, kind, KeyState.ACTIVE))
        return created

    def import_key(
        self, kind: KeyKind, private_pem: bytes, certificate_pem: bytes | None = None
    ) -> KeyRecord:
        """Bring in an existing P-256 key (and, for a CA, its certificate). It becomes the
        active key of its kind when there is none yet, else a prepared one that the next
        rotation step activates."""
        private = _load_import_key(private_pem)
        now = self._clock()
        certificate = None
        if kind is KeyKind.X509:
            if certificate_pem is None:
                raise RotationError("importing a CA needs its certificate (--cert)")
            certificate = _check_import_ca(certificate_pem, private, self.trust_domain, now)
            not_after = certificate.not_valid_after_utc.timestamp()
        elif certificate_pem is not None:
            raise RotationError("a JWT signing key has no certificate")
        else:
            not_after = now + self._ca_ttl
        with self._engine.begin() as connection:
            announce(connection, TOPIC)
            state = KeyState.PREPARED
            if not self._in_state(connection, kind, KeyState.ACTIVE):
                state = KeyState.ACTIVE
            elif self._in_state(connection, kind, KeyState.PREPARED):
                raise RotationError(f"a {kind.value} key is already prepared; activate it first")
            return self._insert(connection, kind, state, private, certificate, now, not_after)

    def prepare(self, kind: KeyKind) -> KeyRecord:
        with self._engine.begin() as connection:
            announce(connection, TOPIC)
            existing = self._in_state(connection, kind, KeyState.PREPARED)
            if existing:
                raise RotationError(
                    f"{kind.value} key {existing[0].kid} is already prepared; activate it first"
                )
            return self._create(connection, kind, KeyState.PREPARED)

    def activate(self, kind: KeyKind) -> KeyRecord:
        now = self._clock()
        with self._engine.begin() as connection:
            announce(connection, TOPIC)
            prepared = self._in_state(connection, kind, KeyState.PREPARED)
            if not prepared:
                raise RotationError(f"no prepared {kind.value} key to activate: prepare one first")
            for old in self._in_state(connection, kind, KeyState.ACTIVE):
                self._set_state(connection, old.kid, KeyState.SUPERSEDED, superseded_at=now)
            self._set_state(connection, prepared[0].kid, KeyState.ACTIVE, activated_at=now)
        return self._get(prepared[0].kid)

    def retirable_at(self, record: KeyRecord) -> float | None:
        """When a superseded key may be retired: after every SVID it signed has expired."""
        if record.state is not KeyState.SUPERSEDED or record.superseded_at is None:
            return None
        longest = self._svid_max_ttl
        if record.kind is KeyKind.JWT:
            longest = max(longest, JWT_MAX_TTL_SECONDS)
        return min(record.superseded_at + longest, record.not_after)

    def _due(self, record: KeyRecord, kind: KeyKind | None, now: float) -> bool:
        at = self.retirable_at(record)
        return (kind is None or record.kind is kind) and at is not None and at <= now

    def retire(self, kind: KeyKind | None = None) -> list[KeyRecord]:
        """Retire every superseded key whose SVIDs have all expired; returns those retired."""
        now = self._clock()
        retired: list[KeyRecord] = []
        if not any(self._due(r, kind, now) for r in self.records()):
            return retired  # no change, no announcement: bundles keep their sequence
        with self._engine.begin() as connection:
            announce(connection, TOPIC)
            for record in self._in_state(connection, kind, KeyState.SUPERSEDED):
                if self._due(record, kind, now):
                    self._set_state(connection, record.kid, KeyState.RETIRED, retired_at=now)
                    retired.append(record)
        return retired

    def emergency(self, kind: KeyKind | None = None, kid: str | None = None) -> list[str]:
        """Retire a compromised key at once, without waiting for what it signed to expire: it
        leaves every bundle in this one transaction, so every SVID it signed stops verifying
        wherever bundles are followed, and a fresh key of its kind becomes active (a prepared
        key is not trusted to take over: it was sealed with the same KEK, in the same store).

        `kid` names the compromised key (any published state); without it the active key of
        `kind` (both kinds when None) is the one compromised. Returns what it did, for the
        log and the caller."""
        now = self._clock()
        done: list[str] = []
        with self._engine.begin() as connection:
            announce(connection, TOPIC)
            published = [
                record for state in PUBLISHED for record in self._in_state(connection, kind, state)
            ]
            if kid is not None:
                victims = [r for r in published if r.kid == kid]
                if not victims:
                    raise RotationError(f"no published key {kid!r}: see `trustplane identity keys`")
            else:
                victims = [r for r in published if r.state is KeyState.ACTIVE]
            for victim in victims:
                self._set_state(connection, victim.kid, KeyState.COMPROMISED, retired_at=now)
                done.append(f"retired compromised {victim.kind.value} key {victim.kid}")
                log.warning(
                    "identity key %s (%s) retired as compromised: every SVID it signed stops "
                    "verifying",
                    victim.kid,
                    victim.kind.value,
                )
            for replaced in sorted({v.kind for v in victims if v.state is KeyState.ACTIVE}):
                for prepared in self._in_state(connection, replaced, KeyState.PREPARED):
                    self._set_state(connection, prepared.kid, KeyState.RETIRED, retired_at=now)
                    done.append(f"retired prepared {replaced.value} key {prepared.kid}")
                fresh = self._create(connection, replaced, KeyState.ACTIVE)
                done.append(f"activated {replaced.value} key {fresh.kid}")
        return done

    def advance(self) -> list[str]:
        """The automatic schedule: prepare at half the active key's life, activate at five
        sixths (the new key has then been published for a third of a lifetime), retire what is
        due. Returns what it did, for the log.

        A key's life is counted from its creation, not its activation (as SPIRE counts it):
        a key is then active for half a lifetime and keeps a sixth of it (28 hours of a 7-day
        CA) after it is superseded, every generation alike. Counted from activation, the time
        a key waited as prepared came off the next generation's life, and the life left at
        supersession shrank towards an eighth."""
        now = self._clock()
        done: list[str] = []
        records = self.records()
        for kind in KeyKind:
            active = [r for r in records if r.kind is kind and r.state is KeyState.ACTIVE]
            prepared = [r for r in records if r.kind is kind and r.state is KeyState.PREPARED]
            if not active:
                continue
            start = active[0].created_at
            life = active[0].not_after - start
            age = now - start
            try:  # another process may have taken the step first: then there is nothing to do
                if not prepared and age >= life / 2:
                    done.append(f"prepared {kind.value} key {self.prepare(kind).kid}")
                elif prepared and age >= life * 5 / 6:
                    done.append(f"activated {kind.value} key {self.activate(kind).kid}")
            except RotationError:
                continue
        done.extend(f"retired {r.kind.value} key {r.kid}" for r in self.retire())
        return done

    def _create(self, connection: Any, kind: KeyKind, state: KeyState) -> KeyRecord:
        now = self._clock()
        private = ec.generate_private_key(ec.SECP256R1())
        certificate = None
        if kind is KeyKind.X509:
            certificate = _ca_certificate(private, self.trust_domain, now, self._ca_ttl)
        return self._insert(connection, kind, state, private, certificate, now, now + self._ca_ttl)

    def _insert(
        self,
        connection: Any,
        kind: KeyKind,
        state: KeyState,
        private: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate | None,
        now: float,
        not_after: float,
    ) -> KeyRecord:
        kid = secrets.token_urlsafe(24)
        if certificate is not None:
            public_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        else:
            public_pem = (
                private.public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                .decode()
            )
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        values = {
            "kid": kid,
            "kind": kind.value,
            "state": state.value,
            "algorithm": ALGORITHM,
            "public_pem": public_pem,
            "sealed_private": self._kek.seal(der, kid),
            "created_at": now,
            "not_after": not_after,
            "activated_at": now if state is KeyState.ACTIVE else None,
            "superseded_at": None,
            "retired_at": None,
        }
        connection.execute(insert(identity_keys).values(**values))
        return _record(_Row(values))

    @staticmethod
    def _in_state(connection: Any, kind: KeyKind | None, state: KeyState) -> list[KeyRecord]:
        query = select(identity_keys).where(identity_keys.c.state == state.value)
        if kind is not None:
            query = query.where(identity_keys.c.kind == kind.value)
        return [_record(r) for r in connection.execute(query.order_by(identity_keys.c.created_at))]

    @staticmethod
    def _set_state(connection: Any, kid: str, state: KeyState, **times: float) -> None:
        connection.execute(
            update(identity_keys)
            .where(identity_keys.c.kid == kid)
            .values(state=state.value, **times)
        )

    def _get(self, kid: str) -> KeyRecord:
        with self._engine.connect() as connection:
            row = connection.execute(select(identity_keys).where(identity_keys.c.kid == kid)).one()
        return _record(row)


def _load_import_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise RotationError(f"the private key is not an unencrypted PEM key: {exc}") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
        private.curve, ec.SECP256R1
    ):
        raise RotationError("only ECDSA P-256 keys are supported (ES256)")
    return private


def _check_import_ca(
    pem: bytes, private: ec.EllipticCurvePrivateKey, trust_domain: str, now: float
) -> x509.Certificate:
    """A CA certificate fit to sign this trust domain's SVIDs, for `private`."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise RotationError(f"the certificate is not PEM X.509: {exc}") from None
    if certificate.public_key() != private.public_key():
        raise RotationError("the private key does not belong to the certificate")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise RotationError("the certificate is not a CA (no basicConstraints)") from None
    if not constraints.value.ca:
        raise RotationError("the certificate is not a CA (basicConstraints cA=false)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            raise RotationError("the CA's key usage does not allow keyCertSign")
    except x509.ExtensionNotFound:
        pass
    if certificate.not_valid_after_utc.timestamp() <= now + 3600:
        raise RotationError("the CA certificate expires within the hour")
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    wrong = [u for u in uris if u != f"spiffe://{trust_domain}"]
    if wrong:
        raise RotationError(f"the CA names {wrong[0]}, not spiffe://{trust_domain}")
    return certificate


class _Row:
    """Attribute access over a dict, so a just-inserted row reads like a fetched one."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _record(row: Any) -> KeyRecord:
    return KeyRecord(
        kid=row.kid,
        kind=KeyKind(row.kind),
        state=KeyState(row.state),
        algorithm=row.algorithm,
        public_pem=row.public_pem,
        created_at=row.created_at,
        not_after=row.not_after,
        activated_at=row.activated_at,
        superseded_at=row.superseded_at,
        retired_at=row.retired_at,
    )


def _active(keys: Sequence[SigningKey]) -> SigningKey | None:
    active = [k for k in keys if k.record.state is KeyState.ACTIVE]
    return active[-1] if active else None


def published_ca_certificates(engine: Engine) -> list[str]:
    """The PEM certificates of the trust domain's published CAs (prepared, active,
    superseded): what a client that trusts this trust domain's X.509 certificates holds, e.g.
    a ValidatingWebhookConfiguration's `caBundle`. Public data: no KEK needed."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(identity_keys.c.public_pem)
            .where(
                identity_keys.c.kind == KeyKind.X509.value,
                identity_keys.c.state.in_([s.value for s in PUBLISHED]),
            )
            .order_by(identity_keys.c.created_at)
        ).all()
    return [str(row.public_pem) for row in rows]
