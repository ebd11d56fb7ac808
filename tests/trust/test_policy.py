"""trust.yaml: compiled with the bundle, every mistake located by file and line, part of the
revision, and the shop's weights as the example documents them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import SHOP
from trustplane.decision.loader import LoadOptions, load_bundle
from trustplane.decision.policy_bundle import BundleError, BundleSource
from trustplane.governance.catalog import BUNDLE_FILES
from trustplane.trust.policy import BUNDLE_FILES as TRUST_FILES
from trustplane.trust.policy import DEFAULT_POLICY, trust_policy

OPTIONS = LoadOptions(run_tests=False, extra_files=BUNDLE_FILES + TRUST_FILES)

BAD = """\
levels: {medium: 25, high: 20}
signals:
  mfa_strength: {weight: 200}
  warp_speed: {weight: 3}
  auth_age: {weight: 5, fresh_seconds: soon, colour: blue}
  country: {weight: 10, mode: shadow}
extra: true
"""


def copy(tmp_path: Path) -> Path:
    bundle = tmp_path / "shop"
    shutil.copytree(SHOP, bundle, ignore=shutil.ignore_patterns("tests"))
    return bundle


def test_the_shop_weighs_its_signals_as_documented() -> None:
    loaded = load_bundle(BundleSource.from_dir(SHOP), OPTIONS)
    policy = trust_policy(loaded.bundle)
    assert policy.declared and policy.level(80) == "critical" and policy.level(24) == "low"
    assert policy.rules["impossible_travel"].weight == 65
    assert policy.rules["impossible_travel"].params == {"speed_kmh": 1000, "min_km": 500}
    assert not policy.rules["country"].enforce  # observed before it counts
    assert policy.rules["corporate_network"].weight == -10


def test_every_mistake_is_named_with_its_line(tmp_path: Path) -> None:
    bundle = copy(tmp_path)
    (bundle / "trust.yaml").write_text(BAD)
    with pytest.raises(BundleError) as refused:
        load_bundle(BundleSource.from_dir(bundle), OPTIONS)
    problems = [str(p) for p in refused.value.problems]
    expected = [
        "trust.yaml:7: unknown key 'extra' (known: levels, signals)",
        "trust.yaml:1: levels: medium < high < critical is required",
        "trust.yaml:3: signals.mfa_strength.weight: must be a whole number from -100 to 100",
        "trust.yaml:4: signals.warp_speed: unknown signal",
        "trust.yaml:5: signals.auth_age.colour: unknown key",
        "trust.yaml:5: signals.auth_age.fresh_seconds: must be a number (default 900)",
        "trust.yaml:6: signals.country.mode: must be enforce or observe, not 'shadow'",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)


def test_trust_yaml_is_part_of_the_revision(tmp_path: Path) -> None:
    bundle = copy(tmp_path)
    before = BundleSource.from_dir(bundle).revision
    text = (bundle / "trust.yaml").read_text()
    (bundle / "trust.yaml").write_text(text.replace("weight: 65", "weight: 60"))
    assert BundleSource.from_dir(bundle).revision != before


def test_a_bundle_without_trust_yaml_gets_the_observing_default(tmp_path: Path) -> None:
    bundle = copy(tmp_path)
    (bundle / "trust.yaml").unlink()
    loaded = load_bundle(BundleSource.from_dir(bundle), OPTIONS)
    assert trust_policy(loaded.bundle) is DEFAULT_POLICY
    assert not DEFAULT_POLICY.declared
    assert not any(rule.enforce for rule in DEFAULT_POLICY.rules.values())


NEW_SIGNALS_BAD = """\
signals:
  device: {weight: 50, require: [disk_encryption, warp_drive], unknown: 2}
  workload_integrity: {weight: 40, unattested_image: -1}
  denial_rate: {weight: 20, high: 1.5}
  velocity: {weight: 30, factor: many}
"""


def test_the_new_signals_are_validated_with_their_lines(tmp_path: Path) -> None:
    bundle = copy(tmp_path)
    (bundle / "trust.yaml").write_text(NEW_SIGNALS_BAD)
    with pytest.raises(BundleError) as refused:
        load_bundle(BundleSource.from_dir(bundle), OPTIONS)
    problems = [str(p) for p in refused.value.problems]
    expected = [
        "trust.yaml:2: signals.device.require: unknown 'warp_drive' (known: disk_encryption, "
        "edr, screen_lock, managed, patched)",
        "trust.yaml:2: signals.device.unknown: must be from 0 to 1",
        "trust.yaml:3: signals.workload_integrity.unattested_image: must not be negative",
        "trust.yaml:4: signals.denial_rate.high: must be from 0 to 1",
        "trust.yaml:5: signals.velocity.factor: must be a number (default 3)",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)


def test_the_shop_names_the_device_workload_and_behaviour_signals() -> None:
    policy = trust_policy(load_bundle(BundleSource.from_dir(SHOP), OPTIONS).bundle)
    assert policy.rules["device"].enforce and policy.rules["device"].params["unknown"] == 0
    for name in ("workload_integrity", "novelty", "velocity", "denial_rate"):
        assert not policy.rules[name].enforce, f"{name} is observed in the example"
