"""Bundle YAML is parsed with libyaml when present (a local `trustplane check` loads the bundle
and runs its tests every time); what a bundle means and how its problems read must not depend
on which parser ran."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import SHOP
from trustplane.decision.policy_bundle import BundleProblem, read_yaml
from trustplane.yaml_lines import Document

SHOP_YAML = sorted(SHOP.rglob("*.yaml"))


@pytest.mark.parametrize("path", SHOP_YAML, ids=lambda p: p.name)
def test_a_bundle_file_reads_as_the_pure_python_parser_reads_it(path: Path) -> None:
    text = path.read_text()
    problems: list[BundleProblem] = []
    parsed = read_yaml(str(path), text, problems)
    assert problems == []
    assert parsed is not None
    assert parsed.data == yaml.load(text, Loader=yaml.SafeLoader)
    pure_root = yaml.compose(text, Loader=yaml.SafeLoader)
    keys = list(parsed.data) if isinstance(parsed.data, dict) else []
    for key in keys:
        assert parsed.item_lines(key) == Document(0, parsed.data, pure_root).item_lines(key)


def test_a_yaml_syntax_error_names_the_same_line_and_reason_as_before() -> None:
    text = "tests:\n  - name: a\n    request: {principal: [\n"
    problems: list[BundleProblem] = []
    assert read_yaml("tests/x.yaml", text, problems) is None
    with pytest.raises(yaml.YAMLError) as info:
        yaml.load(text, Loader=yaml.SafeLoader)
    mark = info.value.problem_mark  # type: ignore[attr-defined]
    reason = info.value.problem  # type: ignore[attr-defined]
    assert problems == [BundleProblem("tests/x.yaml", f"invalid YAML: {reason}", mark.line + 1)]


def test_an_empty_file_reads_as_no_data() -> None:
    parsed = read_yaml("access.yaml", "", [])
    assert parsed is not None and parsed.data is None and parsed.node is None
