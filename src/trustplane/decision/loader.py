"""The bundle lifecycle up to activation: verify signature → compile → run the bundle's tests.

Nothing here touches the active bundle; a bundle that fails any step raises BundleError with
every problem found, and whoever called keeps serving what they had.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from trustplane.decision.engine import Evaluator
from trustplane.decision.policy_bundle import (
    Bundle,
    BundleError,
    BundleSource,
    ExtraFile,
    compile_bundle,
)
from trustplane.decision.testing import TestResult, failure_problems, run_tests

if TYPE_CHECKING:
    from trustplane.decision.signing import TrustedKey


@dataclass(frozen=True)
class LoadOptions:
    trusted_keys: list[TrustedKey] = field(default_factory=list)
    expiry_warning_days: int = 7
    run_tests: bool = True
    decision_cache_size: int = 0
    decision_ttl_seconds: int = 0
    extra_files: tuple[ExtraFile, ...] = ()  # other planes' bundle files (see ExtraFile)


@dataclass(frozen=True)
class LoadedBundle:
    bundle: Bundle
    evaluator: Evaluator
    test_results: list[TestResult]


def load_bundle(
    source: BundleSource, options: LoadOptions | None = None, *, now: datetime | None = None
) -> LoadedBundle:
    options = options or LoadOptions()
    if options.trusted_keys:
        from trustplane.decision.signing import verify_bundle  # cryptography: only when signed

        problems = verify_bundle(source, options.trusted_keys)
        if problems:
            raise BundleError(problems)
    bundle = compile_bundle(
        source,
        now=now or datetime.now(UTC),
        expiry_warning_days=options.expiry_warning_days,
        extra_files=options.extra_files,
    )
    evaluator = Evaluator(
        bundle,
        cache_size=options.decision_cache_size,
        max_ttl_seconds=options.decision_ttl_seconds,
    )
    results = run_tests(evaluator, bundle.tests) if options.run_tests else []
    evaluator.clear_cache()  # test answers are not traffic: serving starts with an empty cache
    failed = failure_problems(results)
    if failed:
        raise BundleError(failed)
    return LoadedBundle(bundle, evaluator, results)
