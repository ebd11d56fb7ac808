"""Revocation beyond principals and JWT ids: certificates by serial number (any spelling of
the same serial is the same revocation), and the kinds governance keeps are refused here."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from trustplane.recovery.revocation import (
    RevocationError,
    RevocationKind,
    RevocationList,
    RevocationStore,
    normalise_serial,
)


def test_a_certificate_is_revoked_by_serial_whatever_its_spelling(engine: Engine) -> None:
    store = RevocationStore(engine)
    listed = RevocationList(store)
    first, created = store.revoke(RevocationKind.CERTIFICATE, "01:AB:cd", "key leaked", "ops")
    again, created_again = store.revoke(RevocationKind.CERTIFICATE, "0x1abcd", "again", "ops")
    assert created and not created_again and again.id == first.id
    assert first.target == "1abcd"
    listed.refresh()
    assert listed.certificate(0x1ABCD) is not None
    assert listed.certificate("1ABCD") is not None
    assert listed.certificate(0x1ABCE) is None
    assert listed.certificate("not hex") is None
    assert listed.credential("1abcd") is None, "a serial is not a JWT id"


@pytest.mark.parametrize("bad", ["xyz", "12-34", "g1"])
def test_a_serial_must_be_hexadecimal(engine: Engine, bad: str) -> None:
    with pytest.raises(RevocationError, match="hexadecimal"):
        RevocationStore(engine).revoke(RevocationKind.CERTIFICATE, bad, "r", "ops")


@pytest.mark.parametrize(
    "kind", [RevocationKind.GRANT, RevocationKind.EXCEPTION, RevocationKind.SESSION]
)
def test_governed_kinds_are_not_stored_as_revocations(engine: Engine, kind: RevocationKind) -> None:
    with pytest.raises(RevocationError, match="kept by governance"):
        RevocationStore(engine).revoke(kind, "some-id", "r", "ops")
    assert RevocationStore(engine).all() == ([], 0)


def test_serials_normalise() -> None:
    assert normalise_serial("00:00:0A") == "a" == normalise_serial("0xA")
    assert normalise_serial("0") == "0"
