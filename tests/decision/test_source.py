"""split_policies: where one Cedar policy ends and the next begins, and on which line it starts."""

from __future__ import annotations

import json
import string

import cedarpy
from hypothesis import given, settings
from hypothesis import strategies as st

from trustplane.decision.source import split_policies

PERMIT = "permit(principal, action, resource);"


def test_statements_split_at_semicolons_with_their_first_lines() -> None:
    text = (
        "// two policies\n"
        '@id("a")\n'
        "permit(principal, action, resource);\n"
        "\n"
        '@id("b") forbid(principal, action, resource)\n'
        "  when { context.x };\n"
    )
    statements = split_policies(text)
    assert [s.line for s in statements] == [2, 5]
    assert statements[0].text == '@id("a")\npermit(principal, action, resource);'
    assert statements[1].text.startswith('@id("b") forbid')
    assert statements[1].text.endswith("when { context.x };")


def test_semicolons_and_slashes_inside_strings_do_not_split() -> None:
    text = (
        '@id("a") @description("x; y // not a comment; \\"quoted; still\\" end")\n'
        "permit(principal, action, resource);\n"
        '@id("b") permit(principal, action, resource) when { context.s == "a;b" };\n'
    )
    statements = split_policies(text)
    assert len(statements) == 2
    annotations = _annotations(statements[0].text)
    assert annotations["description"] == 'x; y // not a comment; "quoted; still" end'
    assert statements[1].line == 3


def test_escaped_backslash_before_closing_quote_ends_the_string() -> None:
    text = '@description("ends in a backslash \\\\") permit(principal, action, resource); ' + PERMIT
    statements = split_policies(text)
    assert len(statements) == 2
    assert _annotations(statements[0].text)["description"] == "ends in a backslash \\"


def test_semicolons_and_quotes_in_comments_do_not_split() -> None:
    text = (
        '// a comment; with "an unbalanced quote\n'
        '@id("a") // trailing comment; ";\n'
        'permit(principal, action, resource); // after; "\n'
        '@id("b")\n' + PERMIT
    )
    statements = split_policies(text)
    assert [s.line for s in statements] == [2, 4]
    for statement in statements:
        assert len(json.loads(cedarpy.policies_to_json_str(statement.text))["staticPolicies"]) == 1


def test_multiline_strings_count_their_lines() -> None:
    text = (
        '@id("a") @description("one\ntwo\nthree")\n'
        "permit(principal, action, resource);\n"
        "\n"
        '@id("b")\n' + PERMIT
    )
    statements = split_policies(text)
    assert [s.line for s in statements] == [1, 6]


def test_trailing_text_without_semicolon_is_returned_for_the_parser_to_report() -> None:
    text = PERMIT + "\n\n" + '@id("b") permit(principal, action, resource)\n'
    statements = split_policies(text)
    assert len(statements) == 2
    assert statements[1].line == 3
    assert statements[1].text.startswith('@id("b")')


def test_only_whitespace_and_comments_gives_no_statements() -> None:
    assert split_policies("") == []
    assert split_policies("\n  // nothing here; really\n\t\n// ;;\n") == []


# -- property: generated policy files split back into the policies they were built from ----------

# Printable text that Cedar accepts raw inside a string literal (no carriage returns).
_TEXT = st.text(
    alphabet=st.sampled_from([*(set(string.printable) - set("\r\x0b\x0c")), "é", "→"]),
    max_size=30,
)
_COMMENT = st.text(
    alphabet=st.sampled_from([*(set(string.printable) - set("\r\n\x0b\x0c")), "é"]),
    max_size=20,
).map(lambda s: f"// {s}\n")
_GAP = st.lists(st.sampled_from(["\n", " ", "\t", "\n\n"]) | _COMMENT, max_size=4).map("".join)


def _cedar_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def policy_files(draw: st.DrawFn) -> tuple[str, list[tuple[int, str, str]]]:
    """Cedar text plus, per policy, (line of its first annotation, id, description)."""
    count = draw(st.integers(1, 6))
    text = draw(_GAP)
    expected: list[tuple[int, str, str]] = []
    for index in range(count):
        description = draw(_TEXT)
        effect = draw(st.sampled_from(["permit", "forbid"]))
        inner = draw(st.sampled_from([" ", "\n", "\n  "]))
        condition = draw(
            st.sampled_from(
                ["", ' when { context.s == "a;b//c" }', " unless {\n  context.n == 1 // ;\n}"]
            )
        )
        line = text.count("\n") + 1
        text += (
            f'@id("p{index}"){inner}@description({_cedar_string(description)}){inner}'
            f"{effect}(principal, action, resource){condition};"
        )
        expected.append((line, f"p{index}", description))
        text += draw(_GAP)
    return text, expected


@settings(max_examples=200, deadline=None)
@given(policy_files())
def test_split_recovers_every_generated_policy_at_its_line(
    case: tuple[str, list[tuple[int, str, str]]],
) -> None:
    text, expected = case
    statements = split_policies(text)
    assert len(statements) == len(expected)
    for statement, (line, policy_id, description) in zip(statements, expected, strict=True):
        assert statement.line == line
        annotations = _annotations(statement.text)
        assert annotations == {"id": policy_id, "description": description}


def _annotations(statement: str) -> dict[str, str]:
    document = json.loads(cedarpy.policies_to_json_str(statement))
    (policy,) = document["staticPolicies"].values()
    return dict(policy.get("annotations", {}))
