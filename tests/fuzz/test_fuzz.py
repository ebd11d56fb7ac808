"""The bounded fuzz run (issue 13, standing suites): every HTTP operation of the served OpenAPI
document (anonymous, and with a valid admin token where the operation is an admin one), the
Envoy gRPC Check on both transports and the AdmissionReview, against a real server on loopback
per backend; then the server must be healthy and have recorded every decision it counted.

TRUSTPLANE_FUZZ_EXAMPLES sets the cases per endpoint (small by default); bench/fuzz.py runs the
long one and writes its figures to docs/robustness.md. A finding that is one of issue 13's known
defects (tests/fuzz/harness.py KNOWN_DEFECTS) makes its test xfail, naming the defect and the
branch that fixes it; any other finding fails the test with a reproduction.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fuzz import harness
from tests.fuzz.conftest import EXAMPLES
from tests.fuzz.harness import (
    AdmissionFuzzer,
    GrpcFuzzer,
    HttpFuzzer,
    ProxyFuzzer,
    Target,
    Violation,
    check_invariants,
)

pytestmark = [pytest.mark.slow, pytest.mark.fuzz]

OPERATIONS = harness.operations()
ADMIN = [op for op in OPERATIONS if harness.is_admin(op)]


def _id(operation: Any) -> str:
    return f"{operation.method.upper()} {operation.path}"


def settle(violations: list[Violation]) -> None:
    """Fail on a new finding; xfail, naming the defect and its branch, on known ones only."""
    new = harness.unexpected(violations)
    assert not new, "new findings:\n" + harness.describe(new)
    if violations:
        pytest.xfail(harness.known_reasons(violations))


@pytest.fixture(scope="module")
def http(target: Target) -> Any:
    fuzzer = HttpFuzzer(target)
    yield fuzzer
    fuzzer.close()


@pytest.mark.parametrize("operation", OPERATIONS, ids=_id)
def test_operation_without_admin_token(http: HttpFuzzer, operation: Any) -> None:
    """Anonymous (or with whatever token the generator makes up): no 5xx, no allow for an
    invalid request, nothing an admin token guards."""
    tally = http.fuzz(operation, EXAMPLES, admin=False)
    assert tally.cases > 0
    settle(tally.violations)


@pytest.mark.parametrize("operation", ADMIN, ids=_id)
def test_admin_operation_with_admin_token(http: HttpFuzzer, operation: Any) -> None:
    """Authenticated fuzz: the admin token gets past the gate, so the handlers see the cases."""
    tally = http.fuzz(operation, EXAMPLES, admin=True)
    assert tally.cases > 0
    settle(tally.violations)


@pytest.mark.parametrize("strategy", ["raw", "typed"])
@pytest.mark.parametrize("transport", ["native", "python"])
def test_grpc_check(target: Target, python_target: Target, transport: str, strategy: str) -> None:
    """Raw bytes and well-typed hostile CheckRequests: a CheckResponse or INVALID_ARGUMENT,
    never a broken call, never an allow without a credential."""
    chosen = target if transport in target.grpc_ports else python_target
    if transport not in chosen.grpc_ports:
        pytest.skip("the compiled ext_authz front is not built")
    fuzzer = GrpcFuzzer(chosen, transport)
    try:
        tally = (
            fuzzer.fuzz_raw(EXAMPLES * 2) if strategy == "raw" else fuzzer.fuzz_typed(EXAMPLES * 2)
        )
    finally:
        fuzzer.close()
    assert tally.cases > 0
    settle(tally.violations)


@pytest.mark.parametrize("endpoint", ["/v1/forward-auth", "/v1/envoy/http"])
def test_proxy_headers(target: Target, endpoint: str) -> None:
    """Forward-auth and Envoy's HTTP mode as a trusted proxy calls them, with the headers the
    OpenAPI document cannot describe: never a 5xx, never an allow without a credential."""
    fuzzer = ProxyFuzzer(target)
    try:
        tally = fuzzer.fuzz(endpoint, EXAMPLES * 3)
    finally:
        fuzzer.close()
    assert tally.cases > 0
    settle(tally.violations)


def test_admission_random_reviews(target: Target) -> None:
    fuzzer = AdmissionFuzzer(target)
    try:
        tally = fuzzer.fuzz_random(EXAMPLES * 2)
    finally:
        fuzzer.close()
    assert tally.cases > 0
    settle(tally.violations)


def test_admission_never_admits_a_hostile_pod_however_wrapped(target: Target) -> None:
    """A privileged, host-network pod behind a malformed metadata, kind or template is refused
    (or the review is), never allowed."""
    fuzzer = AdmissionFuzzer(target)
    try:
        tally = fuzzer.fuzz_hostile(EXAMPLES * 3)
    finally:
        fuzzer.close()
    assert tally.cases > 0
    settle(tally.violations)


def test_server_healthy_and_every_counted_decision_recorded_afterwards(
    target: Target, python_target: Target
) -> None:
    """Last in the module: after everything above, both servers are live, ready, answer a
    known-good request as before, and /metrics counts exactly the decisions the ledger holds."""
    violations = check_invariants(target)
    if python_target is not target:
        violations += check_invariants(python_target)
    settle(violations)
