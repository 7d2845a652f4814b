"""The bulk write path against a real PostgreSQL: idempotency, snapshots, partitions, bad rows."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from bench.naive import naive_write_batch_per_row
from course_audit.model import Event, Source
from course_audit.store.errors import is_data_error, is_transient
from course_audit.store.partitions import PartitionCache, drop_expired, list_partitions
from course_audit.store.writer import (
    TenantClaim,
    WriteResult,
    write_batch,
    write_isolating,
)

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def course(cid: int = 42, **fields: Any) -> dict[str, Any]:
    return {"id": cid, "account_id": 7, "root_account_id": 1, "name": f"Course {cid}"} | fields


def make_event(
    created_at: datetime = T0,
    *,
    event_type: str = "updated",
    course_record: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
    page_view: dict[str, Any] | None = None,
    related_course: dict[str, Any] | None = None,
    event_data: dict[str, Any] | None = None,
    event_source: str = "api",
    offset: int = 0,
) -> Event:
    return Event(
        event_id=uuid.uuid4(),
        created_at=created_at,
        event_type=event_type,
        event_source=event_source,
        course=course_record or course(),
        user=user,
        page_view=page_view,
        sis_batch_id=None,
        event_data={"name": ["A", "B"]} if event_data is None else event_data,
        related_course=related_course,
        source=Source("course-events", 2, offset, b"42", b"raw"),
    )


@pytest.fixture
def cache() -> PartitionCache:
    """A cache of this test's own: each test has a fresh database."""
    return PartitionCache()


async def count(conn: asyncpg.Connection[Any], table: str = "events") -> int:
    result = await conn.fetchval(f"SELECT count(*) FROM {table}")
    assert isinstance(result, int)
    return result


async def test_every_column_is_stored(conn: asyncpg.Connection[Any], cache: PartitionCache) -> None:
    event = Event(
        event_id=uuid.uuid4(),
        created_at=T0,
        event_type="copied_from",
        event_source="sis",
        course=course(42, sis_course_id="SIS-42"),
        user={"id": 9, "name": "Ann"},
        page_view={"id": "pv-1", "url": "https://lms/courses/42"},
        sis_batch_id=77,
        event_data={},
        related_course=course(41, account_id=8),
        source=Source("course-events", 2, 1234, b"42", b"raw"),
    )
    assert await write_batch(conn, [event], cache=cache) == WriteResult(1, 0)
    row = await conn.fetchrow("SELECT * FROM course_audit_events")
    assert row is not None
    assert dict(row) | {"ingested_at": None} == {
        "event_id": event.event_id,
        "created_at": T0,
        "event_type": "copied_from",
        "event_source": "sis",
        "course_id": 42,
        "account_id": 7,
        "root_account_id": 1,
        "user_id": 9,
        "page_view_id": "pv-1",
        "sis_batch_id": 77,
        "related_course_id": 41,
        "event_data": "{}",
        "topic": "course-events",
        "partition": 2,
        "offset": 1234,
        "ingested_at": None,
    }
    assert row["ingested_at"] is not None


async def test_same_event_twice_in_one_batch_is_stored_once(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    event, other = make_event(), make_event(T0 + timedelta(seconds=1))
    result = await write_batch(conn, [event, other, event], cache=cache)
    assert (result.inserted, result.duplicates) == (2, 1)
    assert await count(conn) == 2


async def test_redelivered_event_changes_nothing(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    event = make_event()
    assert (await write_batch(conn, [event], cache=cache)).inserted == 1
    before = await conn.fetchrow("SELECT seq, ingested_at FROM events")

    again = await write_batch(conn, [event, make_event(T0 - timedelta(days=1))], cache=cache)
    assert (again.inserted, again.duplicates) == (1, 1)
    after = await conn.fetchrow(
        "SELECT seq, ingested_at FROM events WHERE event_id = $1", event.event_id
    )
    assert after == before  # same tie-break key, same ingestion time: pages stay stable
    assert await count(conn) == 2


async def test_seq_follows_batch_order(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    events = [make_event(T0) for _ in range(5)]  # one second, five events
    await write_batch(conn, events, cache=cache)
    rows = await conn.fetch("SELECT event_id FROM events ORDER BY created_at DESC, seq DESC")
    assert [r["event_id"] for r in rows] == [e.event_id for e in reversed(events)]


async def test_newer_snapshot_wins_whatever_the_arrival_order(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    newer = make_event(
        T0,
        course_record=course(42, name="New name", sis_course_id="S-new"),
        user={"id": 9, "name": "Ann Newer"},
        page_view={"id": "pv", "url": "/new"},
    )
    older = make_event(
        T0 - timedelta(hours=1),
        course_record=course(42, name="Old name", sis_course_id="S-old", account_id=5),
        user={"id": 9, "name": "Ann Older"},
        page_view={"id": "pv", "url": "/old"},
    )
    # Inside one batch, the older event coming last...
    await write_batch(conn, [newer, older], cache=cache)
    # ...and in a later batch.
    await write_batch(
        conn,
        [make_event(T0 - timedelta(hours=2), course_record=course(42, name="Oldest"))],
        cache=cache,
    )

    c = await conn.fetchrow("SELECT * FROM courses WHERE id = 42")
    assert c is not None
    assert (c["sis_course_id"], c["account_id"], c["as_of"]) == ("S-new", 7, T0)
    assert '"New name"' in c["data"]
    assert '"Ann Newer"' in await conn.fetchval("SELECT data::text FROM users WHERE id = 9")
    assert '"/new"' in await conn.fetchval("SELECT data::text FROM page_views WHERE id = 'pv'")

    # A newer event replaces it.
    await write_batch(
        conn,
        [make_event(T0 + timedelta(minutes=1), course_record=course(42, name="Newest"))],
        cache=cache,
    )
    assert '"Newest"' in await conn.fetchval("SELECT data::text FROM courses WHERE id = 42")
    assert await count(conn, "courses") == 1


async def test_batch_keeps_the_newest_snapshot_of_each_id(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    # Newest created_at wins, then the later event of the batch, then a related course over
    # the event's own course.
    later = T0 + timedelta(hours=1)
    events = [
        make_event(
            T0,
            course_record=course(1, name="first"),
            user={"id": 5, "name": "first"},
            page_view={"id": "pv", "url": "/first"},
        ),
        make_event(
            T0,
            course_record=course(1, name="second", sis_course_id="S-1"),
            user={"id": 5, "name": "second"},
            page_view={"id": "pv", "url": "/second"},
        ),
        make_event(
            T0 - timedelta(hours=1),
            course_record=course(1, name="older"),
            user={"id": 5, "name": "older"},
            page_view={"id": "pv", "url": "/older"},
        ),
        make_event(
            later,
            event_type="copied_to",
            event_data={},
            course_record=course(2, name="own"),
            related_course=course(2, name="related", account_id=9),
        ),
        make_event(
            T0,
            event_type="copied_from",
            event_data={},
            course_record=course(3, name="three"),
            related_course=course(1, name="third", account_id=7),
        ),
        make_event(
            T0,
            event_type="copied_from",
            event_data={},
            course_record=course(3, name="three"),
            # Another root account's course: linked by id only, never given a snapshot.
            related_course=course(8, name="foreign", root_account_id=4),
        ),
    ]
    await write_batch(conn, events, cache=cache)

    rows = await conn.fetch(
        "SELECT id, root_account_id, account_id, sis_course_id, as_of, data FROM courses"
    )
    courses = {r["id"]: r for r in rows}
    assert sorted(courses) == [1, 2, 3]
    # Course 1: four candidates; at T0 the last event of the batch carrying it carries it as
    # its related course ("third", in account 7), which beats "first" and "second" at T0.
    assert json.loads(courses[1]["data"]) == course(1, name="third", account_id=7)
    assert (courses[1]["as_of"], courses[1]["account_id"], courses[1]["sis_course_id"]) == (
        T0,
        7,
        None,
    )
    # Course 2: the same event carries it as its own course and as the related one.
    assert json.loads(courses[2]["data"]) == course(2, name="related", account_id=9)
    assert (courses[2]["as_of"], courses[2]["account_id"]) == (later, 9)
    assert json.loads(courses[3]["data"]) == course(3, name="three")
    assert courses[3]["as_of"] == T0

    users = await conn.fetch("SELECT id, as_of, data FROM users")
    assert [(r["id"], r["as_of"], json.loads(r["data"])) for r in users] == [
        (5, T0, {"id": 5, "name": "second"})
    ]
    views = await conn.fetch("SELECT id, as_of, data FROM page_views")
    assert [(r["id"], r["as_of"], json.loads(r["data"])) for r in views] == [
        ("pv", T0, {"id": "pv", "url": "/second"})
    ]


async def test_related_course_snapshot_counts(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    copy = make_event(
        T0,
        event_type="copied_to",
        event_data={},
        related_course=course(50, name="The copy", account_id=8),
    )
    older_about_50 = make_event(T0 - timedelta(days=1), course_record=course(50, name="Stale"))
    await write_batch(conn, [copy], cache=cache)
    await write_batch(conn, [older_about_50], cache=cache)
    row = await conn.fetchrow(
        "SELECT account_id, data->>'name' AS name, as_of FROM courses WHERE id = 50"
    )
    assert row is not None and tuple(row) == (8, "The copy", T0)
    assert (
        await conn.fetchval(
            "SELECT related_course_id FROM events WHERE event_id = $1", copy.event_id
        )
        == 50
    )


async def test_redelivery_does_not_rewrite_snapshots(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    event = make_event()
    await write_batch(conn, [event], cache=cache)
    xmin = await conn.fetchval("SELECT xmin::text FROM courses WHERE id = 42")
    await write_batch(conn, [event], cache=cache)
    assert await conn.fetchval("SELECT xmin::text FROM courses WHERE id = 42") == xmin


async def test_old_event_gets_its_partition_on_demand(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    old = make_event(datetime(2003, 5, 31, 23, 59, 59, tzinfo=UTC))
    result = await write_batch(conn, [old, make_event()], cache=cache)
    assert result.inserted == 2
    where = await conn.fetchval(
        "SELECT tableoid::regclass::text FROM events WHERE event_id = $1", old.event_id
    )
    assert where == "events_y2003m05"
    assert sorted(p.isoformat() for p in await list_partitions(conn)) == [
        "2003-05-01",
        "2026-11-01",
    ]


async def test_stale_partition_cache_heals(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    first = make_event(datetime(2024, 1, 15, tzinfo=UTC))
    await write_batch(conn, [first], cache=cache)
    # Another replica's retention run drops the month; this process's cache still lists it.
    assert await drop_expired(conn, 1, cache=PartitionCache()) == ["events_y2024m01"]

    again = await write_batch(conn, [first], cache=cache)
    assert again.inserted == 1
    assert await count(conn) == 1


async def test_bad_row_fails_the_batch_but_not_its_neighbours(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    good = [make_event(T0 + timedelta(seconds=i), offset=i) for i in range(6)]
    nul_text = make_event(event_source="api\x00")  # text cannot hold NUL
    nul_json = make_event(event_data={"name": ["a\x00", "b"]})  # nor jsonb \u0000
    batch = [*good[:2], nul_text, *good[2:5], nul_json, good[5]]

    with pytest.raises(asyncpg.PostgresError) as raised:
        await write_batch(conn, batch, cache=cache)
    assert is_data_error(raised.value) and not is_transient(raised.value)
    assert await count(conn) == 0  # all or nothing

    result = await write_isolating(conn, batch, cache=cache)
    assert (result.inserted, result.duplicates) == (6, 0)
    assert [r.event for r in result.rejected] == [nul_text, nul_json]
    assert all(is_data_error(r.error) for r in result.rejected)
    stored = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM events")}
    assert stored == {e.event_id for e in good}


async def test_client_side_encoding_errors_are_data_errors(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    huge = make_event(course_record=course(2**70))
    result = await write_isolating(conn, [make_event(), huge], cache=cache)
    assert result.inserted == 1 and [r.event for r in result.rejected] == [huge]


async def test_lost_connection_is_transient(migrated_db_url: str, cache: PartitionCache) -> None:
    conn = await asyncpg.connect(migrated_db_url)
    await conn.close()
    with pytest.raises(Exception) as raised:
        await write_batch(conn, [make_event()], cache=cache)
    assert is_transient(raised.value) and not is_data_error(raised.value)

    # A backend terminated while its connection sits idle (a database restart): depending on
    # timing, asyncpg reports a closed connection or a confused protocol state. Either way
    # the batch is retried, never dead-lettered.
    killer = await asyncpg.connect(migrated_db_url)
    try:
        for _ in range(10):
            victim = await asyncpg.connect(migrated_db_url)
            try:
                await killer.execute("SELECT pg_terminate_backend($1)", victim.get_server_pid())
                with pytest.raises(Exception) as raised:
                    await write_batch(victim, [make_event()], cache=cache)
                assert is_transient(raised.value) and not is_data_error(raised.value)
            finally:
                victim.terminate()
    finally:
        await killer.close()


async def test_two_batches_in_one_caller_transaction(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    a, b = make_event(), make_event()
    async with conn.transaction():
        assert (await write_batch(conn, [a], cache=cache)).inserted == 1
        assert (await write_batch(conn, [b, a], cache=cache)).inserted == 1  # staging emptied
    assert await count(conn) == 2


async def test_naive_baseline_stores_the_same_rows(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    events = [make_event(T0 + timedelta(seconds=i)) for i in range(3)]
    first = await naive_write_batch_per_row(conn, [*events, events[0]], cache=cache)
    assert (first.inserted, first.duplicates) == (3, 1)
    assert (await write_batch(conn, events, cache=cache)).inserted == 0
    assert await count(conn) == 3 and await count(conn, "courses") == 1


async def test_a_course_first_stored_under_a_second_root_is_reported_once(
    conn: asyncpg.Connection[Any], cache: PartitionCache
) -> None:
    first = make_event(T0, course_record=course(950, account_id=100))
    assert (await write_batch(conn, [first], cache=cache)).tenant_claims == []
    claim = make_event(
        T0 + timedelta(hours=1), course_record=course(950, account_id=100, root_account_id=2)
    )
    result = await write_batch(conn, [claim], cache=cache)
    assert result.inserted == 1  # stored all the same, under the root account it names
    assert sorted(result.tenant_claims, key=lambda c: c.kind) == [
        TenantClaim("account", 100, 2, (1,)),
        TenantClaim("course", 950, 2, (1,)),
    ]
    # Later events of that id under that root, and a redelivery, are stored silently.
    again = make_event(
        T0 + timedelta(hours=2), course_record=course(950, account_id=100, root_account_id=2)
    )
    assert (await write_batch(conn, [again, claim], cache=cache)).tenant_claims == []
    # A move between accounts of the same root account is no claim.
    moved = make_event(T0 + timedelta(hours=3), course_record=course(950, account_id=101))
    assert (await write_batch(conn, [moved], cache=cache)).tenant_claims == []
    # Two root accounts first naming one id in the same batch: each is reported.
    pair = [
        make_event(T0, course_record=course(960, account_id=300)),
        make_event(T0, course_record=course(960, account_id=300, root_account_id=3)),
    ]
    claims = (await write_batch(conn, pair, cache=cache)).tenant_claims
    assert sorted((c.kind, c.root_account_id, c.other_root_account_ids) for c in claims) == [
        ("account", 1, (3,)),
        ("account", 3, (1,)),
        ("course", 1, (3,)),
        ("course", 3, (1,)),
    ]
