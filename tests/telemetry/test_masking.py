"""Masker.apply: configured JSON pointers are erased before a request is recorded."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustplane.config import Settings
from trustplane.model import AccessRequest, EntityRef
from trustplane.telemetry.masking import Masker, parse_pointer

DOCUMENT: dict[str, Any] = {
    "principal": {"type": "User", "id": "erin", "properties": {"ssn": "123", "team": "support"}},
    "action": {"type": "Action", "id": "payments:refund"},
    "resource": {"type": "Api", "id": "payments.refund"},
    "context": {
        "token": "eyJhbGciOi...",
        "mfa": True,
        "headers": {"authorization": "Bearer s3cret", "accept": "*/*"},
        "cards": [{"pan": "4111", "brand": "visa"}, {"pan": "5500", "brand": "mc"}],
        "a/b": {"c~d": "hidden", "e": "kept"},
    },
}


def test_nested_pointers_are_erased_and_reported() -> None:
    masked, hits = Masker(["/context/token", "/context/headers/authorization"]).apply(DOCUMENT)
    assert "token" not in masked["context"]
    assert masked["context"]["headers"] == {"accept": "*/*"}
    assert masked["context"]["mfa"] is True
    assert masked["principal"] == DOCUMENT["principal"]
    assert hits == ["/context/token", "/context/headers/authorization"]


def test_pointers_that_match_nothing_are_not_reported() -> None:
    masked, hits = Masker(
        ["/context/missing", "/context/token/deeper", "/context/cards/7", "/context/cards/-"]
    ).apply(DOCUMENT)
    assert masked == DOCUMENT
    assert hits == []


def test_pointers_into_array_elements() -> None:
    masked, hits = Masker(["/context/cards/0/pan", "/context/cards/1/pan"]).apply(DOCUMENT)
    assert masked["context"]["cards"] == [{"brand": "visa"}, {"brand": "mc"}]
    assert hits == ["/context/cards/0/pan", "/context/cards/1/pan"]


def test_a_whole_array_element_can_be_erased() -> None:
    masked, hits = Masker(["/context/cards/0"]).apply(DOCUMENT)
    assert {"pan": "4111", "brand": "visa"} not in masked["context"]["cards"]
    assert {"pan": "5500", "brand": "mc"} in masked["context"]["cards"]
    assert hits == ["/context/cards/0"]


def test_masking_several_array_elements_erases_exactly_those() -> None:
    document = {"context": {"secrets": ["secret-0", "secret-1", "public-2"]}}
    masked, _ = Masker(["/context/secrets/0", "/context/secrets/1"]).apply(document)
    assert "secret-1" not in masked["context"]["secrets"]
    assert "public-2" in masked["context"]["secrets"]


def test_escaped_pointer_segments() -> None:
    assert parse_pointer("/a~1b/c~0d") == ("a/b", "c~d")
    assert parse_pointer("/x~01") == ("x~1",)  # ~01 is "~1", not "/"
    masked, hits = Masker(["/context/a~1b/c~0d"]).apply(DOCUMENT)
    assert masked["context"]["a/b"] == {"e": "kept"}
    assert hits == ["/context/a~1b/c~0d"]


def test_subject_is_an_alias_of_principal() -> None:
    masked, hits = Masker(["/subject/properties/ssn"]).apply(DOCUMENT)
    assert masked["principal"]["properties"] == {"team": "support"}
    assert hits == ["/subject/properties/ssn"]


def test_input_document_is_not_modified() -> None:
    before = copy.deepcopy(DOCUMENT)
    Masker(
        ["/context/token", "/context/headers/authorization", "/context/cards/0/pan", "/principal"]
    ).apply(DOCUMENT)
    assert before == DOCUMENT


def test_relative_pointer_is_refused() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        Masker(["context/token"])


def test_default_settings_mask_tokens_in_recorded_requests() -> None:
    request = AccessRequest(
        EntityRef("User", "erin", {"email": "e@x"}),
        EntityRef("Action", "read"),
        EntityRef("Doc", "d"),
        {"token": "t0k3n", "authorization": "Basic abc", "mfa": True},
    )
    masked, hits = Masker(Settings().ledger.mask).apply(request.as_document())
    assert masked["context"] == {"mfa": True}
    assert masked["principal"]["properties"] == {"email": "e@x"}
    assert sorted(hits) == ["/context/authorization", "/context/token"]


# -- property: masking removes exactly what it is asked to --------------------------------------

# Object keys that need escaping, look like array indices or are empty; never the alias "subject".
_KEY = st.sampled_from(["a", "b", "0", "1", "a/b", "~", "~1", "", "x y"])
_SCALAR = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
_JSON = st.recursive(
    _SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEY, inner, max_size=4),
    max_leaves=12,
)
_DOC = st.dictionaries(_KEY, _JSON, max_size=4)

Path = tuple[str, ...]


def encode(path: Path) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def object_paths(node: Any, prefix: Path = ()) -> list[Path]:
    """Every path that reaches a value through object keys only."""
    out: list[Path] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((*prefix, key))
            out.extend(object_paths(value, (*prefix, key)))
    return out


def leaves(node: Any, prefix: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every scalar or empty container, by its full path (list steps as ints)."""
    if isinstance(node, dict) and node:
        items: list[tuple[Any, Any]] = list(node.items())
    elif isinstance(node, list) and node:
        items = list(enumerate(node))
    else:
        return {prefix: node}
    out: dict[tuple[Any, ...], Any] = {}
    for key, value in items:
        out.update(leaves(value, (*prefix, key)))
    return out


def exists(node: Any, path: Path) -> bool:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


@st.composite
def masking_cases(draw: st.DrawFn) -> tuple[dict[str, Any], list[Path]]:
    document = draw(_DOC)
    existing = object_paths(document)
    # Pointers that hit (through object keys, so no array index shifts) and ones that miss.
    strategy = st.lists(_KEY.filter(lambda k: not k.isdigit()), min_size=1, max_size=3).map(tuple)
    if existing:
        strategy = strategy | st.sampled_from(existing)
    paths = draw(st.lists(strategy, max_size=4))
    return document, paths


@settings(max_examples=300, deadline=None)
@given(masking_cases())
def test_masking_removes_masked_paths_and_nothing_else(
    case: tuple[dict[str, Any], list[Path]],
) -> None:
    document, paths = case
    pointers = [encode(p) for p in paths]
    original = copy.deepcopy(document)

    masked, hits = Masker(pointers).apply(document)

    assert document == original  # the input is never modified
    for path in paths:
        assert not exists(masked, path)  # every masked pointer is gone
    # A pointer is reported when it found something: present, and not already erased with an
    # earlier pointer that covers it.
    expected_hits = [
        pointer
        for index, (pointer, path) in enumerate(zip(pointers, paths, strict=True))
        if exists(original, path) and not any(path[: len(p)] == p for p in paths[:index])
    ]
    assert hits == expected_hits
    hit_paths = [p for p, pointer in zip(paths, pointers, strict=True) if pointer in hits]
    before, after = leaves(original), leaves(masked)
    for leaf, value in before.items():
        if not any(leaf[: len(p)] == p for p in hit_paths):
            assert leaf in after and after[leaf] == value, leaf  # everything else is intact
    for leaf, value in after.items():
        # Nothing is added; a container emptied by masking shows as an empty leaf.
        assert (leaf in before and before[leaf] == value) or any(
            leaf + p[len(leaf) :] == p for p in hit_paths
        ), leaf
