"""The AuthZEN evaluation body read without pydantic (`plain_evaluation`) accepts only what the
validated model accepts, and builds the same request from it; everything else falls back."""

from __future__ import annotations

import pytest

from trustplane.problems import Problem, parse_model
from trustplane.server.authzen import (
    EvaluationRequest,
    check_recordable,
    plain_evaluation,
    to_access_request,
)

ACCEPTED = [
    b'{"subject":{"type":"User","id":"alice"},"action":{"name":"read"},'
    b'"resource":{"type":"Doc","id":"d1"}}',
    b'{"subject":{"type":"User","id":"a","properties":{"dept":"eng","level":3}},'
    b'"action":{"name":"read","properties":{"x":1}},"resource":{"type":"Doc","id":"d",'
    b'"properties":null},"context":{"mfa":true,"score":0.5,"tags":["a",{"b":null}]}}',
    b'{"subject":{"type":"User","id":"a"},"action":{"name":"r"},'
    b'"resource":{"type":"D","id":"1"},"context":null}',
    # duplicate members: the last one counts, as in the validated model
    b'{"subject":{"type":"User","id":"x"},"subject":{"type":"User","id":"y"},'
    b'"action":{"name":"r"},"resource":{"type":"D","id":"1"}}',
]

FALLS_BACK = [
    b"",
    b"   ",
    b"null",
    b"[]",
    b'{"subject":{"type":"User","id":"a"},"action":{"name":"r"}}',  # no resource
    b'{"subject":{"type":"User","id":"a"},"action":{"name":"r"},'
    b'"resource":{"type":"D","id":"1"},"extra":1}',
    b'{"subject":{"type":"User","id":""},"action":{"name":"r"},"resource":{"type":"D","id":"1"}}',
    b'{"subject":{"type":"User","id":5},"action":{"name":"r"},"resource":{"type":"D","id":"1"}}',
    b'{"subject":{"type":"User","id":"a","role":"x"},"action":{"name":"r"},'
    b'"resource":{"type":"D","id":"1"}}',
    b'{"subject":{"type":"User","id":"a","properties":[1]},"action":{"name":"r"},'
    b'"resource":{"type":"D","id":"1"}}',
    b'{"subject":{"type":"User","id":"a"},"action":{"name":"r"},'
    b'"resource":{"type":"D","id":"1"},"context":[1]}',
    # beyond 64 bits: orjson would read a float, the model keeps the integer (and refuses it)
    b'{"subject":{"type":"User","id":"a"},"action":{"name":"r"},'
    b'"resource":{"type":"D","id":"1"},"context":{"n":123456789012345678901234567890}}',
    b'{"subject":{"type":"User","id":"a"},"action":{"name":"r"},'
    b'"resource":{"type":"D","id":"1"},"context":{"n":9223372036854775808}}',
    b'{"subject":{"type":"User","id":"a"},"action":{"name":"r"},'
    b'"resource":{"type":"D","id":"1"},"context":{"s":"\\ud800"}}',
    b'{"subject":{"type":"User","id":"a"},"action":{"name":"r"},'
    b'"resource":{"type":"D","id":"1"},"context":{"a":' + b"[" * 250 + b"]" * 250 + b"}}",
    b'{"subject":{"type":"User","id":"' + b"u" * 1025 + b'"},"action":{"name":"r"},'
    b'"resource":{"type":"D","id":"1"}}',
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_plain_reading_builds_the_validated_request(body: bytes) -> None:
    parsed = parse_model(EvaluationRequest, body)
    check_recordable("", parsed.subject, parsed.action, parsed.resource, parsed.context)
    expected = to_access_request(parsed.subject, parsed.action, parsed.resource, parsed.context)
    assert plain_evaluation(body) == expected


@pytest.mark.parametrize("body", FALLS_BACK)
def test_anything_unusual_is_left_to_validation(body: bytes) -> None:
    assert plain_evaluation(body) is None


def test_bodies_validation_refuses_are_never_read_plainly() -> None:
    refused = 0
    for body in FALLS_BACK:
        try:
            parsed = parse_model(EvaluationRequest, body)
            check_recordable("", parsed.subject, parsed.action, parsed.resource, parsed.context)
        except Problem:
            refused += 1
            assert plain_evaluation(body) is None
    assert refused >= 12
