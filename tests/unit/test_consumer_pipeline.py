"""The consumer's write pipeline: one write at a time, in order, and never a commit past a gap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from course_audit.config import Settings
from course_audit.ingest.consumer import WRITE_PIPELINE_DEPTH, Abandoned, Batch, Ingestor
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics
from waits import within


class Recorder(Ingestor):
    """An Ingestor whose store and offset commits only record what happens, in order.

    Nothing here takes time: a store is held until the test releases it, a commit until a
    given entry is in the log, so the order of events is set by the code under test alone.
    """

    def __init__(self) -> None:
        unused: Any = None  # the fakes below never reach the pool or the decoder
        super().__init__(Settings(), unused, unused, Metrics(), Health())
        self.log: list[str] = []
        self.held: dict[int, asyncio.Event] = {}  # store n waits for held[n]
        self.commit_after: dict[int, str] = {}  # commit n waits for this log entry
        self.give_up: set[int] = set()
        self._entries: dict[str, asyncio.Event] = {}

    def _entry(self, entry: str) -> asyncio.Event:
        return self._entries.setdefault(entry, asyncio.Event())

    def record(self, entry: str) -> None:
        self.log.append(entry)
        self._entry(entry).set()

    async def logged(self, entry: str) -> None:
        """Wait until `entry` is in the log."""
        await within(self._entry(entry).wait(), 5, f"{entry!r} in {self.log}")

    async def _store(self, batch: Batch) -> None:
        self.record(f"store {batch.size}")
        if batch.size in self.held:
            await self.held[batch.size].wait()
        if batch.size in self.give_up:
            raise Abandoned()
        self.record(f"stored {batch.size}")

    async def _commit(self, batch: Batch) -> None:
        if batch.size in self.commit_after:
            await self.logged(self.commit_after[batch.size])
        self.record(f"commit {batch.size}")


def batch(n: int) -> Batch:
    return Batch(generation=0, size=n)  # size doubles as the batch's name here


async def let_the_others_run() -> None:
    """Give every other ready task several turns (loop iterations, not time)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_two_batches_at_most_are_handed_to_the_writer() -> None:
    assert WRITE_PIPELINE_DEPTH == 2


async def test_writes_run_one_at_a_time_and_commit_in_order() -> None:
    ingestor = Recorder()
    ingestor.held = {1: asyncio.Event(), 3: asyncio.Event()}
    # The first commit is the slowest: it is still pending when the next write starts (and
    # never ends if the next write waits for it).
    ingestor.commit_after = {1: "store 2"}
    for n in (1, 2, 3):
        ingestor._start_write(batch(n))
    await ingestor.logged("store 1")
    await let_the_others_run()
    assert ingestor.log == ["store 1"]  # 2 and 3 wait while 1 is being written
    ingestor.held[1].set()
    await ingestor.logged("store 3")
    await let_the_others_run()
    assert "commit 3" not in ingestor.log  # not before its rows are stored
    ingestor.held[3].set()
    await within(asyncio.gather(*(w.task for w in ingestor._writes)), 5, "the three writes to end")
    at = {entry: i for i, entry in enumerate(ingestor.log)}
    assert len(at) == 9
    for n in (1, 2):
        assert at[f"stored {n}"] < at[f"store {n + 1}"]  # one write at a time, in order
        assert at[f"commit {n}"] < at[f"commit {n + 1}"]  # offsets move forward in order
    for n in (1, 2, 3):
        assert at[f"stored {n}"] < at[f"commit {n}"]  # never before its rows are stored
    assert at["store 2"] < at["commit 1"]  # the next write does not wait for a commit


async def test_a_batch_given_up_takes_the_batches_behind_it_along() -> None:
    ingestor = Recorder()
    ingestor.held = {1: asyncio.Event()}
    ingestor.give_up = {1}
    for n in (1, 2, 3):
        ingestor._start_write(batch(n))
    await ingestor.logged("store 1")
    await let_the_others_run()
    ingestor.held[1].set()
    results = await within(
        asyncio.gather(*(w.task for w in ingestor._writes), return_exceptions=True),
        5,
        "the three writes to end",
    )
    assert all(isinstance(r, Abandoned) for r in results)
    assert ingestor.log == ["store 1"]  # 2 and 3 never written, nothing committed
    assert [w.stored.result() for w in ingestor._writes] == [False, False, False]


async def test_a_cancelled_write_gives_up_the_next_one() -> None:
    ingestor = Recorder()
    ingestor.held = {1: asyncio.Event()}  # never set: the first write hangs until cancelled
    for n in (1, 2):
        ingestor._start_write(batch(n))
    await ingestor.logged("store 1")
    ingestor._writes[0].task.cancel()
    with pytest.raises(Abandoned):
        await within(ingestor._writes[1].task, 5, "the second write to be given up")
    assert ingestor.log == ["store 1"]
