"""The ledger's disk spool: entries round-trip exactly, the head survives a restart, a torn last
frame is cut off, and a spool no live process holds is adopted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from trustplane.model import AccessRequest, Decision, Effect, EntityRef, new_decision_id
from trustplane.telemetry.ledger import decision_entry
from trustplane.telemetry.masking import Masker
from trustplane.telemetry.spool import Spool, SpoolError, decode_entry, encode_entry


def entry(n: int, principal: str = "alice"):  # type: ignore[no-untyped-def]
    request = AccessRequest(
        EntityRef("User", principal), EntityRef("Action", "read"), EntityRef("Doc", str(n)), {}
    )
    d = Decision(
        new_decision_id(), Effect.ALLOW, (), Effect.ALLOW, (), (), (), None, 1, time.time()
    )
    return decision_entry(request, d, Masker([]))


def test_entries_round_trip_exactly() -> None:
    for e in (entry(1), entry(2, "x\x00y"), entry(3, "lone \ud800 surrogate")):
        assert decode_entry(encode_entry(e)) == e


def test_head_restart_torn_frame_and_truncation(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.open()
    written = [entry(n) for n in range(10)]
    spool.append(written)
    spool.advance(4)
    spool.close()
    assert spool.path is not None
    with spool.path.open("ab") as handle:  # a frame cut short by a crash
        handle.write(b"\x00\x00\x01\x00partial")
    again = Spool(tmp_path, 1 << 20)
    again.open()
    assert again.depth == 6 and again.peek(100) == written[4:]
    again.advance(6)
    assert again.depth == 0 and again.size_bytes == 0
    assert again.path is not None and again.path.stat().st_size == 0
    with pytest.raises(SpoolError, match="full"):
        _fill(tmp_path / "small")
    again.close()


def _fill(directory: Path) -> None:
    spool = Spool(directory, 100)
    spool.open()
    spool.append([entry(n) for n in range(5)])


def test_a_spool_no_process_holds_is_adopted(tmp_path: Path) -> None:
    first, second = Spool(tmp_path, 1 << 20), Spool(tmp_path, 1 << 20)
    first.open()
    second.open()  # another live process: the next slot
    assert first.path != second.path
    left = [entry(n) for n in range(3)]
    second.append(left)
    second.close()  # that process is gone
    first.close()
    third = Spool(tmp_path, 1 << 20)
    third.open()
    assert third.peek(10) == left, "the orphan's records, adopted"
    third.close()
