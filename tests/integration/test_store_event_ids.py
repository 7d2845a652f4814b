"""An event_id is stored at most once, whatever its created_at (a real PostgreSQL).

`events` is partitioned by month on created_at, so its own key is (event_id, created_at);
the `event_ids` table (migration 0002) makes the id alone unique.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from course_audit.model import Event, Source
from course_audit.retention import add_months, month_of
from course_audit.store.migrate import load_migrations, migrate
from course_audit.store.partitions import (
    PartitionCache,
    drop_expired,
    ensure_partition_for,
    partition_name,
)
from course_audit.store.writer import Conflict, write_batch, write_isolating
from waits import eventually, within

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def make_event(
    created_at: datetime = T0,
    *,
    event_id: uuid.UUID | None = None,
    name: str = "B",
    course_name: str = "Course 42",
    offset: int = 0,
) -> Event:
    return Event(
        event_id=event_id or uuid.uuid4(),
        created_at=created_at,
        event_type="updated",
        event_source="api",
        course={"id": 42, "account_id": 7, "root_account_id": 1, "name": course_name},
        user={"id": 9, "name": "Ann"},
        page_view=None,
        sis_batch_id=None,
        event_data={"name": ["A", name]},
        source=Source("course-events", 0, offset, b"42", f"raw {offset}".encode()),
    )


def again(event: Event, **changes: Any) -> Event:
    """The same event id, re-sent (another Kafka position unless given)."""
    offset = changes.pop("offset", (event.source.offset if event.source else 0) + 1000)
    if "course_name" in changes:
        changes["course"] = event.course | {"name": changes.pop("course_name")}
    return dataclasses.replace(
        event, source=Source("course-events", 1, offset, b"42", b"again"), **changes
    )


@pytest.fixture
def cache() -> PartitionCache:
    return PartitionCache()


async def stored(conn: asyncpg.Connection[Any]) -> list[tuple[uuid.UUID, datetime]]:
    rows = await conn.fetch("SELECT event_id, created_at FROM events ORDER BY seq")
    return [(r["event_id"], r["created_at"]) for r in rows]


async def test_an_id_resent_with_another_created_at_is_a_conflict_naming_the_stored_one(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    first = make_event(T0)
    assert (await write_batch(conn, [first], cache=cache)).inserted == 1
    # A month later: another partition, so the events key alone would not have caught it.
    later = again(first, created_at=T0 + timedelta(days=31), course_name="Renamed")
    other = make_event(T0 + timedelta(seconds=1))
    result = await write_batch(conn, [later, other], cache=cache)

    assert (result.inserted, result.duplicates) == (1, 0)
    assert result.conflicts == [Conflict(later, T0)]
    assert result.conflicts[0].message() == (
        f"event_id {first.event_id} is already stored with created_at 2026-11-10T12:00:00.000Z;"
        " this message has created_at 2026-12-11T12:00:00.000Z. An event_id is stored once."
    )
    assert await stored(conn) == [(first.event_id, T0), (other.event_id, other.created_at)]
    # Nothing of the conflicting event was stored, its course snapshot included.
    assert await conn.fetchval("SELECT data->>'name' FROM courses WHERE id = 42") == "Course 42"


async def test_same_id_and_time_with_other_content_is_a_conflict(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    first = make_event(T0)
    await write_batch(conn, [first], cache=cache)
    changed = again(first, event_data={"name": ["A", "C"]})
    result = await write_batch(conn, [changed], cache=cache)
    assert (result.inserted, result.duplicates) == (0, 0)
    assert result.conflicts == [Conflict(changed, T0)]
    assert "already stored with created_at 2026-11-10T12:00:00.000Z and other content" in (
        result.conflicts[0].message()
    )
    assert json.loads(await conn.fetchval("SELECT event_data FROM events")) == {"name": ["A", "B"]}


@pytest.mark.parametrize(
    "change",
    [
        {"event_type": "published"},
        {"event_source": "sis"},
        {"course": {"id": 43, "account_id": 7, "root_account_id": 1}},
        {"course": {"id": 42, "account_id": 8, "root_account_id": 1}},
        {"user": None},
        {"user": {"id": 10}},
        {"page_view": {"id": "pv-1"}},
        {"sis_batch_id": 5},
        {"related_course": {"id": 50, "account_id": 7, "root_account_id": 1}},
    ],
    ids=lambda c: next(iter(c)),
)
async def test_every_stored_column_counts_as_content(
    conn: asyncpg.Connection[Any], cache: PartitionCache, change: dict[str, Any]
) -> None:
    first = make_event(T0)
    await write_batch(conn, [first], cache=cache)
    result = await write_batch(conn, [again(first, **change)], cache=cache)
    assert len(result.conflicts) == 1 and result.inserted == 0


async def test_same_id_time_and_content_from_another_position_is_a_duplicate(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    first = make_event(T0)
    await write_batch(conn, [first], cache=cache)
    # A producer's retry: other Kafka position and bytes, same event. Snapshot details are
    # not the event's content (the course's name here): they do not make it a conflict.
    resent = again(first, course_name="Course 42 (renamed)")
    result = await write_batch(conn, [resent], cache=cache)
    assert (result.inserted, result.duplicates, result.conflicts) == (0, 1, [])
    assert await stored(conn) == [(first.event_id, T0)]
    assert await conn.fetchval('SELECT "offset" FROM events') == first.source.offset  # type: ignore[union-attr]


async def test_repeats_inside_one_batch(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    a = make_event(T0, offset=1)
    a_later = again(a, created_at=T0 + timedelta(minutes=5), offset=2)
    a_same = again(a, offset=3)
    a_other = again(a, event_data={"name": ["A", "Z"]}, offset=4)
    b = make_event(T0 + timedelta(seconds=1), offset=5)
    result = await write_batch(conn, [a, a_later, b, a_same, a_other], cache=cache)
    assert (result.inserted, result.duplicates) == (2, 1)
    # Each repeat is judged against the first, which the batch stored.
    assert sorted(result.conflicts, key=lambda c: c.event.source.offset) == [  # type: ignore[union-attr]
        Conflict(a_later, T0),
        Conflict(a_other, T0),
    ]
    assert await stored(conn) == [(a.event_id, T0), (b.event_id, b.created_at)]


async def test_repeats_of_an_id_stored_before_name_the_stored_one(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    first = make_event(T0)
    await write_batch(conn, [first], cache=cache)
    x = again(first, created_at=T0 + timedelta(hours=1), offset=10)
    y = again(first, created_at=T0 + timedelta(hours=2), offset=11)
    result = await write_batch(conn, [x, y, x], cache=cache)
    assert result.inserted == 0
    assert [c.stored_created_at for c in result.conflicts] == [T0, T0, T0]
    assert await stored(conn) == [(first.event_id, T0)]


async def test_bisection_keeps_conflicts_apart_from_rejected_rows(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    first = make_event(T0)
    await write_batch(conn, [first], cache=cache)
    conflict = again(first, created_at=T0 + timedelta(days=1))
    bad = dataclasses.replace(make_event(), event_source="nul\x00")
    good = make_event(T0 + timedelta(seconds=2))
    async with conn.transaction():
        result = await write_isolating(conn, [conflict, bad, good], cache=cache)
    assert (result.inserted, result.duplicates) == (1, 0)
    assert [r.event for r in result.rejected] == [bad]
    assert result.conflicts == [Conflict(conflict, T0)]


async def test_retention_drops_the_ids_of_the_months_it_drops(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    # Retention goes by the database's clock: two and three months back, kept 2 months.
    now: datetime = (await conn.fetchval("SELECT now()")).astimezone(UTC)
    three_back = add_months(month_of(now), -3)
    one_back = add_months(month_of(now), -1)
    old = make_event(datetime(three_back.year, three_back.month, 15, tzinfo=UTC))
    kept = make_event(datetime(one_back.year, one_back.month, 15, tzinfo=UTC))
    await write_batch(conn, [old, kept], cache=cache)
    assert await drop_expired(conn, 2, cache=cache) == [partition_name(three_back)]
    ids = await conn.fetch("SELECT event_id, created_at FROM event_ids ORDER BY created_at")
    assert [(r["event_id"], r["created_at"]) for r in ids] == [(kept.event_id, kept.created_at)]
    # The dropped event's id is free again; the kept one is still taken.
    result = await write_batch(
        conn,
        [again(old, created_at=datetime(2024, 2, 20, tzinfo=UTC)),
         again(kept, created_at=datetime(2024, 2, 20, tzinfo=UTC))],
        cache=cache,
    )  # fmt: skip
    assert result.inserted == 1
    assert [c.stored_created_at for c in result.conflicts] == [kept.created_at]


async def _waiting_for_lock(conn: asyncpg.Connection[Any], pid: int) -> None:
    # The batch statement waiting for a transaction (the one that inserted the same id).
    await eventually(
        lambda: conn.fetchval(
            "SELECT wait_event = 'transactionid' AND query LIKE '%INSERT INTO event_ids%'"
            " FROM pg_stat_activity WHERE pid = $1",
            pid,
        ),
        lambda waiting: waiting is True,
        20,
        "the second writer to wait for the first one's claim",
    )


@pytest.mark.parametrize("first_commits", [True, False])
async def test_two_writers_racing_for_one_id(
    migrated_db_url: str, conn: asyncpg.Connection[Any], first_commits: bool
) -> None:
    # Writer A claims an id and holds its transaction open; writer B, with the same id at
    # another time, waits on the claim. If A commits, B's statement cannot see A's row (its
    # snapshot is older) and writes that row again: a conflict naming A's created_at, the
    # rest of its batch stored, no error. If A rolls back, B stores its own.
    a_event = make_event(T0)
    b_event = again(a_event, created_at=T0 + timedelta(days=40))
    b_other = make_event(T0 + timedelta(seconds=3))
    # Both writers know the partitions exist: no DDL, whose advisory lock A would hold until
    # it ends, so that B waits on the id itself.
    known = PartitionCache()
    await ensure_partition_for(conn, [T0, b_event.created_at], cache=known)
    a = await asyncpg.connect(migrated_db_url)
    b = await asyncpg.connect(migrated_db_url)
    try:
        tx = a.transaction()
        await tx.start()
        assert (await write_batch(a, [a_event], cache=known)).inserted == 1
        b_write = asyncio.create_task(write_batch(b, [b_event, b_other], cache=known))
        await _waiting_for_lock(conn, b.get_server_pid())
        if first_commits:
            await tx.commit()
        else:
            await tx.rollback()
        result = await within(b_write, 20, "the second writer's batch")
    finally:
        await a.close()
        await b.close()
    if first_commits:
        assert (result.inserted, result.conflicts) == (1, [Conflict(b_event, T0)])
        assert await stored(conn) == [
            (a_event.event_id, T0),
            (b_other.event_id, b_other.created_at),
        ]
    else:
        assert (result.inserted, result.conflicts) == (2, [])
        assert sorted(await stored(conn)) == sorted(
            [(b_event.event_id, b_event.created_at), (b_other.event_id, b_other.created_at)]
        )


async def test_migration_0002_backfills_the_ids_of_stored_events(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        # A database at 0001, as the previous release left it, with an id stored twice (what
        # 0001 allowed) and one stored once.
        initial = load_migrations()[0]
        async with conn.transaction():
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute(initial.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (1, $1, $2)",
                initial.name,
                initial.checksum,
            )
        # (Partitions by hand: the functions that create them arrive with a later migration.)
        for month in (month_of(T0), month_of(T0 + timedelta(days=31))):
            await conn.execute(
                f"CREATE TABLE {partition_name(month)} PARTITION OF events FOR VALUES"
                f" FROM ('{month}T00:00:00Z') TO ('{add_months(month, 1)}T00:00:00Z')"
            )
        twice, once = uuid.uuid4(), uuid.uuid4()
        for event_id, at in [
            (twice, T0 + timedelta(days=31)),  # stored first: lowest seq
            (once, T0),
            (twice, T0),
        ]:
            await conn.execute(
                "INSERT INTO events (event_id, created_at, event_type, event_source, course_id,"
                " account_id, root_account_id, event_data) VALUES ($1, $2, 'published', 'api',"
                " 42, 7, 1, '{}')",
                event_id,
                at,
            )

        assert await migrate(conn) == [m.version for m in load_migrations()][1:]

        rows = await conn.fetch("SELECT event_id, created_at FROM event_ids")
        assert sorted((r["event_id"], r["created_at"]) for r in rows) == sorted(
            [(twice, T0 + timedelta(days=31)), (once, T0)]
        )
    finally:
        await conn.close()
