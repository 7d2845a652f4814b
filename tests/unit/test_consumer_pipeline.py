"""The ordered write pipeline: one write at a time, in order, and never a commit past a gap."""

from __future__ import annotations

import asyncio

import pytest

from course_audit.ingest.pipeline import WRITE_PIPELINE_DEPTH, Abandoned, WritePipeline
from waits import within


class Recorder:
    """A store and a commit that only record what happens, in order; batches are numbers.

    Nothing here takes time: a store is held until the test releases it, a commit until a
    given entry is in the log, so the order of events is set by the code under test alone.
    """

    def __init__(self) -> None:
        self.log: list[str] = []
        self.held: dict[int, asyncio.Event] = {}  # store n waits for held[n]
        self.commit_after: dict[int, str] = {}  # commit n waits for this log entry
        self.give_up: set[int] = set()
        self._entries: dict[str, asyncio.Event] = {}
        self.pipeline: WritePipeline[int] = WritePipeline(self.store, self.commit)

    def _entry(self, entry: str) -> asyncio.Event:
        return self._entries.setdefault(entry, asyncio.Event())

    def record(self, entry: str) -> None:
        self.log.append(entry)
        self._entry(entry).set()

    async def logged(self, entry: str) -> None:
        """Wait until `entry` is in the log."""
        await within(self._entry(entry).wait(), 5, f"{entry!r} in {self.log}")

    async def store(self, batch: int) -> None:
        self.record(f"store {batch}")
        if batch in self.held:
            await self.held[batch].wait()
        if batch in self.give_up:
            raise Abandoned()
        self.record(f"stored {batch}")

    async def commit(self, batch: int) -> None:
        if batch in self.commit_after:
            await self.logged(self.commit_after[batch])
        self.record(f"commit {batch}")


async def let_the_others_run() -> None:
    """Give every other ready task several turns (loop iterations, not time)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_two_batches_at_most_are_handed_to_the_writer() -> None:
    assert WRITE_PIPELINE_DEPTH == 2


async def test_writes_run_one_at_a_time_and_commit_in_order() -> None:
    r = Recorder()
    r.held = {1: asyncio.Event(), 3: asyncio.Event()}
    # The first commit is the slowest: it is still pending when the next write starts (and
    # never ends if the next write waits for it).
    r.commit_after = {1: "store 2"}
    writes = [r.pipeline.submit(n) for n in (1, 2, 3)]
    await r.logged("store 1")
    await let_the_others_run()
    assert r.log == ["store 1"]  # 2 and 3 wait while 1 is being written
    r.held[1].set()
    await r.logged("store 3")
    await let_the_others_run()
    assert "commit 3" not in r.log  # not before its rows are stored
    r.held[3].set()
    await within(asyncio.gather(*(w.task for w in writes)), 5, "the three writes to end")
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
    r.held = {1: asyncio.Event()}
    r.give_up = {1}
    writes = [r.pipeline.submit(n) for n in (1, 2, 3)]
    await r.logged("store 1")
    await let_the_others_run()
    r.held[1].set()
    results = await within(
        asyncio.gather(*(w.task for w in writes), return_exceptions=True),
        5,
        "the three writes to end",
    )
    assert all(isinstance(result, Abandoned) for result in results)
    assert r.log == ["store 1"]  # 2 and 3 never written, nothing committed
    assert [w.stored.result() for w in writes] == [False, False, False]


async def test_a_cancelled_write_gives_up_the_next_one() -> None:
    r = Recorder()
    r.held = {1: asyncio.Event()}  # never released: the write is cancelled while held
    first, second = (r.pipeline.submit(n) for n in (1, 2))
    await r.logged("store 1")
    first.task.cancel()
    with pytest.raises(Abandoned):
        await within(second.task, 5, "the second write to end")
    assert r.log == ["store 1"]


async def test_waiting_for_room_collects_the_oldest_write_and_idles_meanwhile() -> None:
    r = Recorder()
    r.held = {1: asyncio.Event()}
    idled = asyncio.Event()

    async def idle() -> None:
        idled.set()

    for n in (1, 2):
        r.pipeline.submit(n)
    waiting = asyncio.create_task(r.pipeline.wait_for_room(1, idle, idle_every=0.01))
    await within(idled.wait(), 5, "idle to be called while batch 1 is held")
    assert not waiting.done()
    r.held[1].set()
    await within(waiting, 5, "room for one more batch")
    assert len(r.pipeline) <= 1  # batch 1 committed and collected; batch 2 may still run
    assert "commit 1" in r.log
    await within(r.pipeline.wait_for_room(0, idle), 5, "an empty pipeline")
    assert len(r.pipeline) == 0
    assert r.log[-1] == "commit 2"


async def test_an_abandoned_batch_is_collected_without_raising() -> None:
    r = Recorder()
    r.give_up = {1}
    r.pipeline.submit(1)
    await within(r.pipeline.settle(), 5, "the write to end")
    await r.pipeline.finish_done()
    assert len(r.pipeline) == 0
    assert r.log == ["store 1"]
