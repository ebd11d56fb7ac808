"""Rule documents: parsed, validated and compiled at load, refused with file and line.

A rule is one YAML document. Its CEL expression sees the object under review (see
`posture/engine.py` for the variables) and evaluates to `true` (compliant), `false` (a
violation) or a list of offenders (strings naming containers, volumes, fields; empty means
compliant), which fill the message template's `{offenders}`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Annotated

import cel
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from trustplane.config import PostureExemption
from trustplane.errors import TrustplaneError
from trustplane.posture.functions import CUSTOM_FUNCTIONS, SERVICE_FUNCTIONS
from trustplane.yaml_lines import Document, YamlError, read_documents

# CEL's own functions (cel-spec standard definitions) the expression may call; anything else is
# refused at load, since the library would only notice it at evaluation time.
STANDARD_FUNCTIONS = frozenset(
    {
        "size", "int", "uint", "double", "string", "bytes", "bool", "type", "dyn", "duration",
        "timestamp", "matches", "startsWith", "endsWith", "contains", "getFullYear", "getMonth",
        "getDayOfYear", "getDayOfMonth", "getDate", "getDayOfWeek", "getHours", "getMinutes",
        "getSeconds", "getMilliseconds",
    }
)  # fmt: skip
VERSION = re.compile(r"^v1\.(0|[1-9][0-9]*)$")
POD_KINDS = (
    "Pod",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicationController",
)


class RuleError(TrustplaneError):
    """A rule (or rule file) is invalid; every problem is named with its file and line."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class Severity(IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown severity {text!r} (one of {names})") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class Mode(StrEnum):
    """What a violation does: `enforce` refuses, `warn` tells the caller, `audit` records."""

    ENFORCE = "enforce"
    WARN = "warn"
    AUDIT = "audit"

    @property
    def strength(self) -> int:
        return {Mode.AUDIT: 0, Mode.WARN: 1, Mode.ENFORCE: 2}[self]

    def weakest(self, other: Mode) -> Mode:
        return self if self.strength <= other.strength else other


def minor(version: str) -> int:
    """`v1.N` → N (Kubernetes minor versions, as Pod Security Admission labels spell them)."""
    if not VERSION.match(version):
        raise ValueError(f"version {version!r} must be 'latest' or v1.N")
    return int(version.split(".")[1])


# -- the document schema -----------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchSpec(_Spec):
    # `Pod` matches pods wherever they hide (the pod template of every workload kind).
    kinds: list[Annotated[str, Field(pattern=r"^[A-Z][A-Za-z0-9]*$")]] = Field(min_length=1)


class VariantSpec(_Spec):
    since: str
    expression: str
    message: str | None = None

    @field_validator("since")
    @classmethod
    def _version(cls, value: str) -> str:
        minor(value)
        return value


class ExemptionSpec(_Spec):
    owner: str = Field(min_length=1)
    expires: dt.date
    reason: str = ""
    namespaces: list[str] | None = None
    labels: dict[str, str] | None = None


class RuleSpec(_Spec):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    check: str | None = None
    description: str = Field(min_length=1)
    severity: str
    match: MatchSpec
    mode: Mode = Mode.ENFORCE
    expression: str | None = None
    message: str = Field(min_length=1)
    versions: list[VariantSpec] | None = Field(None, min_length=1)
    fix: str = ""
    exemptions: list[ExemptionSpec] = Field(default_factory=list)

    @field_validator("severity")
    @classmethod
    def _severity(cls, value: str) -> str:
        Severity.parse(value)
        return value


# -- compiled rules ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exemption:
    owner: str
    expires: dt.date
    reason: str
    namespaces: frozenset[str] | None
    labels: dict[str, str] | None

    def applies(self, namespace: str | None, labels: dict[str, str], today: dt.date) -> bool:
        """Whether this exemption covers an object now; an expired one never does."""
        if today > self.expires:
            return False
        if self.namespaces is not None and namespace not in self.namespaces:
            return False
        if self.labels is not None:
            return all(labels.get(k) == v for k, v in self.labels.items())
        return True


@dataclass(frozen=True, slots=True)
class Variant:
    since: int  # the first Kubernetes minor version it applies to
    program: cel.Program
    message: str


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    description: str
    severity: Severity
    kinds: frozenset[str]
    mode: Mode
    variants: tuple[Variant, ...]  # ascending `since`
    fix: str
    check: str | None
    source: str
    line: int
    exemptions: tuple[Exemption, ...] = field(default=())

    @property
    def matches_pods(self) -> bool:
        return "Pod" in self.kinds

    def variant(self, version: int | None) -> Variant | None:
        """The variant in force at Kubernetes minor `version` (None: latest), if any."""
        chosen: Variant | None = None
        for variant in self.variants:
            if version is None or variant.since <= version:
                chosen = variant
        return chosen


def load_rules(text: str, source: str) -> list[Rule]:
    """Every rule in a (multi-document) YAML file; refuses the whole file on any problem."""
    try:
        documents = read_documents(text, source)
    except YamlError as exc:
        raise RuleError([str(exc)]) from None
    rules: list[Rule] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for document in documents:
        try:
            rule = compile_rule(document, source)
        except RuleError as exc:
            problems.extend(exc.problems)
            continue
        if rule.id in seen:
            problems.append(
                f"{source}:{rule.line}: rule {rule.id!r} is already defined at line {seen[rule.id]}"
            )
            continue
        seen[rule.id] = rule.line
        rules.append(rule)
    if problems:
        raise RuleError(problems)
    return rules


def compile_rule(document: Document, source: str) -> Rule:
    data = document.data
    if not isinstance(data, dict):
        raise RuleError([f"{source}:{document.line}: a rule must be a mapping"])
    try:
        spec = RuleSpec.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for error in exc.errors(include_url=False):
            loc = [p for p in error["loc"] if isinstance(p, str | int)]
            where = ".".join(str(p) for p in loc) or "rule"
            message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{source}:{document.line_of(loc)}: {where}: {message}")
        raise RuleError(problems) from None
    problems = []
    variants: list[Variant] = []
    if (spec.expression is None) == (spec.versions is None):
        problems.append(
            f"{source}:{document.line}: rule {spec.id!r}: give either `expression` or `versions`"
        )
    elif spec.expression is not None:
        program = _compile(spec.expression, source, document.line_of(["expression"]), problems)
        if program is not None:
            variants.append(Variant(0, program, spec.message))
    else:
        last = -1
        for i, item in enumerate(spec.versions or ()):
            line = document.line_of(["versions", i, "expression"])
            since = minor(item.since)
            if since <= last:
                problems.append(f"{source}:{line}: versions must be in increasing `since` order")
            last = since
            program = _compile(item.expression, source, line, problems)
            if program is not None:
                variants.append(Variant(since, program, item.message or spec.message))
    if problems:
        raise RuleError(problems)
    return Rule(
        id=spec.id,
        description=spec.description,
        severity=Severity.parse(spec.severity),
        kinds=frozenset(spec.match.kinds),
        mode=spec.mode,
        variants=tuple(variants),
        fix=spec.fix,
        check=spec.check,
        source=source,
        line=document.line,
        exemptions=tuple(
            Exemption(
                e.owner,
                e.expires,
                e.reason,
                frozenset(e.namespaces) if e.namespaces is not None else None,
                e.labels,
            )
            for e in spec.exemptions
        ),
    )


def _compile(expression: str, source: str, line: int, problems: list[str]) -> cel.Program | None:
    try:
        program = cel.compile(expression)
    except ValueError as exc:
        detail = " ".join(str(exc).split("\n")[0].split())
        problems.append(f"{source}:{line}: invalid CEL: {detail}")
        return None
    unknown = sorted(
        name
        for name in program.functions()
        if name[:1] not in ("_", "@", "!", "-")
        and name not in STANDARD_FUNCTIONS
        and name not in CUSTOM_FUNCTIONS
        and name not in SERVICE_FUNCTIONS
    )
    if unknown:
        problems.append(f"{source}:{line}: invalid CEL: unknown function {', '.join(unknown)}")
        return None
    return program


def exemptions_by_rule(items: Sequence[PostureExemption]) -> dict[str, list[Exemption]]:
    """The operator's exemptions (settings, an exemptions file) by rule id, as the engine
    takes them."""
    out: dict[str, list[Exemption]] = {}
    for item in items:
        namespaces = frozenset(item.namespaces) if item.namespaces is not None else None
        exemption = Exemption(item.owner, item.expires, item.reason, namespaces, item.labels)
        out.setdefault(item.rule, []).append(exemption)
    return out


def load_exemptions(text: str, source: str) -> list[PostureExemption]:
    """An exemptions file: a YAML list of exemptions; refused whole with file and line."""
    try:
        documents = read_documents(text, source)
    except YamlError as exc:
        raise RuleError([str(exc)]) from None
    items: list[PostureExemption] = []
    problems: list[str] = []
    for document in documents:
        if not isinstance(document.data, list):
            problems.append(f"{source}:{document.line}: expected a list of exemptions")
            continue
        for i, entry in enumerate(document.data):
            try:
                items.append(PostureExemption.model_validate(entry))
            except ValidationError as exc:
                for error in exc.errors(include_url=False):
                    loc = [i, *(p for p in error["loc"] if isinstance(p, str | int))]
                    where = ".".join(str(p) for p in loc)
                    message = (
                        "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
                    )
                    problems.append(f"{source}:{document.line_of(loc)}: [{where}]: {message}")
    if problems:
        raise RuleError(problems)
    return items
