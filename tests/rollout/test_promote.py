"""`rollout/promote.py` without a server: the @mode/@canary edit of one policy, whatever the
annotations' layout, leaves every other byte alone and compiles to the mode asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.decision.test_bundle import NOW, minimal, source_of
from trustplane.decision.policy_bundle import compile_bundle
from trustplane.rollout.promote import PromotionError, plan

OTHER = (
    '@id("keep") @owner("x") @mode("observe")\n'
    "forbid(principal, action, resource) when { false };\n"
)


def bundle_dir(tmp_path: Path, policy: str) -> Path:
    for name, text in minimal(**{"watch.cedar": OTHER + "\n" + policy}).items():
        (tmp_path / name).write_text(text)
    return tmp_path


def compiled_mode(directory: Path, text: str) -> tuple[str, float | None, str]:
    files = {p.name: p.read_text() for p in directory.iterdir() if p.is_file()}
    files["watch.cedar"] = text
    bundle = compile_bundle(source_of(files), now=NOW)
    info = bundle.policy("w")
    keep = bundle.policy("keep")
    assert info is not None and keep is not None
    return info.mode, info.canary, keep.mode


LAYOUTS = [
    '@id("w")\n@owner("x")\n@mode("observe")\n@tier("1")\nforbid(principal, action, resource);\n',
    '@id("w") @owner("x") @mode("observe") forbid(principal, action, resource);\n',
    '// why\n@id("w")\n@mode ( "observe" )\n@owner("x")\nforbid(principal, action, resource);\n',
    '@id("w") @owner("x")\n@mode("canary") @canary("5")\nforbid(principal, action, resource);\n',
    '@id("w")\n@owner("x")\n@mode("canary")\n@canary("12.5")\n'
    "forbid(principal, action, resource);\n",
]


@settings(max_examples=40, deadline=None)
@given(
    layout=st.sampled_from(LAYOUTS),
    target=st.sampled_from(["canary", "enforce"]),
    percent=st.sampled_from([1.0, 10.0, 33.3, 50.0, 99.0]),
)
def test_the_edit_compiles_to_the_mode_asked_for_and_touches_nothing_else(
    tmp_path_factory: pytest.TempPathFactory, layout: str, target: str, percent: float
) -> None:
    directory = bundle_dir(tmp_path_factory.mktemp("b"), layout)
    try:
        edit = plan(directory, "w", target, percent if target == "canary" else None)
    except PromotionError as exc:
        assert "already in canary" in str(exc) and f'@canary("{percent:g}")' in layout
        return
    mode, share, kept = compiled_mode(directory, edit.after)
    assert (mode, share) == ((target, percent) if target == "canary" else ("enforce", None))
    assert kept == "observe", "another policy of the file is left alone"
    assert edit.after.startswith(OTHER) and edit.before.startswith(OTHER)
    assert edit.diff().startswith("--- a/watch.cedar\n+++ b/watch.cedar\n")
    assert (directory / "watch.cedar").read_text() == edit.before, "plan writes nothing"


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    directory = bundle_dir(tmp_path, LAYOUTS[0])
    with pytest.raises(PromotionError, match="no policy nope in"):
        plan(directory, "nope", "enforce")
    with pytest.raises(PromotionError, match="in enforce mode: only observe and canary"):
        plan(directory, "staff-read", "enforce")
    with pytest.raises(PromotionError, match="percentage above 0 and below 100"):
        plan(directory, "w", "canary", 100)
    with pytest.raises(PromotionError, match="promoted to canary or enforce"):
        plan(directory, "w", "observe")
