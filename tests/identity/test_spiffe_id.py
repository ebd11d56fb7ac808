"""SPIFFE ID parsing: what the SPIFFE-ID standard allows round-trips; the rest is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustplane.identity.spiffe_id import SpiffeId, SpiffeIdError

domain = st.from_regex(r"[a-z0-9][a-z0-9.\-_]{0,30}", fullmatch=True)
segment = st.from_regex(r"[A-Za-z0-9.\-_]{1,12}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)


@given(domain, st.lists(segment, max_size=5))
def test_valid_ids_round_trip(trust_domain: str, segments: list[str]) -> None:
    text = "spiffe://" + trust_domain + "".join("/" + s for s in segments)
    parsed = SpiffeId.parse(text)
    assert str(parsed) == text
    assert parsed.trust_domain == trust_domain


@given(st.text(max_size=40))
def test_parsing_never_fails_other_than_by_refusal(text: str) -> None:
    try:
        parsed = SpiffeId.parse(text)
    except SpiffeIdError:
        return
    assert str(parsed) == text


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("http://example.org/a", "does not start"),
        ("spiffe://Example.org/a", "lowercase"),
        ("spiffe://example.org/a//b", "empty path segment"),
        ("spiffe://example.org/a/", "trailing"),
        ("spiffe://example.org/../a", "'..'"),
        ("spiffe://example.org/a?x=1", "query"),
        ("spiffe://example.org/a#f", "fragment"),
        ("spiffe://example.org:443/a", "port"),
        ("spiffe://user@example.org/a", "user info"),
        ("spiffe:///a", "empty"),
        ("spiffe://example.org/a b", "may only contain"),
    ],
)
def test_invalid_ids_name_the_rule(text: str, names: str) -> None:
    with pytest.raises(SpiffeIdError, match=names):
        SpiffeId.parse(text)
