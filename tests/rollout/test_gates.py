"""The promotion gates' arithmetic and their file: the Wilson interval against the quadratic it
solves, rollout.yaml's problems located by line, the file hashed into the revision, and a
policy's observe stretch read from revisions' text."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SHOP
from trustplane.decision.policy_bundle import BundleError, BundleSource, compile_bundle
from trustplane.rollout.gates import (
    Z_95,
    Stratum,
    named_principals,
    observed_in,
    stratified_rate,
    wilson,
)
from trustplane.rollout.policy import BUNDLE_FILES, DEFAULT_GATES, rollout_policy


def score_roots(successes: int, trials: int, z: float) -> tuple[float, float]:
    """The proportions p where |p̂ - p| = z·sqrt(p(1-p)/n): the roots of
    (n + z²)p² - (2np̂ + z²)p + np̂² = 0, by the quadratic formula."""
    a = trials + z * z
    b = -(2 * successes + z * z)
    c = successes * successes / trials
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_bounds_are_the_roots_of_the_score_equation(case: tuple[int, int]) -> None:
    successes, trials = case
    low, high = wilson(successes, trials)
    expected_low, expected_high = score_roots(successes, trials, Z_95)
    assert low == pytest.approx(max(0.0, expected_low), abs=1e-9)
    assert high == pytest.approx(min(1.0, expected_high), abs=1e-9)
    assert 0.0 <= low <= successes / trials <= high <= 1.0


@given(st.integers(1, 2000), st.integers(0, 100), st.integers(2, 10))
def test_more_of_the_same_evidence_narrows_the_interval(trials: int, percent: int, k: int) -> None:
    successes = trials * percent // 100
    low, high = wilson(successes, trials)
    more_low, more_high = wilson(successes * k, trials * k)
    assert more_high - more_low < high - low
    assert more_low <= successes / trials <= more_high


def test_no_labels_bound_nothing_and_clean_labels_bound_the_rate() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)  # ten clean labels: up to 28%
    assert wilson(0, 73)[1] < 0.05 < wilson(0, 72)[1]  # 73 clean labels pass a 5% bound


def test_labels_taken_evenly_across_principals_are_weighed_by_their_would_denies() -> None:
    # A noisy principal: 100 would-denies, 5 labelled, all right; a quiet one: 1, wrong.
    rate, effective = stratified_rate([Stratum(100, 5, 0), Stratum(1, 1, 1)])
    assert rate == pytest.approx(1 / 101)  # not 1/6: the quiet principal stands for 1 in 101
    assert effective == pytest.approx(101**2 / (5 * 20**2 + 1))  # Kish: about 5.1 of 6 labels
    assert stratified_rate([Stratum(3, 0, 0)]) == (None, 0.0)


strata_lists = st.lists(
    st.integers(1, 200).flatmap(
        lambda n: st.integers(0, n).flatmap(
            lambda k: st.integers(0, k).map(lambda f: Stratum(n, k, f))
        )
    ),
    min_size=1,
    max_size=8,
)


@given(strata_lists)
def test_the_weighted_rate_is_a_rate_and_never_counts_more_labels_than_there_are(
    strata: list[Stratum],
) -> None:
    rate, effective = stratified_rate(strata)
    labelled = sum(s.labelled for s in strata)
    if labelled == 0:
        assert rate is None
        return
    assert rate is not None and 0.0 <= rate <= 1.0
    assert 0 < effective <= labelled + 1e-9
    if all(s.labelled == s.would_denies for s in strata):  # everything labelled: the plain rate
        assert rate == pytest.approx(sum(s.false_positives for s in strata) / labelled)
        assert effective == pytest.approx(labelled)


def shop_with(tmp_path: Path, rollout_yaml: str | None) -> BundleSource:
    copy = tmp_path / "shop"
    shutil.copytree(SHOP, copy)
    if rollout_yaml is not None:
        (copy / "rollout.yaml").write_text(rollout_yaml)
    return BundleSource.from_dir(copy)


def test_rollout_yaml_sets_gates_per_tier_and_is_hashed_into_the_revision(tmp_path: Path) -> None:
    plain = compile_bundle(shop_with(tmp_path / "a", None), extra_files=BUNDLE_FILES)
    text = 'tiers:\n  "0": {min_labels: 50, max_false_positive: 0.02}\n  default: {min_days: 1}\n'
    tuned = compile_bundle(shop_with(tmp_path / "b", text), extra_files=BUNDLE_FILES)
    assert rollout_policy(plain).gate("0") == DEFAULT_GATES["0"]
    gate = rollout_policy(tuned).gate("0")
    assert (gate.min_labels, gate.max_false_positive, gate.min_days) == (50, 0.02, 7)
    assert rollout_policy(tuned).gate(None).min_days == 1
    assert rollout_policy(tuned).gate("3").min_days == 1  # an unnamed tier takes `default`
    assert tuned.revision != plain.revision


def test_rollout_yaml_problems_name_the_file_and_line(tmp_path: Path) -> None:
    text = (
        "tiers:\n"
        '  "0":\n'
        "    min_labels: -3\n"
        "    max_false_positive: 5\n"
        "    min_dayz: 2\n"
        "  gold: {}\n"
        "promote: true\n"
    )
    with pytest.raises(BundleError) as refused:
        compile_bundle(shop_with(tmp_path, text), extra_files=BUNDLE_FILES)
    shown = [str(problem) for problem in refused.value.problems]
    assert any("rollout.yaml:3" in p and "min_labels" in p for p in shown), shown
    assert any("rollout.yaml:4" in p and "max_false_positive" in p for p in shown), shown
    assert any("rollout.yaml:5" in p and "min_dayz: unknown key" in p for p in shown), shown
    assert any("rollout.yaml:6" in p and "tiers.gold" in p for p in shown), shown
    assert any("rollout.yaml:7" in p and "promote" in p for p in shown), shown


def test_a_policy_is_observed_in_a_revision_only_with_its_observe_mode() -> None:
    files = {path: data for path, data in BundleSource.from_dir(SHOP).files.items()}
    assert observed_in(files, "forbid-large-refunds")
    assert not observed_in(files, "support-refunds-with-mfa")
    enforced = files["guardrails.cedar"].replace(b'@mode("observe")\n', b"")
    assert not observed_in({**files, "guardrails.cedar": enforced}, "forbid-large-refunds")


def test_named_principals_are_the_bundle_entities_not_marked_shared() -> None:
    bundle = compile_bundle(BundleSource.from_dir(SHOP), extra_files=BUNDLE_FILES)
    named = named_principals(bundle)
    assert 'User::"erin"' in named
    assert 'User::"mallory"' not in named
