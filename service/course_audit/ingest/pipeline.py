"""The ordered write pipeline: batches stored one at a time, offsets committed in order.

Up to `depth` batches are in hand: the one being stored and the next, so the database starts
on it as soon as the previous one is stored while the consumer decodes the one after. A batch
is committed only after its rows are stored and the previous batch's commit is done; a batch
whose predecessor was given up is given up too, so committed offsets never skip a batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

B = TypeVar("B")

#: Batches handed over and not yet committed: one being stored and the next. With one, the
#: consumer waited for the store about 15% of the time (docs/performance.md#write-pipeline-depth).
WRITE_PIPELINE_DEPTH = 2


class Abandoned(Exception):
    """The batch was given up (partitions revoked, or shutdown during an outage)."""


@dataclass(frozen=True, slots=True)
class Write:
    """A batch handed to the pipeline: its task, and whether its rows reached the store."""

    task: asyncio.Task[None]
    #: True once the batch's rows are stored, False if it was given up without.
    stored: asyncio.Future[bool]


class WritePipeline(Generic[B]):
    """Runs `store` then `commit` for each submitted batch, in submission order.

    `store(batch)` may raise `Abandoned` (or be cancelled) to give a batch up; `commit(batch)`
    must not raise. Neither is retried here: that is the collaborators' business.
    """

    def __init__(
        self, store: Callable[[B], Awaitable[None]], commit: Callable[[B], Awaitable[None]]
    ) -> None:
        self._store = store
        self._commit = commit
        self._writes: list[Write] = []  # oldest first

    def __len__(self) -> int:
        return len(self._writes)

    def submit(self, batch: B) -> Write:
        """Start storing `batch` after the batches already submitted; its write comes back."""
        previous = self._writes[-1] if self._writes else None
        stored: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        write = Write(asyncio.create_task(self._run(batch, previous, stored)), stored)
        self._writes.append(write)
        return write

    async def wait_for_room(
        self, room: int, idle: Callable[[], Awaitable[None]], idle_every: float = 0.5
    ) -> None:
        """Wait until at most `room` writes are in hand, calling `idle` every `idle_every` s."""
        while len(self._writes) > room:
            task = self._writes[0].task
            while not task.done():
                await asyncio.wait({task}, timeout=idle_every)
                if not task.done():
                    await idle()
            await self._finish_oldest()

    async def finish_done(self) -> None:
        """Collect the writes at the head that have finished (nothing waits)."""
        while self._writes and self._writes[0].task.done():
            await self._finish_oldest()

    async def settle(self) -> None:
        """Wait for every write in hand to finish or be given up."""
        if self._writes:
            await asyncio.gather(*(w.task for w in self._writes), return_exceptions=True)

    async def _finish_oldest(self) -> None:
        task = self._writes.pop(0).task
        try:
            await task
        except Abandoned:
            log.warning("batch abandoned; its messages will be read again")

    async def _run(self, batch: B, previous: Write | None, stored: asyncio.Future[bool]) -> None:
        try:
            if previous is not None and not await asyncio.shield(previous.stored):
                raise Abandoned()
            await self._store(batch)
        except BaseException:
            if not stored.done():
                stored.set_result(False)
            raise
        stored.set_result(True)
        if previous is not None:
            # The predecessor's rows are stored, so it can only be committing (which does not
            # raise): wait for it so that offsets move forward in order.
            await asyncio.wait({previous.task})
        await self._commit(batch)
