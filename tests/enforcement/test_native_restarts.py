"""The compiled front's supervisor restarts a front that exited, waiting longer after each
failed restart (0.2 s after the exit, then 0.4 s, 0.8 s … at most 5 s), and logs each step."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, cast

import pytest

from trustplane.enforcement.native import NativeFront, NativeFrontError


class _Process:
    def __init__(self, status: int | None) -> None:
        self.status = status
        self.released = asyncio.Event()
        if status is not None:
            self.released.set()

    async def wait(self) -> int | None:
        await self.released.wait()
        return self.status


def test_failed_restarts_wait_longer_each_time_until_one_starts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    async def scenario() -> None:
        front = NativeFront(cast(Any, None), Path("/opt/bin/trustplane-extauthz"), "127.0.0.1", 0)
        front._process = cast(Any, _Process(status=-9))  # the running front was killed
        outcomes: list[BaseException | None] = [
            OSError("exec format error"),
            NativeFrontError("did not start"),
            RuntimeError("unexpected"),
            None,
        ]
        restarted = _Process(status=None)

        async def spawn() -> None:
            outcome = outcomes.pop(0)
            if outcome is not None:
                raise outcome
            front._process = cast(Any, restarted)
            front._stopping = True  # and the restarted front stops: the supervisor returns
            restarted.released.set()

        monkeypatch.setattr(front, "_spawn", spawn)
        await asyncio.wait_for(front._supervise(), 5)

    with caplog.at_level(logging.WARNING, logger="trustplane.envoy"):
        monkeypatch.setattr(asyncio, "sleep", no_wait)
        asyncio.run(scenario())
    assert waits == [0.2, 0.4, 0.8, 1.6]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "trustplane-extauthz exited (status -9): ext_authz calls fail closed until it is back",
        "restarting trustplane-extauthz failed: exec format error",
        "restarting trustplane-extauthz failed: did not start",
        "restarting trustplane-extauthz failed",
        "trustplane-extauthz restarted on 127.0.0.1:0",
    ]
    assert caplog.records[3].exc_info is not None, "an unexpected error keeps its traceback"
