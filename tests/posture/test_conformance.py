"""The pss-baseline and pss-restricted packs against the upstream Pod Security Admission
fixtures: every pass pod admitted, every fail pod refused with its check among the reasons."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.corpus import psa_corpus
from trustplane.posture.conformance import main, run


def test_agreement_is_total_at_every_level_and_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    corpus = psa_corpus()
    results = run(corpus)
    assert {r.level for r in results} == {"baseline", "restricted"}
    assert len(results) == 2 * 38  # v1.0 … v1.37 for both levels
    assert sum(r.total for r in results) == 4537
    with capsys.disabled():
        print()
        for r in results:
            print(f"PSA conformance {r.level} {r.version}: {r.agreed}/{r.total} ({r.percent:.2f}%)")
    disagreements = [line for r in results for line in r.disagreements]
    assert disagreements == []


def test_the_report_names_each_disagreement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = psa_corpus() / "baseline" / "v1.37"
    target = tmp_path / "baseline" / "v1.37"
    (target / "pass").mkdir(parents=True)
    (target / "fail").mkdir()
    shutil.copy(source / "pass" / "base.yaml", target / "pass" / "base.yaml")
    # A privileged pod filed as failing hostPorts: refused, but not for the named check.
    shutil.copy(source / "fail" / "privileged0.yaml", target / "fail" / "hostports9.yaml")
    # A privileged pod filed as passing: refused.
    shutil.copy(source / "fail" / "privileged0.yaml", target / "pass" / "privileged9.yaml")
    # A privileged pod that cannot be read: refused, but not by the privileged check.
    unreadable = yaml.safe_load((source / "fail" / "privileged0.yaml").read_text())
    unreadable["metadata"] = "broken"
    (target / "fail" / "privileged8.yaml").write_text(yaml.safe_dump(unreadable))
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "fail/privileged8.yaml: not evaluated: rule could not be evaluated: the object" in out
    assert "object.metadata: expected an object, got a string" in out
    assert "baseline    v1.37     1/4     25.00%" in out
    assert "fail/hostports9.yaml: expected hostports among the reasons, got privileged" in out
    assert "pass/privileged9.yaml: refused: privileged: containers" in out


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_every_fixture_gets_its_verdict_in_every_workload_kind(level: str) -> None:
    import yaml

    from tests.posture.test_engine import wrap
    from trustplane.posture.engine import Engine, select
    from trustplane.posture.packs import load_pack
    from trustplane.posture.workloads import POD_PATHS

    engine = Engine(select(load_pack(f"pss-{level}").rules, 37))
    for path in sorted((psa_corpus() / level / "v1.37").glob("*/*.yaml")):
        pod = yaml.safe_load(path.read_text())
        bare = sorted((f.rule_id, f.message) for f in engine.evaluate(pod))
        for kind in POD_PATHS:
            wrapped = sorted((f.rule_id, f.message) for f in engine.evaluate(wrap(pod, kind)))
            assert wrapped == bare, f"{path.name} as {kind}"
