"""BatchStore against a real PostgreSQL: what a refused row or dead letter becomes, bounded."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from course_audit.ingest.batch import Batch
from course_audit.ingest.storing import BatchStore
from course_audit.model import DeadLetter, ErrorCode, Event, Source
from course_audit.retry import Backoff
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics
from waits import within

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def incompressible(n: int) -> str:
    """`n` characters PostgreSQL cannot compress (a repeated letter would fit an index row)."""
    return base64.b64encode(os.urandom(n))[:n].decode()


def event(offset: int, *, sis_course_id: str | None = None, at: datetime = T0) -> Event:
    return Event(
        event_id=uuid.uuid4(),
        created_at=at + timedelta(seconds=offset),
        event_type="updated",
        event_source="api",
        course={
            "id": 40 + offset,
            "account_id": 7,
            "root_account_id": 1,
            "sis_course_id": sis_course_id,
        },
        user=None,
        page_view=None,
        sis_batch_id=None,
        event_data={"name": ["A", "B"]},
        source=Source("course-events", 0, offset, b"42", f"raw {offset}".encode()),
    )


@pytest.fixture
async def pool(migrated_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(migrated_db_url, min_size=1, max_size=2)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def store(pool: asyncpg.Pool) -> AsyncIterator[BatchStore]:
    s = BatchStore(pool, Metrics(), Health(), asyncio.Event(), Backoff(first=0.01, cap=0.05))
    try:
        yield s
    finally:
        await s.close()


async def rows(pool: asyncpg.Pool, sql: str) -> list[Any]:
    async with pool.acquire() as conn:
        return list(await conn.fetch(sql))


async def test_index_row_too_large_is_a_dead_letter_and_its_neighbours_are_stored(
    pool: asyncpg.Pool, store: BatchStore
) -> None:
    # A 10 KB sis_course_id passes the batch statement's casts but not the btree index on
    # courses.sis_course_id (SQLSTATE 54000, program_limit_exceeded): a data error of its row.
    good_before, huge, good_after = (
        event(0),
        event(1, sis_course_id=incompressible(10240)),
        event(2),
    )
    batch = Batch(generation=0, events=[good_before, huge, good_after])
    await within(store.store(batch), 20, "the batch with one oversized row to be stored")

    stored = await rows(pool, "SELECT event_id FROM events")
    assert {r["event_id"] for r in stored} == {good_before.event_id, good_after.event_id}
    [dead] = await rows(pool, 'SELECT "offset", error_code, error_message, value FROM dead_letters')
    assert (dead["offset"], dead["error_code"], dead["value"]) == (1, "store_rejected", b"raw 1")
    assert "54000" in dead["error_message"] and "index row" in dead["error_message"]
    assert store.health.writes_failing is False  # readiness not held down
    assert store.metrics.db_errors._value.get() == 0  # never taken for an outage


def poison(offset: int, headers: tuple[tuple[str, bytes], ...], message: str) -> DeadLetter:
    source = Source("course-events", 0, offset, None, b"\x05not avro", headers)
    return DeadLetter(source, ErrorCode.UNKNOWN_MAGIC_BYTE, message, T0)


async def test_dead_letters_with_nul_are_stored_with_their_batch(
    pool: asyncpg.Pool, store: BatchStore
) -> None:
    letters = [
        poison(1, (("tr\x00ace", b"\x00"),), "starts with 0x05"),
        poison(2, (("origin", b"lms"),), "message with a NUL: \x00"),
    ]
    good = [event(0), event(3)]
    await within(store.store(Batch(0, events=good, dead=letters)), 20, "the batch")
    assert len(await rows(pool, "SELECT 1 FROM events")) == 2
    kept = await rows(
        pool, 'SELECT "offset", headers::text AS h, error_message FROM dead_letters ORDER BY 1'
    )
    assert [(r["offset"], r["h"], r["error_message"]) for r in kept] == [
        (1, '[["tr\\\\x00ace", "AA=="]]', "starts with 0x05"),
        (2, '[["origin", "bG1z"]]', "message with a NUL: \\x00"),
    ]
    assert store.metrics.db_errors._value.get() == 0


async def test_a_dead_letter_the_store_refuses_does_not_hold_its_batch(
    pool: asyncpg.Pool, store: BatchStore
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "ALTER TABLE dead_letters ADD CONSTRAINT refuse_headers CHECK (headers = '[]')"
        )
    letters = [poison(1, (("origin", b"lms"),), "starts with 0x05")]
    await within(store.store(Batch(0, events=[event(0)], dead=letters)), 20, "the batch")
    assert len(await rows(pool, "SELECT 1 FROM events")) == 1
    [kept] = await rows(pool, 'SELECT "offset", error_code, value FROM dead_letters')
    assert (kept["offset"], kept["error_code"], kept["value"]) == (
        1,
        "unknown_magic_byte",
        b"\x05not avro",
    )
    assert store.metrics.db_errors._value.get() == 0


async def test_conflicting_event_ids_become_dead_letters_of_the_usual_batch(
    pool: asyncpg.Pool, store: BatchStore
) -> None:
    first = event(0)
    await store.store(Batch(0, events=[first]))
    resent = Event(
        **{f: getattr(first, f) for f in first.__dataclass_fields__}
        | {
            "created_at": T0 + timedelta(days=3),
            "source": Source("course-events", 0, 9, None, b"resent"),
        }
    )
    duplicate = Event(
        **{f: getattr(first, f) for f in first.__dataclass_fields__}
        | {"source": Source("course-events", 0, 10, None, b"same again")}
    )
    await within(
        store.store(Batch(0, events=[resent, event(11), duplicate])), 20, "the second batch"
    )
    assert len(await rows(pool, "SELECT 1 FROM events")) == 2
    [dead] = await rows(pool, 'SELECT "offset", error_code, error_message FROM dead_letters')
    assert (dead["offset"], dead["error_code"]) == (9, "conflicting_event_id")
    assert (
        f"event_id {first.event_id} is already stored with created_at 2026-11-10T12:00:00.000Z"
        in (dead["error_message"])
    )
    assert store.metrics.duplicates._value.get() == 1
    assert store.metrics.dead_lettered.labels("conflicting_event_id")._value.get() == 1


async def test_a_prepared_batch_is_stored_from_its_document(
    pool: asyncpg.Pool, store: BatchStore
) -> None:
    events = [event(0), event(1), event(2)]
    batch = Batch(0, events=events)
    batch.prepare()
    assert batch.document is not None
    # The write sends the prepared document: rows that are not in it are not stored.
    batch.events = [*events, event(3)]
    await within(store.store(batch), 20, "the prepared batch to be stored")
    stored = await rows(pool, "SELECT event_id, course_id FROM events ORDER BY course_id")
    assert [(r["event_id"], r["course_id"]) for r in stored] == [
        (e.event_id, 40 + i) for i, e in enumerate(events)
    ]


async def test_a_batch_whose_document_cannot_be_built_ahead_still_isolates_the_bad_event(
    pool: asyncpg.Pool, store: BatchStore
) -> None:
    good, bad = event(0), event(1)
    bad = Event(
        **{f: getattr(bad, f) for f in bad.__dataclass_fields__}
        | {"event_data": {"n": 2**70}}  # beyond JSON's 64-bit integers: orjson refuses it
    )
    batch = Batch(0, events=[good, bad])
    batch.prepare()
    assert batch.document is None
    await within(store.store(batch), 20, "the batch with an unencodable event to be stored")
    assert [r["event_id"] for r in await rows(pool, "SELECT event_id FROM events")] == [
        good.event_id
    ]
    [dead] = await rows(pool, 'SELECT "offset", error_code FROM dead_letters')
    assert (dead["offset"], dead["error_code"]) == (1, "store_rejected")


def test_a_batch_with_dead_letters_is_not_prepared() -> None:
    letter = DeadLetter(
        Source("course-events", 0, 5, None, b"x"), ErrorCode.EMPTY_VALUE, "empty", T0
    )
    batch = Batch(0, events=[event(0)], dead=[letter])
    batch.prepare()
    assert batch.document is None
