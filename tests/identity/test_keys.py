"""Trust-domain keys: sealed at rest, and rotation (prepare → activate → retire) that keeps every
live SVID verifiable."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
import spiffe
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from sqlalchemy import Engine, select

from tests.identity.conftest import TRUST_DOMAIN, Clock
from trustplane.config import IdentitySettings
from trustplane.identity.kek import Kek, KekError, load_kek, new_kek, write_kek_file
from trustplane.identity.keys import IdentityKeys, KeyKind, KeySet, KeyState, RotationError
from trustplane.identity.spiffe_id import SpiffeId
from trustplane.identity.svid import (
    JwtSvid,
    X509Svid,
    issue_jwt_svid,
    issue_x509_svid,
    validate_jwt_svid,
)
from trustplane.identity.trust_bundle import jwt_bundle_json, spiffe_bundle, x509_bundle_der
from trustplane.store.tables import identity_keys as keys_table

WORKLOAD = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/checkout")


def test_private_keys_are_sealed_and_need_the_kek(engine: Engine, kek: Kek) -> None:
    keys = IdentityKeys(engine, kek, TRUST_DOMAIN)
    keys.initialise()
    with engine.connect() as connection:
        rows = connection.execute(select(keys_table)).all()
    assert {r.kind for r in rows} == {"x509", "jwt"}
    loaded = keys.load()
    for row in rows:
        assert b"PRIVATE KEY" not in row.sealed_private
        assert row.sealed_private not in repr(loaded).encode()
    other = Kek(os.urandom(32))
    with pytest.raises(KekError, match="does not open key"):
        IdentityKeys(engine, other, TRUST_DOMAIN).load()


def test_initialise_is_idempotent(identity_keys: IdentityKeys) -> None:
    before = {r.kid for r in identity_keys.records()}
    assert identity_keys.initialise() == []
    assert {r.kid for r in identity_keys.records()} == before


def test_kek_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    write_kek_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    load_kek(IdentitySettings(kek_file=path))
    with pytest.raises(KekError, match="already exists"):
        write_kek_file(path)
    path.chmod(0o640)
    with pytest.raises(KekError, match="mode 0640"):
        load_kek(IdentitySettings(kek_file=path))
    with pytest.raises(KekError, match="no key-encryption key"):
        load_kek(IdentitySettings())
    with pytest.raises(KekError, match="must be 32"):
        load_kek(IdentitySettings(kek="c2hvcnQ"))
    assert load_kek(IdentitySettings(kek=new_kek())) is not None


def _x509_verifies(svid: X509Svid, keys: KeySet, at: float) -> bool:
    """Chain to any CA in the bundle the Workload API hands out, and within validity."""
    bundle = spiffe.X509Bundle.parse_raw(spiffe.TrustDomain(TRUST_DOMAIN), x509_bundle_der(keys))
    spiffe.X509Svid.parse_raw(svid.chain_der(), svid.key_der())  # py-spiffe's leaf rules
    leaf = svid.certificate
    if not leaf.not_valid_before_utc.timestamp() <= at <= leaf.not_valid_after_utc.timestamp():
        return False
    for ca in bundle.x509_authorities:
        try:
            leaf.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def _jwt_verifies(svid: JwtSvid, keys: KeySet, at: float) -> bool:
    jwks = jwt.PyJWKSet.from_json(jwt_bundle_json(keys).decode())
    kid = jwt.get_unverified_header(svid.token)["kid"]
    matching = [k for k in jwks.keys if k.key_id == kid]
    if not matching:
        return False
    claims = jwt.decode(
        svid.token,
        matching[0].key,
        algorithms=["ES256"],
        audience="db",
        options={"verify_exp": False, "verify_iat": False},
    )
    return bool(claims["exp"] >= at)


def test_rotation_keeps_every_live_svid_verifiable(engine: Engine, kek: Kek) -> None:
    clock = Clock()
    keys = IdentityKeys(
        engine, kek, TRUST_DOMAIN, ca_ttl_seconds=7 * 86400, svid_max_ttl_seconds=3600, clock=clock
    )
    keys.initialise()
    live: list[tuple[X509Svid, JwtSvid]] = []

    def issue() -> None:
        current = keys.load()
        live.append(
            (
                issue_x509_svid(current, WORKLOAD, 3600, now=clock.now),
                issue_jwt_svid(current, WORKLOAD, ["db"], 300, now=clock.now),
            )
        )

    def all_live_verify() -> None:
        current = keys.load()
        for x, j in live:
            if x.expires_at > clock.now:
                assert _x509_verifies(x, current, clock.now), "a live X.509-SVID stopped verifying"
            if j.expires_at > clock.now:
                assert _jwt_verifies(j, current, clock.now), "a live JWT-SVID stopped verifying"

    issue()
    first = keys.load()
    with pytest.raises(RotationError, match="no prepared"):
        keys.activate(KeyKind.X509)
    # prepare: both keys published, the old one still signs
    clock.now += 60
    for kind in KeyKind:
        keys.prepare(kind)
    prepared = keys.load()
    assert len(prepared.x509_authorities) == 2 and len(prepared.jwt_authorities) == 2
    assert prepared.x509_signer is not None and first.x509_signer is not None
    assert prepared.x509_signer.kid == first.x509_signer.kid
    assert prepared.sequence > first.sequence
    issue()
    all_live_verify()
    # activate: the new key signs, the old one stays published
    clock.now += 60
    for kind in KeyKind:
        keys.activate(kind)
    active = keys.load()
    assert active.x509_signer is not None and first.x509_signer is not None
    assert active.x509_signer.kid != first.x509_signer.kid
    issue()
    all_live_verify()
    assert keys.retire() == []  # too early: the old key's SVIDs may still be alive
    all_live_verify()
    # retire: only after the longest SVID lifetime since the old key stopped signing
    clock.now += 3600 + 1
    retired = keys.retire()
    assert {r.kid for r in retired} == {first.x509_signer.kid, first.jwt_signer.kid}  # type: ignore[union-attr]
    after = keys.load()
    assert len(after.x509_authorities) == 1 and len(after.jwt_authorities) == 1
    assert all(x.expires_at <= clock.now for x, _ in live[:2])  # what the old key signed is dead
    all_live_verify()
    states = {r.kid: r.state for r in keys.records(include_retired=True)}
    assert list(states.values()).count(KeyState.RETIRED) == 2


def test_automatic_schedule(engine: Engine, kek: Kek) -> None:
    clock = Clock()
    keys = IdentityKeys(
        engine, kek, TRUST_DOMAIN, ca_ttl_seconds=6000, svid_max_ttl_seconds=600, clock=clock
    )
    keys.initialise()
    sequence = keys.load().sequence
    assert keys.advance() == []
    assert keys.initialise() == []
    assert keys.load().sequence == sequence  # nothing changed: the bundle's sequence neither
    clock.now += 3000
    assert [d.split()[0] for d in keys.advance()] == ["prepared", "prepared"]
    clock.now += 2000
    assert [d.split()[0] for d in keys.advance()] == ["activated", "activated"]
    clock.now += 601  # the X.509 CA retires after the longest SVID; the JWT key after 15 min
    assert [d.split()[:2] for d in keys.advance()] == [["retired", "x509"]]
    clock.now += 300
    assert [d.split()[:2] for d in keys.advance()] == [["retired", "jwt"]]


def test_spiffe_bundle_document(identity_keys: IdentityKeys) -> None:
    keys = identity_keys.load()
    doc = spiffe_bundle(keys)
    uses = sorted(k["use"] for k in doc["keys"])
    assert uses == ["jwt-svid", "x509-svid"]
    assert doc["spiffe_sequence"] == keys.sequence and doc["spiffe_refresh_hint"] > 0
    x509_key = next(k for k in doc["keys"] if k["use"] == "x509-svid")
    assert len(x509_key["x5c"]) == 1 and x509_key["kty"] == "EC" and x509_key["crv"] == "P-256"
    jwt_key = next(k for k in doc["keys"] if k["use"] == "jwt-svid")
    assert jwt_key["kid"] == keys.jwt_signer.kid  # type: ignore[union-attr]


def test_jwt_svid_validation(identity_keys: IdentityKeys) -> None:
    keys = identity_keys.load()
    svid = issue_jwt_svid(keys, WORKLOAD, ["db", "cache"], 300)
    assert validate_jwt_svid(keys, svid.token, "cache").spiffe_id == WORKLOAD
    from trustplane.identity.svid import SvidError

    with pytest.raises(SvidError, match="token_wrong_audience"):
        validate_jwt_svid(keys, svid.token, "other")
    unsigned = jwt.encode({"sub": str(WORKLOAD), "aud": "db", "exp": 2**40}, None, algorithm="none")
    with pytest.raises(SvidError, match="token_alg_not_allowed"):
        validate_jwt_svid(keys, unsigned, "db")
    with pytest.raises(SvidError, match="wrong_trust_domain"):
        issue_jwt_svid(keys, SpiffeId.parse("spiffe://other.test/x"), ["db"], 300)


def _ca(
    trust_domain: str = TRUST_DOMAIN, *, ca: bool = True, curve: Any = None
) -> tuple[bytes, bytes]:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(curve or ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corporate CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def test_an_imported_ca_signs_after_activation(identity_keys: IdentityKeys) -> None:
    key_pem, cert_pem = _ca()
    record = identity_keys.import_key(KeyKind.X509, key_pem, cert_pem)
    assert record.state is KeyState.PREPARED  # the trust domain already has an active CA
    identity_keys.activate(KeyKind.X509)
    keys = identity_keys.load()
    svid = issue_x509_svid(keys, WORKLOAD, 3600)
    assert svid.certificate.issuer == x509.load_pem_x509_certificate(cert_pem).subject
    assert _x509_verifies(svid, keys, svid.certificate.not_valid_before_utc.timestamp() + 60)


def test_a_first_imported_key_is_active(engine: Engine, kek: Kek) -> None:
    keys = IdentityKeys(engine, kek, TRUST_DOMAIN)
    key_pem, _ = _ca()
    assert keys.import_key(KeyKind.JWT, key_pem).state is KeyState.ACTIVE
    created = keys.initialise()
    assert [r.kind for r in created] == [KeyKind.X509]  # only the missing kind is created


def test_unfit_imports_are_refused_with_the_reason(identity_keys: IdentityKeys) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key_pem, cert_pem = _ca()
    other_key, _ = _ca()
    cases = [
        (other_key, cert_pem, "does not belong"),
        (*_ca(ca=False), "not a CA"),
        (*_ca("other.test"), "not spiffe://example.test"),
        (*_ca(curve=ec.SECP384R1()), "only ECDSA P-256"),
        (b"not a key", cert_pem, "not an unencrypted PEM key"),
        (key_pem, b"not a cert", "not PEM X.509"),
    ]
    for private, certificate, reason in cases:
        with pytest.raises(RotationError, match=reason):
            identity_keys.import_key(KeyKind.X509, private, certificate)
    with pytest.raises(RotationError, match="needs its certificate"):
        identity_keys.import_key(KeyKind.X509, key_pem)
