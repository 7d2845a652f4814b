"""Waiting in tests: poll for the very thing awaited, with a deadline, and name it on failure.

Each test also has a time budget (set by the `pytest_runtest_setup` hook in conftest.py) that
ends `TEARDOWN_RESERVE_S` before pytest-timeout would stop the test. Every wait is cut short to
what is left of that budget, so the deadlines of one test's waits (its fixtures' included)
never add up past the per-test timeout: a test that runs out of time fails with the name of
what it was waiting for, and its teardown still has time to stop what it started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: Time kept out of each test's budget for its teardown (stopping processes, dropping data).
TEARDOWN_RESERVE_S = 30.0

_budget_end: float | None = None


def start_budget(timeout_s: float | None) -> None:
    """Begin a test's budget (called as its setup starts); None or 0: no per-test timeout."""
    global _budget_end
    _budget_end = None if not timeout_s else time.monotonic() + timeout_s - TEARDOWN_RESERVE_S


class Deadline:
    """The end of one wait: `seconds` from now, or the end of the test's budget if sooner."""

    def __init__(self, seconds: float, what: str) -> None:
        self.what = what
        self.asked = seconds
        end = time.monotonic() + seconds
        self.cut = _budget_end is not None and _budget_end < end
        self.end = min(end, _budget_end) if _budget_end is not None else end

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def passed(self) -> bool:
        return time.monotonic() >= self.end

    def failure(self, detail: str = "") -> AssertionError:
        why = (
            f"within the {self.asked:.0f}s allowed"
            if not self.cut
            else "before the test's time budget ran out"
        )
        text = f"timed out waiting for {self.what} ({why})"
        return AssertionError(f"{text}; {detail}" if detail else text)


async def eventually(
    probe: Callable[[], Awaitable[Any]],
    check: Callable[[Any], bool],
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> Any:
    """Poll `probe` until `check` accepts its value; fail naming `what` and the last value."""
    deadline = Deadline(timeout, what)
    while True:
        value = await probe()
        if check(value):
            return value
        if deadline.passed():
            raise deadline.failure(f"last value: {value!r}")
        await asyncio.sleep(min(interval, deadline.left()))


async def within(awaitable: Awaitable[Any], timeout: float, what: str) -> Any:
    """Await something that ends by itself (a subprocess, a read), but not past a deadline."""
    deadline = Deadline(timeout, what)
    try:
        async with asyncio.timeout(deadline.left()):
            return await awaitable
    except TimeoutError:
        raise deadline.failure() from None


def seconds_left(timeout: float) -> float:
    """`timeout`, or less if the test's budget ends sooner (for blocking calls' timeouts)."""
    if _budget_end is None:
        return timeout
    return max(0.0, min(timeout, _budget_end - time.monotonic()))
