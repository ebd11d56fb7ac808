"""Image attestations: what CI stated about an image digest, and the in-memory index admission
asks.

CI posts an attestation with its trustplane-issued identity (a JWT-SVID); the server wraps the
statement in an in-toto Statement v1 (subject: the repository and its sha256 digest;
`predicateType` and `predicate` as CI gave them), adds the signer's SPIFFE ID, the time and
which credential was presented (its `jti` and a SHA-256 of the token, never the token itself: a
stored bearer token could be replayed), and signs that payload as a DSSE envelope with the
trust domain's JWT signing key. The bearer token proves who asked; the countersignature is what
anyone holding the trust domain's keys can verify later, long after the token expired.

The store keeps the envelope and copies of its fields for queries. `AttestationIndex` is what
admission reads: every attestation whose envelope verifies, by digest, rebuilt when the change
feed's `attestations` topic moves. Admission trusts the verified payload only, so a row edited
or inserted in the database without the trust domain's keys vouches for nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, delete, insert, select

from trustplane.identity.dsse import EnvelopeError, VerifiedEnvelope, verify_envelope
from trustplane.store.feed import announce
from trustplane.store.tables import attestations

log = logging.getLogger("trustplane.attestations")

TOPIC = "attestations"
PAYLOAD_TYPE = "application/vnd.trustplane.attestation.v1+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
_PINNED = re.compile(r"^(?P<name>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TYPE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")

KeySource = Callable[[], Mapping[str, ec.EllipticCurvePublicKey]]


class AttestationError(ValueError):
    """An attestation that cannot be made or read as given; the message names what."""


@dataclass(frozen=True)
class ImageRef:
    """An image pinned by digest: `registry/repo[:tag]@sha256:<64 hex>`."""

    image: str
    repository: str  # without tag or digest: the in-toto subject's name
    digest: str  # sha256:<64 hex>

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        found = _PINNED.match(text.strip())
        if found is None:
            raise AttestationError(
                f"image {text!r} is not pinned by digest (name@sha256:<64 lowercase hex>)"
            )
        name = found.group("name")
        slash, colon = name.rfind("/"), name.rfind(":")
        repository = name[:colon] if colon > slash else name
        return cls(text.strip(), repository, found.group("digest"))


def is_digest(value: str) -> bool:
    return _DIGEST.match(value) is not None


def check_predicate_type(value: str) -> str:
    """in-toto's predicateType is a type URI, e.g. https://slsa.dev/provenance/v1."""
    if len(value) > 512 or not _TYPE_URI.match(value):
        raise AttestationError(
            f"predicate_type {value!r} must be a URI such as https://slsa.dev/provenance/v1"
        )
    return value


def token_fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def build_payload(
    ref: ImageRef,
    predicate_type: str,
    predicate: Mapping[str, Any],
    signer: str,
    attested_at: float,
    credential: Mapping[str, Any],
) -> bytes:
    """The bytes the server signs: the in-toto statement, who stated it, when, with which
    credential. Canonical JSON (sorted keys, no spaces) so equal content gives equal bytes."""
    document = {
        "statement": {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": ref.repository, "digest": {"sha256": ref.digest[7:]}}],
            "predicateType": predicate_type,
            "predicate": dict(predicate),
        },
        "image": ref.image,
        "signer": signer,
        "attested_at": attested_at,
        "credential": dict(credential),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Attestation:
    """An attestation as its verified envelope says (never as the table's copies say)."""

    id: str
    image: str
    repository: str
    digest: str
    predicate_type: str
    predicate: dict[str, Any]
    signer: str
    attested_at: float
    credential: dict[str, Any]
    keyid: str
    decision_id: str
    envelope: dict[str, Any]

    def as_dict(self, *, with_envelope: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "image": self.image,
            "repository": self.repository,
            "digest": self.digest,
            "predicate_type": self.predicate_type,
            "predicate": self.predicate,
            "signer": self.signer,
            "attested_at": self.attested_at,
            "credential": self.credential,
            "signed_by_key": self.keyid,
            "decision_id": self.decision_id,
        }
        if with_envelope:
            out["envelope"] = self.envelope
        return out


def read_envelope(
    attestation_id: str,
    decision_id: str,
    envelope: Mapping[str, Any],
    keys: Mapping[str, ec.EllipticCurvePublicKey],
) -> Attestation:
    """Verify an envelope and read its payload; raises AttestationError naming the problem."""
    try:
        verified: VerifiedEnvelope = verify_envelope(envelope, keys)
    except EnvelopeError as exc:
        raise AttestationError(str(exc)) from None
    if verified.payload_type != PAYLOAD_TYPE:
        raise AttestationError(f"payload type {verified.payload_type!r} is not {PAYLOAD_TYPE}")
    try:
        document = json.loads(verified.payload)
        statement = document["statement"]
        subject = statement["subject"][0]
        ref = ImageRef.parse(str(document["image"]))
        if statement["_type"] != STATEMENT_TYPE or subject["digest"]["sha256"] != ref.digest[7:]:
            raise AttestationError("the statement's subject does not match its image")
        return Attestation(
            id=attestation_id,
            image=ref.image,
            repository=str(subject["name"]),
            digest=ref.digest,
            predicate_type=str(statement["predicateType"]),
            predicate=dict(statement["predicate"]),
            signer=str(document["signer"]),
            attested_at=float(document["attested_at"]),
            credential=dict(document["credential"]),
            keyid=verified.keyid,
            decision_id=decision_id,
            envelope=dict(envelope),
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        if isinstance(exc, AttestationError):
            raise
        raise AttestationError(f"the signed payload is not an attestation: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class Attested:
    """What admission needs of a verified attestation (the predicate and envelope, which can be
    large, stay in the store)."""

    id: str
    digest: str
    signer: str
    predicate_type: str


@dataclass(frozen=True)
class AttestationQuery:
    digest: str | None = None
    signer: str | None = None
    predicate_type: str | None = None
    limit: int = 100


class AttestationStore:
    """Attestations in the store; each one added is announced on the change feed."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(
        self,
        ref: ImageRef,
        predicate_type: str,
        signer: str,
        attested_at: float,
        decision_id: str,
        envelope: Mapping[str, Any],
    ) -> str:
        attestation_id = str(uuid.uuid4())
        with self._engine.begin() as connection:
            connection.execute(
                insert(attestations).values(
                    id=attestation_id,
                    digest=ref.digest,
                    repository=ref.repository,
                    image=ref.image,
                    predicate_type=predicate_type,
                    signer=signer,
                    created_at=attested_at,
                    decision_id=decision_id,
                    envelope=json.dumps(envelope, sort_keys=True),
                )
            )
            announce(connection, TOPIC)
        return attestation_id

    def withdraw(self, attestation_id: str) -> Any | None:
        """Remove an attestation (a build found compromised); its row, or None if unknown.
        Announced, so every index drops it."""
        with self._engine.begin() as connection:
            row = connection.execute(
                select(attestations).where(attestations.c.id == attestation_id)
            ).first()
            if row is None:
                return None
            connection.execute(delete(attestations).where(attestations.c.id == attestation_id))
            announce(connection, TOPIC)
        return row

    def ids(self) -> set[str]:
        with self._engine.connect() as connection:
            return {str(r[0]) for r in connection.execute(select(attestations.c.id))}

    def rows(
        self, ids: Iterable[str] | None = None, query: AttestationQuery | None = None
    ) -> list[Any]:
        """Rows by id, or matching `query` (newest first)."""
        statement = select(attestations)
        if ids is not None:
            statement = statement.where(attestations.c.id.in_(list(ids)))
        if query is not None:
            if query.digest is not None:
                statement = statement.where(attestations.c.digest == query.digest)
            if query.signer is not None:
                statement = statement.where(attestations.c.signer == query.signer)
            if query.predicate_type is not None:
                statement = statement.where(attestations.c.predicate_type == query.predicate_type)
            statement = statement.order_by(attestations.c.created_at.desc()).limit(query.limit)
        with self._engine.connect() as connection:
            return list(connection.execute(statement).all())


def row_envelope(row: Any) -> dict[str, Any]:
    envelope = json.loads(row.envelope)
    if not isinstance(envelope, dict):
        raise AttestationError(f"attestation {row.id}: the stored envelope is not an object")
    return envelope


class AttestationIndex:
    """Verified attestations by digest, in memory, replaced whole on each refresh.

    A refresh reads the ids in the store and verifies only those it has not seen; an envelope
    that does not verify is logged once and left out (and tried again on the next refresh, in
    case this process had not yet loaded the key that signed it)."""

    def __init__(self, store: AttestationStore, keys: KeySource) -> None:
        self._store = store
        self._keys = keys
        self._verified: dict[str, Attested] = {}
        self._by_digest: dict[str, tuple[Attested, ...]] = {}
        self._rejected: set[str] = set()
        self._lock = threading.Lock()

    def refresh(self, _topic: str = TOPIC) -> None:
        with self._lock:
            ids = self._store.ids()
            verified = {k: v for k, v in self._verified.items() if k in ids}
            new = ids - verified.keys()
            if new:
                keys = self._keys()
                for row in self._store.rows(new):
                    try:
                        found = read_envelope(row.id, row.decision_id, row_envelope(row), keys)
                    except (AttestationError, ValueError) as exc:
                        if row.id not in self._rejected:
                            log.warning("attestation %s ignored: %s", row.id, exc)
                            self._rejected.add(row.id)
                        continue
                    verified[row.id] = Attested(
                        found.id, found.digest, found.signer, found.predicate_type
                    )
            by_digest: dict[str, list[Attested]] = {}
            for item in verified.values():
                by_digest.setdefault(item.digest, []).append(item)
            self._verified = verified
            self._by_digest = {k: tuple(v) for k, v in by_digest.items()}

    def lookup(self, digest: str) -> tuple[Attested, ...]:
        return self._by_digest.get(digest, ())

    def __len__(self) -> int:
        return len(self._verified)


def signer_allowed(spiffe_id: str, patterns: Sequence[str]) -> bool:
    """A pattern is a SPIFFE ID, or a prefix ending in `*` (spiffe://td/ci/* matches every CI
    identity under /ci/)."""
    for pattern in patterns:
        if pattern.endswith("*") and spiffe_id.startswith(pattern[:-1]):
            return True
        if spiffe_id == pattern:
            return True
    return False


def unattested_function(index: AttestationIndex | None) -> Callable[[Any, Any], str]:
    """The CEL function `unattested(image, params)`: why `image` lacks an attestation from one
    of `params.attestation_signers` (of a type in `params.attestation_predicate_types`, when
    given), or "" when it has one. A reason rather than a boolean, so a refusal says what to
    fix."""

    def unattested(image: Any, params: Any) -> str:
        if not isinstance(image, str) or not image:
            return "no image"
        try:
            ref = ImageRef.parse(image)
        except AttestationError:
            return f"{image} is not pinned by digest, so no attestation can name it"
        params = params if isinstance(params, dict) else {}
        allowed = _strings(params.get("attestation_signers"))
        types = _strings(params.get("attestation_predicate_types"))
        if not allowed:
            return "no attestation_signers are configured, so no signer is trusted"
        if index is None:
            return "this server keeps no attestations (the identity plane is not configured)"
        found = index.lookup(ref.digest)
        short = ref.digest[:19]
        if not found:
            return f"no attestation for {short}…"
        by_signer = [a for a in found if signer_allowed(a.signer, allowed)]
        if not by_signer:
            others = sorted({a.signer for a in found})
            return f"{short}… is attested only by {', '.join(others)} (not attestation_signers)"
        if types and not any(a.predicate_type in types for a in by_signer):
            return f"{short}… has no attestation of type {', '.join(types)} from an allowed signer"
        return ""

    return unattested


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
