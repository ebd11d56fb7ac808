"""Rule files: valid ones compile; invalid ones are refused whole, naming file and line."""

from __future__ import annotations

import textwrap

import pytest

from trustplane.posture.packs import load_pack, pack_names
from trustplane.posture.rules import Mode, RuleError, Severity, load_rules

GOOD = """\
id: team/no-latest
description: Images must not use the latest tag.
severity: medium
match: {kinds: [Pod]}
expression: containers.filter(c, c.image.endsWith(":latest")).map(c, c.name)
message: "containers {offenders} use the latest tag"
fix: Pin a version or a digest.
"""


def refusal(text: str) -> str:
    with pytest.raises(RuleError) as info:
        load_rules(textwrap.dedent(text), "rules.yaml")
    return str(info.value)


def test_a_valid_rule_compiles_with_its_fields() -> None:
    (rule,) = load_rules(GOOD, "rules.yaml")
    assert rule.id == "team/no-latest"
    assert rule.severity is Severity.MEDIUM
    assert rule.mode is Mode.ENFORCE
    assert rule.matches_pods
    assert rule.line == 1


def test_bad_cel_is_refused_with_the_line_of_the_expression() -> None:
    text = (
        GOOD
        + "---\n"
        + GOOD.replace("team/no-latest", "team/b").replace(
            "containers.filter(c, ", "containers.filter(c, (("
        )
    )
    message = refusal(text)
    assert message.startswith("rules.yaml:13: invalid CEL:")
    assert "Syntax error" in message


def test_an_unknown_field_is_named_with_its_line() -> None:
    message = refusal(GOOD + "severty: high\n")
    assert "rules.yaml:8: severty: unknown field" in message


def test_an_unknown_function_is_refused_at_load_not_at_evaluation() -> None:
    message = refusal(GOOD.replace('c.image.endsWith(":latest")', 'c.image.endz(":latest")'))
    assert "rules.yaml:5: invalid CEL: unknown function endz" in message


def test_an_unknown_severity_and_mode_are_refused() -> None:
    message = refusal(GOOD.replace("severity: medium", "severity: urgent") + "mode: block\n")
    assert "rules.yaml:3: severity: Value error, unknown severity 'urgent'" in message
    assert "rules.yaml:8: mode:" in message


def test_duplicate_ids_and_missing_expression_are_refused() -> None:
    assert "already defined at line 1" in refusal(GOOD + "---\n" + GOOD)
    no_expression = "\n".join(line for line in GOOD.splitlines() if "expression" not in line)
    assert "give either `expression` or `versions`" in refusal(no_expression)


def test_versions_must_increase_and_be_kubernetes_minors() -> None:
    versioned = GOOD.replace(
        "expression: containers",
        "versions:\n  - since: v1.20\n    expression: 'true'\n"
        "  - since: v1.19\n    expression: containers",
    )
    assert "versions must be in increasing `since` order" in refusal(versioned)
    assert "must be 'latest' or v1.N" in refusal(versioned.replace("v1.20", "v2.0"))


def test_invalid_yaml_names_the_line() -> None:
    assert refusal("id: a\nmatch: [\n").startswith("rules.yaml:3: invalid YAML")


def test_exemptions_need_an_owner_and_an_expiry() -> None:
    message = refusal(GOOD + "exemptions:\n  - namespaces: [legacy]\n")
    assert "exemptions.0.owner: Field required" in message
    assert "exemptions.0.expires: Field required" in message


def test_every_shipped_pack_loads() -> None:
    assert {"pss-baseline", "pss-restricted"} <= set(pack_names())
    for name in pack_names():
        assert load_pack(name).rules
    baseline = {r.id for r in load_pack("pss-baseline").rules}
    assert baseline < {r.id for r in load_pack("pss-restricted").rules}
