"""Retrying after a failure with exponential backoff: the one way every loop here waits.

tenacity does the retrying. This module fixes how trustplane uses it, so that the SDK's calls,
the ledger writer, the change feed and the ext_authz front's supervisor read alike:

- `Backoff`: `first` seconds after the first failure, doubled after each further one, never
  more than `cap`. Also the schedule of work retried across processes through the store (the
  governance outbox keeps a row's next attempt there).
- `Retry`: what is retried (exception types, and answers that count as failures), how many
  attempts, what a failure does (`on_failure`: the caller's logging and metrics), and how to
  wait (`sleep`: a stop event's or a condition's wait, so that a stop cuts the wait short).
  The last attempt's answer is returned or its exception raised as they are, never wrapped.
- The first attempt runs without tenacity: its bookkeeping costs about 40 µs a call (measured
  on the SDK's path, where nearly every call succeeds at once); tenacity takes over from the
  first failure, counting it as its first attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import tenacity

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays: `first` seconds after one failure, doubled after each further
    failure, at most `cap`."""

    first: float
    cap: float

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures (0 or 1: `first`)."""
        return float(min(self.cap, self.first * 2.0 ** max(0, failures - 1)))


class _GaveUp(Exception):
    """Internal: `call_until`'s `give_up` said stop."""


@dataclass(frozen=True, slots=True)
class _First(Generic[T]):
    """The first attempt's outcome, replayed to tenacity as its attempt 1; later attempts call
    `fn` again."""

    fn: Callable[[], Any]
    result: Any = None
    error: BaseException | None = None


class Retry:
    """A retry policy; build it once (it is safe to share between threads and tasks).

    `retry_on`: the exception types retried (others propagate at once). `retry_result`: an
    answer that counts as a failure (it is returned as it is once attempts run out).
    `attempts`: how many calls in all (None: until done). `on_failure(exc, failures)`: called
    after each failed attempt that raised, before any wait. `sleep`: how to wait (default
    `time.sleep`, or `asyncio.sleep` for `acall`).
    """

    def __init__(
        self,
        backoff: Backoff,
        *,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
        retry_result: Callable[[Any], bool] | None = None,
        attempts: int | None = None,
        on_failure: Callable[[BaseException, int], None] | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if attempts is not None and attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.backoff = backoff
        self.attempts = attempts
        self._retry_on = retry_on
        self._retry_result = retry_result
        self._on_failure = on_failure
        self._sleep = sleep

    # -- the three ways to call -----------------------------------------------------------

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()`, again after each retried failure, until it succeeds or attempts run out."""
        first = self._first(fn)
        if isinstance(first, _First):
            return self._retrying(None)(self._replay(first))  # type: ignore[no-any-return]
        return first

    def call_until(self, fn: Callable[[], T], give_up: Callable[[], bool]) -> T | None:
        """`call`, but after each failure `give_up()` may end it: then None is returned."""
        first = self._first(fn)
        if not isinstance(first, _First):
            return first
        try:
            return self._retrying(give_up)(self._replay(first))  # type: ignore[no-any-return]
        except _GaveUp:
            return None

    async def acall(self, fn: Callable[[], Awaitable[T]]) -> T:
        """`call` for asyncio: `fn()` is awaited, waits are `asyncio.sleep` by default."""
        try:
            result = await fn()
        except self._retry_on as exc:
            first: _First[T] = _First(fn, error=exc)
        else:
            if self._retry_result is None or not self._retry_result(result):
                return result
            first = _First(fn, result=result)
        replay = self._areplay(first)
        sleep: Any = self._sleep or asyncio.sleep
        return await tenacity.AsyncRetrying(sleep=sleep, **self._options(None))(replay)

    # -- tenacity -------------------------------------------------------------------------

    def _first(self, fn: Callable[[], T]) -> T | _First[T]:
        try:
            result = fn()
        except self._retry_on as exc:
            return _First(fn, error=exc)
        if self._retry_result is not None and self._retry_result(result):
            return _First(fn, result=result)
        return result

    @staticmethod
    def _replay(first: _First[T]) -> Callable[[], T]:
        pending = [first]

        def attempt() -> T:
            if pending:
                done = pending.pop()
                if done.error is not None:
                    raise done.error
                return done.result  # type: ignore[no-any-return]
            return first.fn()  # type: ignore[no-any-return]

        return attempt

    @staticmethod
    def _areplay(first: _First[T]) -> Callable[[], Awaitable[T]]:
        pending = [first]

        async def attempt() -> T:
            if pending:
                done = pending.pop()
                if done.error is not None:
                    raise done.error
                return done.result  # type: ignore[no-any-return]
            return await first.fn()  # type: ignore[no-any-return]

        return attempt

    def _retrying(self, give_up: Callable[[], bool] | None) -> tenacity.Retrying:
        sleep: Any = self._sleep or time.sleep
        return tenacity.Retrying(sleep=sleep, **self._options(give_up))

    def _options(self, give_up: Callable[[], bool] | None) -> dict[str, Any]:
        retry: Any = tenacity.retry_if_exception_type(self._retry_on)
        if self._retry_result is not None:
            retry = retry | tenacity.retry_if_result(self._retry_result)
        attempts = self.attempts

        def stop(state: tenacity.RetryCallState) -> bool:
            out_of_attempts = attempts is not None and state.attempt_number >= attempts
            return out_of_attempts or (give_up is not None and give_up())

        def after(state: tenacity.RetryCallState) -> None:
            if self._on_failure is not None and state.outcome is not None:
                error = state.outcome.exception()
                if error is not None:
                    self._on_failure(error, state.attempt_number)

        def last(state: tenacity.RetryCallState) -> Any:
            assert state.outcome is not None
            if attempts is not None and state.attempt_number >= attempts:
                return state.outcome.result()  # the last answer, or its exception raised
            raise _GaveUp

        return {
            "stop": stop,
            "wait": lambda state: self.backoff.delay(state.attempt_number),
            "retry": retry,
            "after": after,
            "retry_error_callback": last,
        }
