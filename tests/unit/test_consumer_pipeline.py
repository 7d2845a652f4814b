"""The consumer's write pipeline: one write at a time, in order, and never a commit past a gap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from course_audit.config import Settings
from course_audit.ingest.consumer import WRITE_PIPELINE_DEPTH, Abandoned, Batch, Ingestor
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics


class Recorder(Ingestor):
    """An Ingestor whose store and offset commits only record what happens, in order."""

    def __init__(self) -> None:
        unused: Any = None  # the fakes below never reach the pool or the decoder
        super().__init__(Settings(), unused, unused, Metrics(), Health())
        self.log: list[str] = []
        self.delays: dict[int, float] = {}
        self.give_up: set[int] = set()
        self.first_store_started = asyncio.Event()

    async def _store(self, batch: Batch) -> None:
        self.log.append(f"store {batch.size}")
        self.first_store_started.set()
        await asyncio.sleep(self.delays.get(batch.size, 0))
        if batch.size in self.give_up:
            raise Abandoned()
        self.log.append(f"stored {batch.size}")

    async def _commit(self, batch: Batch) -> None:
        await asyncio.sleep(0.01 if batch.size == 1 else 0)  # the first commit is the slowest
        self.log.append(f"commit {batch.size}")


def batch(n: int) -> Batch:
    return Batch(generation=0, size=n)  # size doubles as the batch's name here


def test_two_batches_at_most_are_handed_to_the_writer() -> None:
    assert WRITE_PIPELINE_DEPTH == 2


async def test_writes_run_one_at_a_time_and_commit_in_order() -> None:
    ingestor = Recorder()
    ingestor.delays = {1: 0.05, 2: 0.0, 3: 0.02}
    for n in (1, 2, 3):
        ingestor._start_write(batch(n))
    await asyncio.gather(*(w.task for w in ingestor._writes))
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
    ingestor.delays = {1: 0.02}
    ingestor.give_up = {1}
    for n in (1, 2, 3):
        ingestor._start_write(batch(n))
    results = await asyncio.gather(*(w.task for w in ingestor._writes), return_exceptions=True)
    assert all(isinstance(r, Abandoned) for r in results)
    assert ingestor.log == ["store 1"]  # 2 and 3 never written, nothing committed
    assert [w.stored.result() for w in ingestor._writes] == [False, False, False]


async def test_a_cancelled_write_gives_up_the_next_one() -> None:
    ingestor = Recorder()
    ingestor.delays = {1: 10}
    for n in (1, 2):
        ingestor._start_write(batch(n))
    await asyncio.wait_for(ingestor.first_store_started.wait(), 5)
    ingestor._writes[0].task.cancel()
    with pytest.raises(Abandoned):
        await ingestor._writes[1].task
    assert ingestor.log == ["store 1"]
