"""The batch statement's notification (docs/design.md#live-tail) against a real PostgreSQL:
sent on commit only, naming the batch's courses, accounts and seq range, never the rows, and
shortened to "all" when the ids would not fit a notification."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from course_audit.model import Event, Source
from course_audit.store.partitions import PartitionCache
from course_audit.store.tail import parse_announcement
from course_audit.store.writer import EVENTS_CHANNEL, write_batch
from waits import within

T0 = datetime(2026, 11, 10, 12, 0, 30, 250000, tzinfo=UTC)


def event(course_id: int, account_id: int, at: datetime = T0) -> Event:
    return Event(
        event_id=uuid.uuid4(),
        created_at=at,
        event_type="updated",
        event_source="api",
        course={"id": course_id, "account_id": account_id, "root_account_id": 1},
        user=None,
        page_view=None,
        sis_batch_id=None,
        event_data={"name": ["A", "B"]},
        related_course=None,
        source=Source("course-events", 0, 0, b"1", b"raw"),
    )


@pytest.fixture
async def heard(migrated_db_url: str) -> AsyncIterator[asyncio.Queue[str]]:
    """Payloads of the notifications a listening connection receives."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(migrated_db_url)
    await listener.add_listener(EVENTS_CHANNEL, lambda *args: queue.put_nowait(str(args[3])))
    try:
        yield queue
    finally:
        await listener.close()


async def test_a_batch_names_its_courses_accounts_and_seqs(
    conn: asyncpg.Connection[Any], heard: asyncio.Queue[str]
) -> None:
    batch = [event(11, 7), event(12, 7), event(11, 8)]
    result = await write_batch(conn, batch, cache=PartitionCache())
    assert result.inserted == 3
    payload = await within(heard.get(), 10, "the batch's notification")
    seqs = [r["seq"] for r in await conn.fetch("SELECT seq FROM events ORDER BY seq")]
    doc = orjson.loads(payload)
    assert doc == {"from": 1794312030, "lo": seqs[0], "hi": seqs[-1], "c": [11, 12], "a": [7, 8]}
    note = parse_announcement(payload)
    assert note is not None and note.since == datetime(2026, 11, 10, 12, 0, 30, tzinfo=UTC)
    # A redelivery stores nothing and announces nothing.
    await write_batch(conn, batch, cache=PartitionCache())
    later = [event(13, 9)]
    await write_batch(conn, later, cache=PartitionCache())
    assert orjson.loads(await within(heard.get(), 10, "the next notification"))["c"] == [13]


async def test_nothing_is_announced_before_the_commit_nor_after_a_rollback(
    conn: asyncpg.Connection[Any], heard: asyncio.Queue[str]
) -> None:
    cache = PartitionCache()
    await write_batch(conn, [event(20, 7)], cache=cache)
    await within(heard.get(), 10, "the first notification")
    transaction = conn.transaction()
    await transaction.start()
    await write_batch(conn, [event(21, 7)], cache=cache)
    await transaction.rollback()
    await write_batch(conn, [event(22, 7)], cache=cache)
    # The rolled-back batch's notification never came: the next one is the committed batch's.
    assert orjson.loads(await within(heard.get(), 10, "the third batch's notification"))["c"] == [
        22
    ]
    assert heard.empty()


async def test_too_many_ids_for_a_notification_become_all(
    conn: asyncpg.Connection[Any], heard: asyncio.Queue[str]
) -> None:
    big = 10**17
    batch = [event(big + i, big + i) for i in range(2000)]
    assert (await write_batch(conn, batch, cache=PartitionCache())).inserted == 2000
    payload = await within(heard.get(), 10, "the big batch's notification")
    doc = orjson.loads(payload)
    assert doc["all"] is True and "c" not in doc and doc["hi"] - doc["lo"] == 1999
    note = parse_announcement(payload)
    assert note is not None and note.courses is None and note.accounts is None
