"""The one YAML reader with lines (`trustplane/yaml_lines.py`): values and their lines, and
errors that name file and line the same way whichever parser (libyaml or pure Python) ran."""

from __future__ import annotations

import pytest
import yaml

from trustplane import yaml_lines
from trustplane.yaml_lines import YamlError, read_document, read_documents

RULES = """\
# two rules
id: one
expression: >
  true
---
---
id: two
versions:
  - since: "1.29"
    expression: x
"""


@pytest.fixture(params=["libyaml", "pure"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs under both parsers (libyaml is what a default install uses)."""
    if request.param == "pure":
        monkeypatch.setattr(yaml_lines, "_FAST_LOADER", yaml.SafeLoader)
    else:
        assert hasattr(yaml, "CSafeLoader"), "libyaml is part of the test environment"
    return str(request.param)


def test_documents_carry_their_data_index_and_lines(parser: str) -> None:
    first, second = read_documents(RULES, "rules.yaml")
    assert first.data == {"id": "one", "expression": "true\n"}
    assert (first.index, first.line) == (0, 2)
    assert first.line_of(["expression"]) == 3
    assert (second.index, second.data["id"]) == (2, "two"), "the empty document is counted"
    assert second.line_of(["versions", 0, "expression"]) == 10
    assert second.line_of(["versions", 0, "missing"]) == 9, "the nearest parent's line"
    assert second.item_lines("versions") == [9]
    assert second.item_lines("id") == [], "not a list"


def test_a_single_document_and_an_empty_text(parser: str) -> None:
    document = read_document("tests:\n  - name: a\n  - name: b\n", "tests/a.yaml")
    assert document.data == {"tests": [{"name": "a"}, {"name": "b"}]}
    assert document.item_lines("tests") == [2, 3]
    empty = read_document("", "access.yaml")
    assert (empty.data, empty.node, empty.line, empty.item_lines("x")) == (None, None, 1, [])


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("a: 1\nb: [\n", 3, "expected the node content, but found '<stream end>'"),
        ("a: 1\n  b: 2\n", 2, "mapping values are not allowed here"),
        ("a: *nowhere\n", 1, "found undefined alias 'nowhere'"),
    ],
)
def test_a_syntax_error_names_file_line_and_reason(
    parser: str, text: str, line: int, reason: str
) -> None:
    with pytest.raises(YamlError) as single:
        read_document(text, "bundle/routes.yaml")
    assert (single.value.source, single.value.line, single.value.reason) == (
        "bundle/routes.yaml",
        line,
        reason,
    )
    assert str(single.value) == f"bundle/routes.yaml:{line}: invalid YAML: {reason}"
    with pytest.raises(YamlError) as stream:
        read_documents("ok: 1\n---\n" + text, "rules.yaml")
    assert str(stream.value) == f"rules.yaml:{line + 2}: invalid YAML: {reason}"


def test_several_documents_where_one_is_expected(parser: str) -> None:
    with pytest.raises(YamlError) as info:
        read_document("a: 1\n---\nb: 2\n", "settings.yaml")
    message = "settings.yaml:2: invalid YAML: but found another document"
    assert str(info.value) == message, "the line where the second document starts"
