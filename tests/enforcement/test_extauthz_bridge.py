"""The serving side of the compiled front's socket: however the bytes of a stream of calls are
split into reads, each call gets exactly one answer, made from its own request."""

from __future__ import annotations

import asyncio
import itertools
import struct
from typing import Any

from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from trustplane.enforcement.native import _Bridge


class _Service:
    """Answers with the held request's path in the denied body, so answers can be matched."""

    async def answer(self, request: Any, peer: str, credential: str | None = None) -> Any:
        path = request.attributes.request.http.path
        return external_auth_pb2.CheckResponse(
            denied_response=external_auth_pb2.DeniedHttpResponse(body=f"{peer} {path}")
        )


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def _call(call_id: int, peer: str, path: str) -> bytes:
    ctx = attribute_context_pb2.AttributeContext
    message = external_auth_pb2.CheckRequest(
        attributes=ctx(request=ctx.Request(http=ctx.HttpRequest(path=path)))
    ).SerializeToString()
    peer_bytes = peer.encode()
    head = struct.pack("<IQH", 8 + 2 + len(peer_bytes) + 2 + len(message), call_id, len(peer_bytes))
    return head + peer_bytes + struct.pack("<H", 0) + message


def _answers(data: bytes) -> dict[int, tuple[int, bytes]]:
    found: dict[int, tuple[int, bytes]] = {}
    at = 0
    while at < len(data):
        length, call_id, kind = struct.unpack_from("<IQB", data, at)
        assert call_id not in found, f"call {call_id} answered twice"
        found[call_id] = (kind, bytes(data[at + 13 : at + 4 + length]))
        at += 4 + length
    return found


def _feed(chunks: list[bytes]) -> tuple[_Transport, dict[int, tuple[int, bytes]]]:
    async def run() -> _Transport:
        bridge = _Bridge(_Service())  # type: ignore[arg-type]
        transport = _Transport()
        bridge.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            bridge.data_received(chunk)
        await bridge.drain()
        return transport

    transport = asyncio.run(run())
    return transport, _answers(bytes(transport.written))


@settings(max_examples=60, deadline=None)
@given(
    paths=st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
)
def test_every_call_is_answered_once_whatever_the_reads(paths: list[str], cuts: list[int]) -> None:
    stream = b"".join(_call(i + 1, f"ipv4:10.0.0.{i}:80", p) for i, p in enumerate(paths))
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    transport, answers = _feed(chunks)
    assert not transport.closed
    assert sorted(answers) == list(range(1, len(paths) + 1))
    for i, path in enumerate(paths):
        kind, message = answers[i + 1]
        assert kind == 0
        body = external_auth_pb2.CheckResponse.FromString(message).denied_response.body
        assert body == f"ipv4:10.0.0.{i}:80 {path}"


def test_a_message_that_is_not_a_check_request_is_answered_with_an_error() -> None:
    garbage = b"\xff\xff\xff\xff"
    frame = struct.pack("<IQH", 8 + 2 + 2 + len(garbage), 7, 0) + b"\0\0" + garbage
    transport, answers = _feed([frame])
    kind, message = answers[7]
    assert kind == 1
    assert message.startswith(b"malformed CheckRequest")
    assert not transport.closed


def test_a_frame_length_out_of_bounds_closes_the_connection() -> None:
    transport, answers = _feed([struct.pack("<I", 1 << 30) + b"\0" * 16])
    assert transport.closed
    assert answers == {}


def test_a_peer_longer_than_its_frame_closes_the_connection() -> None:
    frame = struct.pack("<IQH", 8 + 2 + 2 + 3, 9, 500) + b"abc\0\0"  # says 500 peer bytes
    transport, answers = _feed([frame + _call(10, "ipv4:10.0.0.1:80", "/next")])
    assert transport.closed
    assert answers == {}  # and nothing was decided on a request read from the next frame
