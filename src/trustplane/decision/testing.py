"""Bundle tests: YAML cases of a request and the answer the bundle must give.

A bundle whose tests fail is never activated, so a policy change that breaks an expected answer
is caught before it serves traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trustplane.decision.engine import Evaluator
from trustplane.decision.policy_bundle import BundleProblem, PolicyInfo, parse_rfc3339, read_yaml
from trustplane.decision.requests import RequestError, parse_entity, parse_request
from trustplane.decision.routes import HttpFacts, RouteTable
from trustplane.model import AccessRequest, Decision, EntityRef, refusal

TEST_KEYS = frozenset({"name", "request", "http", "expect", "determining", "shadow", "at"})
HTTP_KEYS = frozenset({"method", "path", "host", "principal", "credential"})
EFFECTS = ("allow", "deny")


@dataclass(frozen=True)
class PolicyTest:
    name: str
    file: str
    line: int
    request: AccessRequest
    expect: str
    determining: frozenset[str] | None = None
    shadow: str | None = None
    at: datetime | None = None
    # An `http:` test whose request no route maps: the enforcement points deny it.
    unmapped: str | None = None


@dataclass(frozen=True)
class TestResult:
    test: PolicyTest
    decision: Decision
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.test.name,
            "file": self.test.file,
            "line": self.test.line,
            "passed": self.passed,
            "decision": self.decision.effect.value,
            "shadow": self.decision.shadow_effect.value,
            "determining": sorted(r.policy_id for r in self.decision.reasons),
            "failures": list(self.failures),
        }


def parse_test_file(
    path: str, text: str, problems: list[BundleProblem], routes: RouteTable | None = None
) -> list[PolicyTest]:
    """`routes`: the bundle's route table, for tests that state an HTTP request (`http:`)
    instead of a Cedar one; they are mapped here, as an enforcement point would map them."""
    document = read_yaml(path, text, problems)
    if document is None:
        return []
    data = document.data
    if data is None:
        return []
    if not isinstance(data, dict) or not isinstance(data.get("tests"), list):
        problems.append(BundleProblem(path, "expected a mapping with a 'tests' list"))
        return []
    lines = document.item_lines("tests")
    tests: list[PolicyTest] = []
    for index, item in enumerate(data["tests"]):
        line = lines[index] if index < len(lines) else 1
        where = f"tests[{index}]"

        def problem(message: str, line: int = line, where: str = where) -> None:
            problems.append(BundleProblem(path, f"{where}: {message}", line))

        if not isinstance(item, dict):
            problem("each test must be a mapping")
            continue
        unknown = sorted(set(item) - TEST_KEYS)
        if unknown:
            problem(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(TEST_KEYS))})")
            continue
        name = item.get("name")
        if not isinstance(name, str) or not name:
            problem("'name' is required")
            continue
        where = f"test {name!r}"

        def problem(message: str, line: int = line, where: str = where) -> None:
            problems.append(BundleProblem(path, f"{where}: {message}", line))

        expect = item.get("expect")
        if expect not in EFFECTS:
            problem("'expect' must be allow or deny")
            continue
        shadow = item.get("shadow")
        if shadow is not None and shadow not in EFFECTS:
            problem("'shadow' must be allow or deny")
            continue
        determining = item.get("determining")
        if determining is not None and (
            not isinstance(determining, list) or not all(isinstance(d, str) for d in determining)
        ):
            problem("'determining' must be a list of policy ids")
            continue
        at = None
        if item.get("at") is not None:
            at = parse_rfc3339(str(item["at"]))
            if at is None:
                problem("'at' must be an RFC 3339 time with offset")
                continue
        unmapped = None
        try:
            if "http" in item and "request" in item:
                raise RequestError("http", "give either 'request' or 'http', not both")
            if "http" in item:
                request, unmapped = _http_request(item["http"], routes)
            else:
                request = parse_request(item.get("request"), "request")
        except RequestError as exc:
            problem(str(exc))
            continue
        tests.append(
            PolicyTest(
                name=name,
                file=path,
                line=line,
                request=request,
                expect=expect,
                determining=frozenset(determining) if determining is not None else None,
                shadow=shadow,
                at=at,
                unmapped=unmapped,
            )
        )
    return tests


def _http_request(document: Any, routes: RouteTable | None) -> tuple[AccessRequest, str | None]:
    """The Cedar request routes.yaml makes of an HTTP request; for an unmapped one, a
    placeholder request and the reason."""
    if not isinstance(document, dict):
        raise RequestError("http", "expected an object with method, path and principal")
    unknown = sorted(set(document) - HTTP_KEYS)
    if unknown:
        raise RequestError(f"http.{unknown[0]}", "unknown field")
    if routes is None:
        raise RequestError("http", "the bundle has no routes.yaml to map HTTP requests with")
    method, path = document.get("method", "GET"), document.get("path")
    host = document.get("host", "")
    if not isinstance(method, str) or not isinstance(path, str) or not path.startswith("/"):
        raise RequestError("http", "'method' must be text and 'path' must start with '/'")
    if not isinstance(host, str):
        raise RequestError("http.host", "expected a host name")
    principal = parse_entity(document.get("principal"), "http.principal")
    credential = document.get("credential") or {}
    if not isinstance(credential, dict):
        raise RequestError("http.credential", "expected an object")
    facts = HttpFacts(
        method=method.upper(),
        host=host,
        path=path,
        credential={
            "subject": principal.id,
            "mfa": False,
            "auth_age_seconds": 0,
            **credential,
        },
    )
    found = routes.match(facts.method, host, path)
    if found is None:
        placeholder = AccessRequest(principal, EntityRef("Action", facts.method), principal, {})
        return placeholder, f"no route matches {facts.method} {path}"
    return routes.access_request(found, principal, facts), None


def run_test(evaluator: Evaluator, test: PolicyTest) -> TestResult:
    if test.unmapped is not None:  # denied by the enforcement point, before any policy
        denied = refusal(f"no_route_matched: {test.unmapped}", evaluator.revision)
        wrong = () if test.expect == "deny" else (f"expected allow, but {test.unmapped}",)
        return TestResult(test, denied, wrong)
    decision = evaluator.evaluate(test.request, at=test.at)
    failures: list[str] = []
    if decision.effect.value != test.expect:
        failures.append(f"expected {test.expect}, got {decision.effect.value}")
    got = frozenset(r.policy_id for r in decision.reasons)
    if test.determining is not None and got != test.determining:
        failures.append(
            f"expected determining policies {sorted(test.determining)}, got {sorted(got)}"
        )
    if test.shadow is not None and decision.shadow_effect.value != test.shadow:
        failures.append(f"expected shadow {test.shadow}, got {decision.shadow_effect.value}")
    if decision.errors and not failures and test.expect == "allow":
        failures.append(f"evaluation errors: {'; '.join(decision.errors)}")
    return TestResult(test, decision, tuple(failures))


def run_tests(evaluator: Evaluator, tests: list[PolicyTest]) -> list[TestResult]:
    return [run_test(evaluator, t) for t in tests]


def failure_problems(results: list[TestResult]) -> list[BundleProblem]:
    return [
        BundleProblem(
            r.test.file, f"test {r.test.name!r} failed: {'; '.join(r.failures)}", r.test.line
        )
        for r in results
        if not r.passed
    ]


@dataclass(frozen=True)
class Coverage:
    """Which policies the tests reach: a policy is reached when it determines (or errors in)
    the enforced or the shadow answer of at least one test, like `opa test --coverage` for the
    rules a test evaluates. A policy no test reaches is one nobody has checked."""

    reached: tuple[PolicyInfo, ...]
    missed: tuple[PolicyInfo, ...]

    @property
    def total(self) -> int:
        return len(self.reached) + len(self.missed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policies": self.total,
            "reached": len(self.reached),
            "percent": round(100 * len(self.reached) / self.total, 1) if self.total else 100.0,
            "not_reached": [
                {"id": p.policy_id, "file": p.file, "line": p.line} for p in self.missed
            ],
        }


def coverage(policies: list[PolicyInfo], results: list[TestResult]) -> Coverage:
    seen = {
        reason.policy_id
        for result in results
        for reason in (*result.decision.reasons, *result.decision.shadow_reasons)
    }
    reached = tuple(p for p in policies if p.policy_id in seen)
    missed = tuple(p for p in policies if p.policy_id not in seen)
    return Coverage(reached, missed)
