"""compile_bundle and load_bundle: what loads, and every way a broken bundle is refused."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import REPO, write_bundle
from trustplane.decision.loader import LoadOptions, load_bundle
from trustplane.decision.policy_bundle import (
    BundleError,
    BundleProblem,
    BundleSource,
    compile_bundle,
)
from trustplane.model import AccessRequest, EntityRef

SHOP = REPO / "examples" / "shop"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

SCHEMA = """
entity Group;
entity User in [Group] { level: Long };
entity Doc;
action read appliesTo { principal: User, resource: Doc, context: {} };
"""
ENTITIES = json.dumps(
    [
        {"uid": {"type": "Group", "id": "staff"}, "attrs": {}, "parents": []},
        {
            "uid": {"type": "User", "id": "ann"},
            "attrs": {"level": 3},
            "parents": [{"type": "Group", "id": "staff"}],
        },
    ]
)
GOOD_POLICY = (
    '@id("staff-read") @owner("docs")\npermit(principal in Group::"staff", action, resource);\n'
)


def minimal(**extra: str) -> dict[str, str]:
    files = {"schema.cedarschema": SCHEMA, "entities.json": ENTITIES, "policies.cedar": GOOD_POLICY}
    files.update(extra)
    return files


def source_of(files: dict[str, str]) -> BundleSource:
    return BundleSource({name: text.encode() for name, text in files.items()})


def refusal(files: dict[str, str], **kwargs: object) -> list[BundleProblem]:
    with pytest.raises(BundleError) as info:
        compile_bundle(source_of(files), now=NOW, **kwargs)  # type: ignore[arg-type]
    assert info.value.problems, "a refusal always says why"
    return info.value.problems


def find(problems: list[BundleProblem], *, file: str, pattern: str) -> BundleProblem:
    matches = [p for p in problems if p.file == file and re.search(pattern, p.message)]
    assert matches, f"no problem in {file} matching {pattern!r}: {[str(p) for p in problems]}"
    return matches[0]


# -- the example estate -----------------------------------------------------------------------


def test_shop_bundle_loads_with_all_policies_and_passing_tests() -> None:
    loaded = load_bundle(BundleSource.from_dir(SHOP))
    assert loaded.bundle.name == "shop"
    cedar_text = "".join(p.read_text() for p in SHOP.glob("*.cedar"))
    assert len(loaded.bundle.policies) == cedar_text.count("@id(")
    yaml_text = "".join(p.read_text() for p in (SHOP / "tests").glob("*.yaml"))
    assert len(loaded.test_results) == yaml_text.count("- name:") > 0
    assert all(result.passed for result in loaded.test_results)
    assert re.fullmatch(r"[0-9a-f]{64}", loaded.bundle.revision)
    assert loaded.evaluator.revision == loaded.bundle.revision


def test_revision_is_a_content_hash(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(SHOP, copy)
    original = BundleSource.from_dir(SHOP).revision
    assert BundleSource.from_dir(copy).revision == original

    humans = copy / "humans.cedar"
    humans.write_text(humans.read_text() + "\n")
    assert BundleSource.from_dir(copy).revision != original

    humans.write_text((SHOP / "humans.cedar").read_text())
    (copy / "tests" / "extra.yaml").write_text("tests: []\n")
    assert BundleSource.from_dir(copy).revision != original

    (copy / "tests" / "extra.yaml").unlink()
    (copy / "README.md").write_text("not a bundle file, not hashed")
    assert BundleSource.from_dir(copy).revision == original


def test_signature_file_is_not_part_of_the_manifest_or_revision(tmp_path: Path) -> None:
    bundle_dir = write_bundle(tmp_path / "b", minimal())
    before = BundleSource.from_dir(bundle_dir)
    (bundle_dir / "bundle.sig").write_text("{}")
    after = BundleSource.from_dir(bundle_dir)
    assert "bundle.sig" in after.files
    assert "bundle.sig" not in after.manifest()
    assert after.revision == before.revision
    assert set(after.manifest()) == {"schema.cedarschema", "entities.json", "policies.cedar"}


def test_policy_annotations_are_read() -> None:
    policy = (
        '@id("p") @owner("docs") @mode("observe") @tier("0") @description("Read docs.")\n'
        '@expires("2027-01-01T00:00:00Z")\n'
        "forbid(principal, action, resource);\n"
    )
    bundle = compile_bundle(source_of(minimal(**{"policies.cedar": policy})), now=NOW)
    info = bundle.policy("p")
    assert info is not None
    assert (info.effect, info.mode, info.owner, info.tier) == ("forbid", "observe", "docs", "0")
    assert info.description == "Read docs."
    assert info.expires == datetime(2027, 1, 1, tzinfo=UTC)
    assert (info.file, info.line) == ("policies.cedar", 1)
    assert bundle.warnings == []


# -- refusals, one at a time ------------------------------------------------------------------


def test_cedar_syntax_error_names_file_and_statement_line() -> None:
    text = (
        GOOD_POLICY + '\n@id("broken") @owner("x")\npermit(principal, action, resource) when { ;\n'
    )
    problems = refusal(minimal(**{"policies.cedar": text}))
    problem = find(problems, file="policies.cedar", pattern="Cedar syntax error")
    assert problem.line == 4


@pytest.mark.parametrize(
    ("policy", "pattern", "policy_id"),
    [
        ('@owner("x") permit(principal, action, resource);', r"missing @id", None),
        ('@id("p") permit(principal, action, resource);', r"missing @owner", "p"),
        (
            '@id("p") @owner("x") @mode("enforced") permit(principal, action, resource);',
            r"@mode must be .*'enforced'",
            "p",
        ),
        (
            '@id("p") @owner("x") @tier("3") permit(principal, action, resource);',
            r"@tier must be .*'3'",
            "p",
        ),
        (
            '@id("p") @owner("x") @expires("next week") permit(principal, action, resource);',
            r"@expires 'next week' is not an RFC 3339",
            "p",
        ),
        (
            '@id("p") @owner("x") @expires("2027-01-01T00:00:00")\n'
            "permit(principal, action, resource);",
            r"@expires .* is not an RFC 3339 time with offset",
            "p",
        ),
        (
            '@id("p") @owner("x") @onwer("x") permit(principal, action, resource);',
            r"unknown annotation @onwer",
            "p",
        ),
        ('@id("has space") @owner("x") permit(principal, action, resource);', r"@id must be", None),
    ],
)
def test_bad_annotations_are_refused_with_location(
    policy: str, pattern: str, policy_id: str | None
) -> None:
    problems = refusal(minimal(**{"extra.cedar": "\n\n" + policy + "\n"}))
    problem = find(problems, file="extra.cedar", pattern=pattern)
    assert problem.line == 3
    if policy_id is not None:
        assert problem.policy_id == policy_id
        assert f"extra.cedar:3 [{policy_id}]" in str(problem)


def test_duplicate_id_points_at_the_first_use() -> None:
    problems = refusal(minimal(**{"z.cedar": "// again\n" + GOOD_POLICY}))
    problem = find(problems, file="z.cedar", pattern=r"duplicate @id")
    assert problem.line == 2
    assert problem.policy_id == "staff-read"
    assert "policies.cedar:1" in problem.message


def test_template_policies_are_refused() -> None:
    text = '@id("t") @owner("x")\npermit(principal == ?principal, action, resource);\n'
    problems = refusal(minimal(**{"t.cedar": text}))
    problem = find(problems, file="t.cedar", pattern=r"templates")
    assert problem.line == 1


def test_schema_validation_is_strict_and_located() -> None:
    text = (
        GOOD_POLICY
        + '\n@id("reads-level") @owner("x")\n'
        + "permit(principal, action, resource) when { principal.levle > 1 };\n"
    )
    problems = refusal(minimal(**{"policies.cedar": text}))
    problem = find(problems, file="policies.cedar", pattern=r"schema validation: .*levle")
    assert problem.line == 4
    assert problem.policy_id == "reads-level"


def test_schema_validation_blames_the_right_policy_across_files() -> None:
    bad = '@id("bad") @owner("x")\npermit(principal, action, resource) when { resource.nope };\n'
    problems = refusal(
        minimal(**{"a.cedar": GOOD_POLICY.replace("staff-read", "a1"), "z.cedar": bad})
    )
    assert [(p.file, p.line, p.policy_id) for p in problems] == [("z.cedar", 1, "bad")]


def test_missing_schema_is_refused() -> None:
    files = minimal()
    del files["schema.cedarschema"]
    problems = refusal(files)
    problem = find(problems, file="schema.cedarschema", pattern=r"missing")
    assert "needs a Cedar schema" in problem.message


def test_invalid_schema_is_refused() -> None:
    problems = refusal(minimal(**{"schema.cedarschema": "entity User {"}))
    problem = find(problems, file="schema.cedarschema", pattern=r"invalid schema")
    assert problem.message.startswith("invalid schema: ")


def test_entities_invalid_json_names_the_line() -> None:
    problems = refusal(
        minimal(**{"entities.json": '[\n  {"uid": {"type": "Group", "id": "x"}},\n  oops\n]'})
    )
    problem = find(problems, file="entities.json", pattern=r"invalid JSON")
    assert problem.line == 3


def test_entity_not_matching_schema_is_named() -> None:
    bad_bob = {"uid": {"type": "User", "id": "bad-bob"}, "attrs": {"level": "high"}, "parents": []}
    entities = [*json.loads(ENTITIES), bad_bob]
    problems = refusal(minimal(**{"entities.json": json.dumps(entities)}))
    problem = find(problems, file="entities.json", pattern=r"does not match the schema")
    assert 'User::"bad-bob"' in problem.message
    assert "#2" in problem.message


def test_settings_with_unknown_key_are_refused() -> None:
    problems = refusal(minimal(**{"trustplane.yaml": "name: docs\nnmae: typo\n"}))
    problem = find(problems, file="trustplane.yaml", pattern=r"unknown setting 'nmae'")
    assert "known: description, name" in problem.message


def test_malformed_test_yaml_names_the_line() -> None:
    text = "tests:\n  - name: ok\n    expect: allow\n    request: {principal: [\n"
    problems = refusal(minimal(**{"tests/broken.yaml": text}))
    problem = find(problems, file="tests/broken.yaml", pattern=r"invalid YAML")
    assert problem.line is not None and problem.line >= 4


REQUEST = "{principal: 'User:ann', action: read, resource: 'Doc:d'}"


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        (
            f"name: a\n    request: {REQUEST}\n    expect: allow\n    expcet: deny",
            r"unknown field 'expcet'",
        ),
        (f"name: a\n    request: {REQUEST}\n    expect: permit", r"'expect' must be allow or deny"),
        (
            f"name: a\n    request: {REQUEST}\n    expect: allow\n    shadow: maybe",
            r"'shadow' must be allow or deny",
        ),
        (
            f"name: a\n    request: {REQUEST}\n    expect: allow\n    determining: one",
            r"'determining' must be a list",
        ),
        (
            f"name: a\n    request: {REQUEST}\n    expect: allow\n    at: yesterday",
            r"'at' must be an RFC 3339",
        ),
        (f"request: {REQUEST}\n    expect: allow", r"'name' is required"),
        (
            "name: a\n    request: {principal: 'User:ann', action: read}\n    expect: allow",
            r"request\.resource: is required",
        ),
    ],
)
def test_bad_test_cases_are_refused_with_their_line(case: str, pattern: str) -> None:
    text = f"tests:\n  - name: fine\n    request: {REQUEST}\n    expect: allow\n  - {case}\n"
    problems = refusal(minimal(**{"tests/cases.yaml": text}))
    problem = find(problems, file="tests/cases.yaml", pattern=pattern)
    assert problem.line == 5


def test_every_problem_is_reported_at_once() -> None:
    policies = (
        GOOD_POLICY  # line 1
        + "\n"
        + '@id("syntax") @owner("x") permit(principal, action, resource) when {;\n'  # line 4
        + '@owner("x") permit(principal, action, resource);\n'  # line 5: no @id
        + '@id("staff-read") @owner("x") permit(principal, action, resource);\n'  # 6: duplicate
        + '@id("typo") @onwer("x") @owner("x") permit(principal, action, resource);\n'  # 7
        + '@id("strict") @owner("x") permit(principal, action, resource) when { resource.x };\n'
    )
    entities = [*json.loads(ENTITIES), {"uid": {"type": "User", "id": "eve"}, "attrs": {}}]
    files = minimal(
        **{
            "policies.cedar": policies,
            "entities.json": json.dumps(entities),
            "trustplane.yaml": "colour: blue\n",
            "tests/t.yaml": f"tests:\n  - name: t\n    request: {REQUEST}\n    expect: nope\n",
        }
    )
    problems = refusal(files)
    assert find(problems, file="policies.cedar", pattern="syntax error").line == 4
    assert find(problems, file="policies.cedar", pattern="missing @id").line == 5
    assert find(problems, file="policies.cedar", pattern="duplicate @id").line == 6
    assert find(problems, file="policies.cedar", pattern="@onwer").policy_id == "typo"
    assert find(problems, file="policies.cedar", pattern="schema validation").policy_id == "strict"
    assert 'User::"eve"' in find(problems, file="entities.json", pattern="schema").message
    assert "unknown setting" in find(problems, file="trustplane.yaml", pattern="colour").message
    assert find(problems, file="tests/t.yaml", pattern="'expect'").line == 2
    assert len(problems) == 8


def test_failing_bundle_test_refuses_the_load(tmp_path: Path) -> None:
    tests = (
        "tests:\n"
        "  - name: ann reads\n"
        f"    request: {REQUEST}\n"
        "    expect: allow\n"
        "  - name: ann is wrongly expected to be denied\n"
        f"    request: {REQUEST}\n"
        "    expect: deny\n"
    )
    bundle_dir = write_bundle(tmp_path / "b", minimal(**{"tests/t.yaml": tests}))
    with pytest.raises(BundleError) as info:
        load_bundle(BundleSource.from_dir(bundle_dir))
    (problem,) = info.value.problems
    assert (problem.file, problem.line) == ("tests/t.yaml", 5)
    assert "ann is wrongly expected to be denied" in problem.message
    assert "expected deny, got allow" in problem.message
    # Without running tests the same bundle compiles and answers.
    loaded = load_bundle(BundleSource.from_dir(bundle_dir), LoadOptions(run_tests=False))
    assert loaded.test_results == []


def test_wrong_determining_policies_fail_the_test(tmp_path: Path) -> None:
    tests = (
        f"tests:\n  - name: t\n    request: {REQUEST}\n    expect: allow\n"
        "    determining: [someone-else]\n"
    )
    bundle_dir = write_bundle(tmp_path / "b", minimal(**{"tests/t.yaml": tests}))
    with pytest.raises(BundleError) as info:
        load_bundle(BundleSource.from_dir(bundle_dir))
    assert "expected determining policies ['someone-else'], got ['staff-read']" in str(
        info.value.problems[0]
    )


def test_shop_with_a_broken_expectation_is_refused(shop_copy: Path) -> None:
    path = shop_copy / "tests" / "humans.yaml"
    text = path.read_text()
    first = text.index("expect: allow")
    path.write_text(text[:first] + "expect: deny" + text[first + len("expect: allow") :])
    with pytest.raises(BundleError) as info:
        load_bundle(BundleSource.from_dir(shop_copy))
    (problem,) = info.value.problems
    assert problem.file == "tests/humans.yaml"
    name_line = text[: text.index("- name: bob (developer) may read")].count("\n") + 1
    assert problem.line == name_line
    assert "bob (developer) may read stock levels" in problem.message


# -- warnings and expiry ----------------------------------------------------------------------


def _expiring(at: datetime) -> dict[str, str]:
    stamp = at.isoformat().replace("+00:00", "Z")
    policy = (
        f'@id("temp") @owner("docs") @expires("{stamp}")\n'
        'permit(principal == User::"ann", action, resource);\n'
    )
    return minimal(**{"policies.cedar": policy})


def _ann_reads() -> AccessRequest:
    return AccessRequest(
        EntityRef("User", "ann"), EntityRef("Action", "read"), EntityRef("Doc", "d")
    )


def test_policy_expiring_within_the_warning_window_warns_but_loads() -> None:
    bundle = compile_bundle(source_of(_expiring(NOW + timedelta(days=3))), now=NOW)
    (warning,) = bundle.warnings
    assert (warning.file, warning.line, warning.policy_id) == ("policies.cedar", 1, "temp")
    assert "expires soon" in warning.message
    assert bundle.policy("temp") is not None


def test_policy_expiring_later_does_not_warn() -> None:
    bundle = compile_bundle(source_of(_expiring(NOW + timedelta(days=30))), now=NOW)
    assert bundle.warnings == []
    narrow = compile_bundle(
        source_of(_expiring(NOW + timedelta(days=3))), now=NOW, expiry_warning_days=2
    )
    assert narrow.warnings == []


def test_expired_policy_warns_and_no_longer_applies() -> None:
    loaded = load_bundle(source_of(_expiring(NOW - timedelta(days=1))), now=NOW)
    (warning,) = loaded.bundle.warnings
    assert "expired" in warning.message and warning.policy_id == "temp"
    assert not loaded.evaluator.evaluate(_ann_reads(), at=NOW).allowed
    assert loaded.evaluator.evaluate(_ann_reads(), at=NOW - timedelta(days=2)).allowed


def test_bundle_without_policies_warns_that_everything_is_denied() -> None:
    files = minimal()
    del files["policies.cedar"]
    bundle = compile_bundle(source_of(files), now=NOW)
    assert any("no policies" in w.message for w in bundle.warnings)


def test_missing_bundle_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as info:
        BundleSource.from_dir(tmp_path / "nowhere")
    assert "does not exist" in info.value.problems[0].message
