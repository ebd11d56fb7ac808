"""Policy bundles: a directory of Cedar policies, schema, entities and tests, compiled as one unit.

Compilation collects every problem it finds (file, line, policy id) instead of stopping at the
first, so an author fixes a broken bundle in one round trip.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import cedarpy

from trustplane.decision.source import PolicySource, split_policies
from trustplane.decision.step_up import StepUpError, parse_step_up
from trustplane.errors import TrustplaneError
from trustplane.yaml_lines import Document, YamlError, read_document

SCHEMA_FILE = "schema.cedarschema"
ENTITIES_FILE = "entities.json"
SETTINGS_FILE = "trustplane.yaml"
SIGNATURE_FILE = "bundle.sig"
TESTS_DIR = "tests"
BUNDLE_SUFFIXES = (".cedar", ".cedarschema", ".json", ".yaml", ".yml")
MAX_BUNDLE_FILES = 2000
MAX_BUNDLE_BYTES = 32 * 1024 * 1024

MODES = ("enforce", "observe", "canary")
TIERS = ("0", "1", "2")
KNOWN_ANNOTATIONS = frozenset(
    {"id", "mode", "owner", "tier", "description", "expires", "step_up", "canary"}
)
CANARY_RE = re.compile(r"^(?:100|[0-9]{1,2})(?:\.[0-9]{1,3})?$")
POLICY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
SETTINGS_KEYS = frozenset({"name", "description"})


_SCHEMA_COMMENT = re.compile(r"//[^\n]*")


def schema_without_comments(schema_text: str) -> str:
    """The Cedar schema text without its `//` comments, for what reads it by pattern (the
    action groups of decision/risk_cache.py, the trust fragment of trust/policy.py)."""
    return _SCHEMA_COMMENT.sub("", schema_text)


@dataclass(frozen=True, slots=True)
class BundleProblem:
    """One thing wrong with a bundle, located as precisely as the step that found it can."""

    file: str
    message: str
    line: int | None = None
    policy_id: str | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        policy = f" [{self.policy_id}]" if self.policy_id else ""
        return f"{where}{policy}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "policy": self.policy_id,
            "message": self.message,
        }


class BundleError(TrustplaneError):
    """The bundle was refused; `problems` lists every reason found. The CLI prints each of
    them and exits 1."""

    exit_code = 1

    def __init__(self, problems: Iterable[BundleProblem]) -> None:
        self.problems = list(problems)
        summary = "; ".join(str(p) for p in self.problems[:5])
        more = f" (+{len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"bundle refused: {summary}{more}")

    def headline(self) -> str:
        return f"bundle refused ({len(self.problems)} problem(s))"

    def details(self) -> list[str]:
        return [str(problem) for problem in self.problems]


@dataclass(frozen=True)
class BundleSource:
    """The bundle's files as bytes: what is hashed, signed, stored and reloaded on rollback."""

    files: Mapping[str, bytes]

    @classmethod
    def from_dir(cls, directory: Path) -> BundleSource:
        if not directory.is_dir():
            raise BundleError([BundleProblem(str(directory), "bundle directory does not exist")])
        files: dict[str, bytes] = {}
        total = 0
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            if rel.as_posix() != SIGNATURE_FILE and path.suffix not in BUNDLE_SUFFIXES:
                continue
            data = path.read_bytes()
            total += len(data)
            files[rel.as_posix()] = data
            if len(files) > MAX_BUNDLE_FILES or total > MAX_BUNDLE_BYTES:
                raise BundleError(
                    [
                        BundleProblem(
                            str(directory),
                            f"bundle exceeds {MAX_BUNDLE_FILES} files or "
                            f"{MAX_BUNDLE_BYTES // (1024 * 1024)} MiB",
                        )
                    ]
                )
        return cls(files)

    def manifest(self) -> dict[str, str]:
        """sha256 of every bundle file except the signature: what a signature covers."""
        return {
            path: hashlib.sha256(data).hexdigest()
            for path, data in sorted(self.files.items())
            if path != SIGNATURE_FILE
        }

    @functools.cached_property
    def revision(self) -> str:
        """Content hash: the same files give the same revision wherever they are loaded.
        Computed once: the decision path reads it on every request."""
        return hashlib.sha256(manifest_text(self.manifest()).encode()).hexdigest()

    def text(self, path: str) -> str | None:
        data = self.files.get(path)
        return None if data is None else data.decode("utf-8", errors="replace")


def manifest_text(manifest: Mapping[str, str]) -> str:
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(manifest.items()))


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    policy_id: str
    effect: str  # permit | forbid
    mode: str  # enforce | observe
    owner: str
    tier: str | None
    description: str
    expires: datetime | None
    file: str
    line: int
    text: str
    est: dict[str, Any] = field(repr=False, compare=False)
    step_up: str | None = None  # decision/step_up.py parses it: acr_values=... max_age=...
    # @mode("canary"): the percentage of principals (by hash, decision/canary.py) it is
    # enforced for; observed for the rest.
    canary: float | None = None

    def applies_at(self, now: datetime) -> bool:
        return self.expires is None or now < self.expires

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.policy_id,
            "effect": self.effect,
            "mode": self.mode,
            **({"canary": self.canary} if self.canary is not None else {}),
            "owner": self.owner,
            "tier": self.tier,
            "description": self.description,
            "expires": self.expires.isoformat() if self.expires else None,
            "file": self.file,
            "line": self.line,
        }


@dataclass
class Bundle:
    """A compiled bundle: parsed, annotated and validated against its schema."""

    source: BundleSource
    name: str
    description: str
    policies: list[PolicyInfo]
    schema_text: str
    schema: Any  # cedarpy.Schema
    entities: list[dict[str, Any]]
    tests: list[Any]  # list[trustplane.decision.testing.PolicyTest]
    warnings: list[BundleProblem]
    routes: Any = None  # trustplane.decision.routes.RouteTable, when the bundle has routes.yaml
    # What other planes' bundle files compiled to (governance's access.yaml), by file name.
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def revision(self) -> str:
        return self.source.revision

    def policy(self, policy_id: str) -> PolicyInfo | None:
        for info in self.policies:
            if info.policy_id == policy_id:
                return info
        return None


@dataclass(frozen=True)
class ExtraFile:
    """A bundle file another plane reads (governance's `access.yaml`), compiled with the bundle
    so that a problem in it refuses the whole bundle like any other problem.

    `parse(text, entities, problems)` gets the file's text (None when the bundle has none) and
    the bundle's entities, appends what is wrong to `problems` and returns what it compiled,
    which lands in `Bundle.extras[name]`. Whoever loads bundles (the server's runtime, the CLI)
    passes the extra files it knows; the decision plane imports no other plane for them.
    """

    name: str
    parse: Callable[[str | None, list[dict[str, Any]], list[BundleProblem]], Any]


def compile_bundle(
    source: BundleSource,
    *,
    now: datetime | None = None,
    expiry_warning_days: int = 7,
    extra_files: Sequence[ExtraFile] = (),
) -> Bundle:
    """Parse, check annotations and validate in strict mode; raise BundleError listing all
    problems. Tests are parsed here but run by the loader, which needs an evaluator."""
    # Both modules import this one for BundleProblem.
    from trustplane.decision.routes import ROUTES_FILE, parse_routes
    from trustplane.decision.testing import parse_test_file

    now = now or datetime.now(UTC)
    problems: list[BundleProblem] = []
    warnings: list[BundleProblem] = []

    name, description = _read_settings(source, problems)

    schema_text = source.text(SCHEMA_FILE)
    schema: Any = None
    if schema_text is None:
        problems.append(BundleProblem(SCHEMA_FILE, "missing: every bundle needs a Cedar schema"))
    else:
        try:
            schema = cedarpy.Schema.from_str(schema_text)
        except ValueError as exc:
            problems.append(BundleProblem(SCHEMA_FILE, f"invalid schema: {exc}"))

    policies = _read_policies(source, problems, now, expiry_warning_days, warnings)
    if not policies and not any(p.file.endswith(".cedar") for p in problems):
        warnings.append(BundleProblem("*.cedar", "bundle has no policies: everything is denied"))
    if schema is not None and policies:
        _validate_against_schema(policies, schema, problems)

    entities = _read_entities(source, schema, problems)

    routes_text = source.text(ROUTES_FILE)
    routes = None if routes_text is None else parse_routes(routes_text, schema, problems)

    extras = {
        extra.name: extra.parse(source.text(extra.name), entities, problems)
        for extra in extra_files
    }

    tests = []
    for path in sorted(source.files):
        if PurePosixPath(path).parts[0] == TESTS_DIR and path.endswith((".yaml", ".yml")):
            tests.extend(parse_test_file(path, source.text(path) or "", problems, routes))

    if problems:
        raise BundleError(problems)
    return Bundle(
        source=source,
        name=name or "bundle",
        description=description,
        policies=policies,
        schema_text=schema_text or "",
        schema=schema,
        entities=entities,
        tests=tests,
        warnings=warnings,
        routes=routes,
        extras=extras,
    )


def _read_settings(source: BundleSource, problems: list[BundleProblem]) -> tuple[str, str]:
    text = source.text(SETTINGS_FILE)
    if text is None:
        return "", ""
    document = read_yaml(SETTINGS_FILE, text, problems)
    if document is None:
        return "", ""
    data = document.data or {}
    if not isinstance(data, dict):
        problems.append(BundleProblem(SETTINGS_FILE, "must be a mapping of settings"))
        return "", ""
    for key in sorted(set(data) - SETTINGS_KEYS):
        problems.append(
            BundleProblem(
                SETTINGS_FILE,
                f"unknown setting {key!r} (known: {', '.join(sorted(SETTINGS_KEYS))})",
            )
        )
    name, description = data.get("name", ""), data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        problems.append(BundleProblem(SETTINGS_FILE, "name and description must be strings"))
        return "", ""
    return name, description


def _read_policies(
    source: BundleSource,
    problems: list[BundleProblem],
    now: datetime,
    expiry_warning_days: int,
    warnings: list[BundleProblem],
) -> list[PolicyInfo]:
    policies: list[PolicyInfo] = []
    seen: dict[str, PolicyInfo] = {}
    for path in sorted(source.files):
        if not path.endswith(".cedar"):
            continue
        for statement in split_policies(source.text(path) or ""):
            info = _read_policy(path, statement, problems, now, expiry_warning_days, warnings)
            if info is None:
                continue
            if info.policy_id in seen:
                first = seen[info.policy_id]
                problems.append(
                    BundleProblem(
                        path,
                        f"duplicate @id (first used at {first.file}:{first.line})",
                        statement.line,
                        info.policy_id,
                    )
                )
                continue
            seen[info.policy_id] = info
            policies.append(info)
    return policies


def _read_policy(
    path: str,
    statement: PolicySource,
    problems: list[BundleProblem],
    now: datetime,
    expiry_warning_days: int,
    warnings: list[BundleProblem],
) -> PolicyInfo | None:
    try:
        est_doc = json.loads(cedarpy.policies_to_json_str(statement.text))
    except ValueError as exc:
        problems.append(BundleProblem(path, f"Cedar syntax error: {exc}", statement.line))
        return None
    if est_doc.get("templates"):
        problems.append(
            BundleProblem(
                path, "templates (?principal/?resource) are not supported", statement.line
            )
        )
        return None
    (est,) = est_doc["staticPolicies"].values()
    annotations: dict[str, str] = est.get("annotations", {})
    policy_id = annotations.get("id")
    before = len(problems)

    def problem(message: str) -> None:
        problems.append(BundleProblem(path, message, statement.line, policy_id))

    if not policy_id:
        problem('missing @id("...") annotation')
    elif not POLICY_ID_RE.fullmatch(policy_id):
        problem("@id must be 1-128 letters, digits, '.', '_', ':' or '-'")
    for unknown in sorted(set(annotations) - KNOWN_ANNOTATIONS):
        problem(f"unknown annotation @{unknown} (known: {', '.join(sorted(KNOWN_ANNOTATIONS))})")
    owner = annotations.get("owner", "")
    if not owner:
        problem('missing @owner("team") annotation')
    mode = annotations.get("mode", "enforce")
    if mode not in MODES:
        problem(f'@mode must be "enforce", "observe" or "canary", not {mode!r}')
    canary: float | None = None
    share = annotations.get("canary")
    if mode == "canary" and share is None:
        problem('@mode("canary") needs @canary("PERCENT"): the share of principals enforced')
    elif share is not None and mode != "canary":
        problem(f'@canary applies only with @mode("canary"), not @mode("{mode}")')
    elif share is not None:
        if not CANARY_RE.fullmatch(share.strip().rstrip("%")) or not (
            0 < float(share.strip().rstrip("%")) < 100
        ):
            problem(f"@canary must be a percentage above 0 and below 100, not {share!r}")
        else:
            canary = float(share.strip().rstrip("%"))
    tier = annotations.get("tier")
    if tier is not None and tier not in TIERS:
        problem(f'@tier must be "0", "1" or "2", not {tier!r}')
    expires: datetime | None = None
    if "expires" in annotations:
        expires = parse_rfc3339(annotations["expires"])
        if expires is None:
            problem(f"@expires {annotations['expires']!r} is not an RFC 3339 time with offset")
        elif expires <= now:
            warnings.append(
                BundleProblem(
                    path,
                    f"expired at {expires.isoformat()}: no longer applies",
                    statement.line,
                    policy_id,
                )
            )
        elif expires - now < timedelta(days=expiry_warning_days):
            warnings.append(
                BundleProblem(
                    path, f"expires soon ({expires.isoformat()})", statement.line, policy_id
                )
            )
    step_up = annotations.get("step_up")
    if step_up is not None:
        try:
            parse_step_up(step_up)
        except StepUpError as exc:
            problem(str(exc))
    if len(problems) != before or policy_id is None:
        return None
    return PolicyInfo(
        policy_id=policy_id,
        effect=est["effect"],
        mode=mode,
        owner=owner,
        tier=tier,
        description=annotations.get("description", ""),
        expires=expires,
        file=path,
        line=statement.line,
        text=statement.text,
        est=est,
        step_up=step_up,
        canary=canary,
    )


def parse_rfc3339(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None or "T" not in value.upper():
        return None
    return parsed


def _validate_against_schema(
    policies: list[PolicyInfo], schema: Any, problems: list[BundleProblem]
) -> None:
    """One problem per distinct mistake: Cedar reports a typo once per policy and per action it
    checks, so errors that differ only in those are folded into one, located at the first policy
    and naming how many actions and other policies it touches. Sorted, so the order is stable."""
    text = "\n".join(p.text for p in policies)
    result = cedarpy.validate_policies(text, schema)
    if result.validation_passed:
        return
    folded: dict[str, tuple[set[str], set[int | None]]] = {}
    for error in result.errors:
        message = re.sub(r"for policy `policy\d+`, ", "", error.error)
        actions = set(re.findall(r' for (Action::"[^"]*")', message))
        message = re.sub(r' for Action::"[^"]*"', "", message)
        seen_actions, indexes = folded.setdefault(message, (set(), set()))
        seen_actions.update(actions)
        indexes.add(_policy_index(error.policy_id))
    found: list[BundleProblem] = []
    for message, (actions, indexes) in folded.items():
        infos = sorted(
            (policies[i] for i in indexes if i is not None and i < len(policies)),
            key=lambda info: (info.file, info.line),
        )
        detail = f"schema validation: {message}"
        if len(actions) > 1:
            detail += f" (for {len(actions)} actions)"
        elif actions:
            detail += f" (for {next(iter(actions))})"
        if len(infos) > 1:
            others = ", ".join(f"{i.policy_id} ({i.file}:{i.line})" for i in infos[1:])
            detail += f"; also in {others}"
        if not infos:
            found.append(BundleProblem("*.cedar", detail))
        else:
            first = infos[0]
            found.append(BundleProblem(first.file, detail, first.line, first.policy_id))
    problems.extend(sorted(found, key=lambda p: (p.file, p.line or 0, p.message)))


def _policy_index(cedar_id: str) -> int | None:
    match = re.fullmatch(r"policy(\d+)", cedar_id or "")
    return int(match.group(1)) if match else None


def _read_entities(
    source: BundleSource, schema: Any, problems: list[BundleProblem]
) -> list[dict[str, Any]]:
    text = source.text(ENTITIES_FILE)
    if text is None:
        return []
    try:
        entities = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(BundleProblem(ENTITIES_FILE, f"invalid JSON: {exc.msg}", exc.lineno))
        return []
    if not isinstance(entities, list):
        problems.append(BundleProblem(ENTITIES_FILE, "must be a JSON list of Cedar entities"))
        return []
    for index, entity in enumerate(entities):
        if not isinstance(entity, dict) or not isinstance(entity.get("uid"), dict):
            problems.append(
                BundleProblem(ENTITIES_FILE, f"entity #{index} needs a uid {{type, id}}")
            )
            return []
    if schema is not None:
        try:
            cedarpy.Entities.from_json_str(text, schema=schema)
        except ValueError as exc:
            problems.append(
                BundleProblem(ENTITIES_FILE, _locate_entity_error(entities, schema, exc))
            )
    return entities


def first_nonconforming(
    entities: list[dict[str, Any]], schema: Any
) -> tuple[int, ValueError] | None:
    """Cedar's errors for a set of entities are terse; loading them one by one names the
    first that does not match the schema (index and Cedar's error)."""
    for index, entity in enumerate(entities):
        try:
            cedarpy.Entities.from_json_str(json.dumps([entity]), schema=schema)
        except ValueError as exc:
            return index, exc
    return None


def _locate_entity_error(entities: list[dict[str, Any]], schema: Any, exc: ValueError) -> str:
    found = first_nonconforming(entities, schema)
    if found is None:
        return f"entities do not match the schema: {exc}"
    index, single = found
    uid = entities[index]["uid"]
    return (
        f'entity #{index} ({uid.get("type")}::"{uid.get("id")}") does not match the '
        f"schema: {single}"
    )


def read_yaml(path: str, text: str, problems: list[BundleProblem]) -> Document | None:
    """Parse `text` (`trustplane.yaml_lines`); on a syntax error, add the problem with its line
    and return None."""
    try:
        return read_document(text, path)
    except YamlError as exc:
        problems.append(BundleProblem(path, f"invalid YAML: {exc.reason}", exc.line))
        return None
