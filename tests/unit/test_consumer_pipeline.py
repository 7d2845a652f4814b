"""The ordered write pipeline: one write at a time, in order, and never a commit past a gap."""

from __future__ import annotations

import asyncio

import pytest

from course_audit.ingest.pipeline import WRITE_PIPELINE_DEPTH, Abandoned, WritePipeline


class Recorder:
    """A store and a commit that only record what happens, in order; batches are numbers."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.delays: dict[int, float] = {}
        self.give_up: set[int] = set()
        self.first_store_started = asyncio.Event()
        self.pipeline: WritePipeline[int] = WritePipeline(self.store, self.commit)

    async def store(self, batch: int) -> None:
        self.log.append(f"store {batch}")
        self.first_store_started.set()
        await asyncio.sleep(self.delays.get(batch, 0))
        if batch in self.give_up:
            raise Abandoned()
        self.log.append(f"stored {batch}")

    async def commit(self, batch: int) -> None:
        await asyncio.sleep(0.01 if batch == 1 else 0)  # the first commit is the slowest
        self.log.append(f"commit {batch}")


def test_two_batches_at_most_are_handed_to_the_writer() -> None:
    assert WRITE_PIPELINE_DEPTH == 2


async def test_writes_run_one_at_a_time_and_commit_in_order() -> None:
    r = Recorder()
    r.delays = {1: 0.05, 2: 0.0, 3: 0.02}
    writes = [r.pipeline.submit(n) for n in (1, 2, 3)]
    await asyncio.gather(*(w.task for w in writes))
    at = {entry: i for i, entry in enumerate(r.log)}
    assert len(at) == 9
    for n in (1, 2):
        assert at[f"stored {n}"] < at[f"store {n + 1}"]  # one write at a time, in order
        assert at[f"commit {n}"] < at[f"commit {n + 1}"]  # offsets move forward in order
    for n in (1, 2, 3):
        assert at[f"stored {n}"] < at[f"commit {n}"]  # never before its rows are stored
    assert at["store 2"] < at["commit 1"]  # the next write does not wait for a commit


async def test_a_batch_given_up_takes_the_batches_behind_it_along() -> None:
    r = Recorder()
    r.delays = {1: 0.02}
    r.give_up = {1}
    writes = [r.pipeline.submit(n) for n in (1, 2, 3)]
    results = await asyncio.gather(*(w.task for w in writes), return_exceptions=True)
    assert all(isinstance(result, Abandoned) for result in results)
    assert r.log == ["store 1"]  # 2 and 3 never written, nothing committed
    assert [w.stored.result() for w in writes] == [False, False, False]


async def test_a_cancelled_write_gives_up_the_next_one() -> None:
    r = Recorder()
    r.delays = {1: 10}
    first, second = (r.pipeline.submit(n) for n in (1, 2))
    await asyncio.wait_for(r.first_store_started.wait(), 5)
    first.task.cancel()
    with pytest.raises(Abandoned):
        await second.task
    assert r.log == ["store 1"]


async def test_waiting_for_room_finishes_the_oldest_writes_and_idles_meanwhile() -> None:
    r = Recorder()
    r.delays = {1: 0.3}
    idled = 0

    async def idle() -> None:
        nonlocal idled
        idled += 1

    for n in (1, 2):
        r.pipeline.submit(n)
    await r.pipeline.wait_for_room(1, idle, idle_every=0.05)
    assert len(r.pipeline) == 1  # batch 1 committed and collected; batch 2 may still run
    assert "commit 1" in r.log
    assert idled >= 1  # called while batch 1 was being stored
    await r.pipeline.wait_for_room(0, idle, idle_every=0.05)
    assert len(r.pipeline) == 0
    assert r.log[-1] == "commit 2"


async def test_an_abandoned_batch_is_collected_without_raising() -> None:
    r = Recorder()
    r.give_up = {1}
    r.pipeline.submit(1)
    await r.pipeline.settle()
    await r.pipeline.finish_done()
    assert len(r.pipeline) == 0
    assert r.log == ["store 1"]
