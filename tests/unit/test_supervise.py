"""The consumer supervisor: a failing consumer is replaced, never ends the process."""

from __future__ import annotations

import asyncio
from typing import Any

from course_audit.retry import Backoff
from course_audit.runtime.health import Health
from course_audit.runtime.runner import supervise_consumer
from waits import eventually, within


class FakeIngestor:
    """Fails at once (`error`), or runs until stopped after joining its group."""

    def __init__(self, health: Health, error: Exception | None) -> None:
        self.health = health
        self.error = error
        self.joined = False
        self.stopped = asyncio.Event()
        self.running = asyncio.Event()

    async def run(self) -> None:
        if self.error is not None:
            raise self.error
        self.joined = True
        self.health.subscribed = True
        self.health.consumer_error = None
        self.running.set()
        await self.stopped.wait()

    def stop(self) -> None:
        self.stopped.set()


async def test_a_failed_consumer_is_replaced_and_readiness_says_why() -> None:
    health = Health(subscribed=False)
    stopping = asyncio.Event()
    errors: list[Exception | None] = [ConnectionError("no broker"), OSError("still none"), None]
    made: list[FakeIngestor] = []

    def make() -> Any:
        made.append(FakeIngestor(health, errors[len(made)]))
        return made[-1]

    task = asyncio.create_task(
        supervise_consumer(make, health, stopping, Backoff(first=0.001, cap=0.001))
    )
    await eventually(lambda: current(made), lambda m: m is not None and m.joined, 5, "a third run")
    assert len(made) == 3
    assert health.subscribed is True and health.consumer_error is None
    stopping.set()
    await within(task, 5, "the supervisor to return")
    assert made[-1].stopped.is_set()  # the running consumer was stopped, not abandoned


async def test_readiness_names_the_error_while_waiting_and_stop_ends_the_wait() -> None:
    health = Health(subscribed=False)
    stopping = asyncio.Event()

    def make() -> Any:
        return FakeIngestor(health, ConnectionError("Unable to bootstrap from 127.0.0.1:9"))

    task = asyncio.create_task(
        supervise_consumer(make, health, stopping, Backoff(first=3600, cap=3600))
    )
    await eventually(lambda: now(health.consumer_error), bool, 5, "the error in health")
    assert health.consumer_error == "ConnectionError: Unable to bootstrap from 127.0.0.1:9"
    assert health.subscribed is False and not health.ready
    stopping.set()  # during an hour's backoff
    await within(task, 5, "the supervisor to return")


async def current(made: list[FakeIngestor]) -> FakeIngestor | None:
    """The third consumer, once made."""
    return made[2] if len(made) >= 3 else None


async def now(value: Any) -> Any:
    return value
