"""What retention leaves behind is expired too (docs/store.md#retention): snapshots no stored
event refers to, and dead letters past AUDIT_DEAD_LETTER_RETENTION_DAYS, by the database's
clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from course_audit.model import Event
from course_audit.retention import add_months, month_of
from course_audit.store.expiry import expire_dead_letters, expire_snapshots
from course_audit.store.partitions import PartitionCache, drop_expired
from course_audit.store.writer import write_batch


def event(at: datetime, course: int, user: int, page_view: str) -> Event:
    return Event(
        event_id=uuid.uuid4(),
        created_at=at,
        event_type="updated",
        event_source="api",
        course={"id": course, "account_id": course * 10, "root_account_id": 1, "name": "C"},
        user={"id": user, "name": f"U{user}"},
        page_view={"id": page_view, "url": "/x"},
        sis_batch_id=None,
        event_data={"name": ["A", "B"]},
    )


async def keys(conn: asyncpg.Connection[Any], table: str) -> set[Any]:
    return {r["id"] for r in await conn.fetch(f"SELECT id FROM {table}")}


async def test_snapshots_go_with_the_last_event_that_carried_them(
    conn: asyncpg.Connection[Any],
) -> None:
    now: datetime = (await conn.fetchval("SELECT now()")).astimezone(UTC)
    old_month = add_months(month_of(now), -20)
    old = datetime(old_month.year, old_month.month, 5, tzinfo=UTC)
    await write_batch(
        conn,
        [
            event(old, course=1, user=5, page_view="pv-old"),  # only ever in the old month
            event(old, course=2, user=6, page_view="pv-both"),  # carried again recently
            event(now, course=2, user=6, page_view="pv-both"),
            event(now, course=3, user=7, page_view="pv-new"),
        ],
        cache=PartitionCache(),
    )
    # While the old month is still stored (a drop refused, or not run yet), nothing goes.
    assert sum((await expire_snapshots(conn, 14)).values()) == 0
    assert await keys(conn, "users") == {5, 6, 7}

    assert await drop_expired(conn, 14, cache=PartitionCache()) != []
    counts = await expire_snapshots(conn, 14)
    assert counts == {"courses": 1, "users": 1, "page_views": 1, "accounts": 1}
    assert await keys(conn, "courses") == {2, 3}
    assert await keys(conn, "users") == {6, 7}
    assert await keys(conn, "page_views") == {"pv-both", "pv-new"}
    assert await keys(conn, "accounts") == {20, 30}
    # A second pass (after a crash between the drop and the expiry, say) finds nothing more.
    assert sum((await expire_snapshots(conn, 14)).values()) == 0
    # No retention: nothing ever expires.
    assert await expire_snapshots(conn, 0) == {}


async def test_dead_letters_expire_by_age_on_the_database_clock(
    conn: asyncpg.Connection[Any],
) -> None:
    await conn.execute(
        'INSERT INTO dead_letters (topic, "partition", "offset", value, error_code,'
        " error_message, failed_at)"
        " SELECT 't', 0, n, 'v'::bytea, 'invalid_schema', 'x', now() - make_interval(days => d)"
        "   FROM unnest(ARRAY[1, 2, 3, 4], ARRAY[100, 91, 89, 1]) AS a(n, d)"
    )
    assert await expire_dead_letters(conn, 0) == 0  # 0 keeps them all
    assert await expire_dead_letters(conn, 90) == 2
    left = await conn.fetch('SELECT "offset" FROM dead_letters ORDER BY "offset"')
    assert [r["offset"] for r in left] == [3, 4]
    assert await expire_dead_letters(conn, 90) == 0
