"""DSSE envelopes (the in-toto signature envelope) signed with the trust domain's ECDSA P-256
keys.

DSSE signs the pre-authentication encoding (PAE) of the payload type and the payload bytes, so
a signature over one payload type cannot be replayed as another, and a verifier checks the
bytes it was given instead of re-serialising JSON. Signatures are ECDSA over SHA-256 in DER, as
sigstore and in-toto tooling write them; `keyid` names the key in the trust domain's JWT bundle.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec


class EnvelopeError(Exception):
    """An envelope that is malformed or whose signature does not verify; the message says
    which."""


@dataclass(frozen=True)
class VerifiedEnvelope:
    payload_type: str
    payload: bytes
    keyid: str


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSEv1 pre-authentication encoding."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign_envelope(
    payload_type: str, payload: bytes, keyid: str, key: ec.EllipticCurvePrivateKey
) -> dict[str, Any]:
    signature = key.sign(pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": keyid, "sig": base64.b64encode(signature).decode()}],
    }


def verify_envelope(
    envelope: Mapping[str, Any] | str, keys: Mapping[str, ec.EllipticCurvePublicKey]
) -> VerifiedEnvelope:
    """The payload of an envelope one of whose signatures verifies with the key its `keyid`
    names in `keys`. Raises EnvelopeError otherwise."""
    if isinstance(envelope, str):
        try:
            envelope = json.loads(envelope)
        except ValueError as exc:
            raise EnvelopeError(f"the envelope is not JSON: {exc}") from None
    if not isinstance(envelope, Mapping):
        raise EnvelopeError("the envelope is not a JSON object")
    payload_type = envelope.get("payloadType")
    encoded = envelope.get("payload")
    signatures = envelope.get("signatures")
    if not isinstance(payload_type, str) or not isinstance(encoded, str):
        raise EnvelopeError("the envelope needs payloadType and payload strings")
    if not isinstance(signatures, list) or not signatures:
        raise EnvelopeError("the envelope has no signatures")
    try:
        payload = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise EnvelopeError("the payload is not base64") from None
    message = pae(payload_type, payload)
    unknown: list[str] = []
    for item in signatures:
        if not isinstance(item, Mapping):
            continue
        keyid, sig = item.get("keyid"), item.get("sig")
        key = keys.get(keyid) if isinstance(keyid, str) else None
        if key is None or not isinstance(sig, str):
            unknown.append(str(keyid))
            continue
        try:
            key.verify(base64.b64decode(sig, validate=True), message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise EnvelopeError(f"the signature by key {keyid} does not verify") from None
        assert isinstance(keyid, str)
        return VerifiedEnvelope(payload_type, payload, keyid)
    raise EnvelopeError(f"no signature by a key of this trust domain (keyids: {unknown})")
