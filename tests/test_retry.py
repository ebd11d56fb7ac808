"""The one retry helper (`trustplane/retry.py`): what is retried, how long each wait is, what
the caller gets once attempts run out, and when a loop gives up."""

from __future__ import annotations

import asyncio

import pytest

from trustplane.retry import Backoff, Retry


class Flaky:
    """Raises or answers from a script, one entry per call."""

    def __init__(self, *script: object) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def test_backoff_doubles_from_first_up_to_the_cap() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    outbox = Backoff(first=1.0, cap=300.0)
    assert [outbox.delay(n) for n in (0, 1, 2, 4, 50)] == [1.0, 1.0, 2.0, 8.0, 300.0]


def test_a_first_success_is_returned_without_waiting() -> None:
    waits: list[float] = []
    flaky = Flaky("answer")
    assert Retry(Backoff(0.1, 0.5), retry_on=OSError, sleep=waits.append).call(flaky) == "answer"
    assert (flaky.calls, waits) == (1, [])


def test_retried_failures_wait_longer_each_time_and_the_last_error_is_raised() -> None:
    waits: list[float] = []
    failures: list[tuple[str, int]] = []
    retry = Retry(
        Backoff(0.1, 0.5),
        retry_on=OSError,
        attempts=5,
        on_failure=lambda exc, n: failures.append((str(exc), n)),
        sleep=waits.append,
    )
    flaky = Flaky(*(OSError(f"down {n}") for n in range(1, 6)))
    with pytest.raises(OSError, match="down 5"):
        retry.call(flaky)
    assert flaky.calls == 5
    assert waits == [0.1, 0.2, 0.4, 0.5], "no wait after the last attempt"
    assert failures == [(f"down {n}", n) for n in range(1, 6)]


def test_an_answer_that_counts_as_a_failure_is_retried_then_returned_as_it_is() -> None:
    waits: list[float] = []
    retry = Retry(
        Backoff(0.1, 0.5), retry_result=lambda status: status == 503, attempts=3, sleep=waits.append
    )
    assert retry.call(Flaky(503, 200)) == 200
    assert retry.call(Flaky(503, 503, 503)) == 503, "out of attempts: the last answer"
    assert waits == [0.1, 0.1, 0.2]


def test_an_exception_not_named_is_never_retried() -> None:
    waits: list[float] = []
    flaky = Flaky(ValueError("bad input"), "unreached")
    with pytest.raises(ValueError, match="bad input"):
        Retry(Backoff(0.1, 0.5), retry_on=OSError, attempts=3, sleep=waits.append).call(flaky)
    assert (flaky.calls, waits) == (1, [])


def test_a_loop_retries_until_done_or_until_it_gives_up() -> None:
    waits: list[float] = []
    retry = Retry(Backoff(0.05, 2.0), retry_on=Exception, sleep=waits.append)
    flaky = Flaky(*[RuntimeError("store down")] * 8, "done")
    assert retry.call_until(flaky, give_up=lambda: False) == "done"
    assert waits == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    stopping = Flaky(RuntimeError("store down"), RuntimeError("still down"), "unreached")
    asked = iter([False, True])
    assert retry.call_until(stopping, give_up=lambda: next(asked)) is None
    assert stopping.calls == 2, "gave up after the second failure, without waiting again"


def test_acall_retries_coroutines_with_the_same_rules() -> None:
    waits: list[float] = []

    async def pause(seconds: float) -> None:
        waits.append(seconds)

    script = Flaky(ConnectionError("refused"), 503, 200)

    async def send() -> object:
        return script()

    retry = Retry(
        Backoff(0.1, 0.5),
        retry_on=ConnectionError,
        retry_result=lambda status: status == 503,
        attempts=3,
        sleep=pause,
    )
    assert asyncio.run(retry.acall(send)) == 200
    assert (script.calls, waits) == (3, [0.1, 0.2])
