"""Monthly partitions: created ahead, created on demand concurrently, dropped past retention."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from course_audit.store.partitions import (
    PartitionCache,
    add_months,
    drop_expired,
    ensure_partition_for,
    ensure_partitions,
    list_partitions,
    partition_name,
)

NOW = datetime(2026, 11, 15, 9, 30, tzinfo=UTC)


async def names(conn: asyncpg.Connection[Any]) -> list[str]:
    return sorted((await list_partitions(conn)).values())


async def test_partitions_are_created_ahead(conn: asyncpg.Connection[Any]) -> None:
    created = await ensure_partitions(conn, months_ahead=3, now=NOW, cache=PartitionCache())
    expected = ["events_y2026m11", "events_y2026m12", "events_y2027m01", "events_y2027m02"]
    assert created == expected
    assert await names(conn) == expected
    # Another replica (its own empty cache) finds nothing to do.
    assert await ensure_partitions(conn, months_ahead=3, now=NOW, cache=PartitionCache()) == []


async def test_bounds_are_utc_months_whatever_the_session_zone(
    conn: asyncpg.Connection[Any],
) -> None:
    await conn.execute("SET TimeZone = 'America/New_York'")
    await ensure_partition_for(conn, {date(2026, 11, 1), date(2026, 12, 1)}, cache=PartitionCache())
    await conn.execute("SET TimeZone = 'UTC'")  # pg_get_expr renders in the session zone
    bounds = await conn.fetchval(
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'events_y2026m11'"
    )
    assert bounds == ("FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00')")


async def test_cache_skips_known_months(conn: asyncpg.Connection[Any]) -> None:
    cache = PartitionCache()
    assert await ensure_partition_for(conn, {date(2025, 3, 1)}, cache=cache) == ["events_y2025m03"]
    # A datetime inside the month counts as the month; known months issue no SQL at all.
    await conn.close()
    assert await ensure_partition_for(conn, {datetime(2025, 3, 9, tzinfo=UTC)}, cache=cache) == []


async def test_concurrent_creation_of_the_same_month(migrated_db_url: str) -> None:
    conns = [await asyncpg.connect(migrated_db_url) for _ in range(4)]
    try:
        months = {date(2026, 11, 1), date(2026, 12, 1), date(2019, 2, 1)}
        results = await asyncio.gather(
            *(ensure_partition_for(c, months, cache=PartitionCache()) for c in conns)
        )
        created = sorted(name for result in results for name in result)
        assert created == ["events_y2019m02", "events_y2026m11", "events_y2026m12"]
        assert await names(conns[0]) == created
    finally:
        for c in conns:
            await c.close()


async def insert_at(conn: asyncpg.Connection[Any], ts: str) -> None:
    await conn.execute(
        "INSERT INTO events (event_id, created_at, event_type, event_source, course_id,"
        " account_id, root_account_id, event_data)"
        " VALUES (gen_random_uuid(), $1::text::timestamptz, 'published', 'api', 1, 2, 3, '{}')",
        ts,
    )


async def db_month(conn: asyncpg.Connection[Any]) -> date:
    """The current UTC month by the database's clock (what retention goes by)."""
    now: datetime = await conn.fetchval("SELECT now()")
    return date(now.astimezone(UTC).year, now.astimezone(UTC).month, 1)


def stamp(month: date, suffix: str = "T00:00:00Z") -> str:
    return month.isoformat() + suffix


async def test_drop_expired_drops_exactly_the_expired_months(
    conn: asyncpg.Connection[Any],
) -> None:
    current = await db_month(conn)
    months = {add_months(current, n) for n in range(-19, 2)}
    await ensure_partition_for(conn, months, cache=PartitionCache())
    last_expired = add_months(current, -15)
    first_kept = add_months(current, -14)
    await insert_at(
        conn, (datetime.fromisoformat(stamp(first_kept)) - timedelta(seconds=1)).isoformat()
    )
    await insert_at(conn, stamp(first_kept))
    await insert_at(conn, stamp(current, "T00:00:01Z"))

    # 14 months before this month: the month 15 back and older hold only expired events;
    # the month 14 back is the oldest kept, whole.
    dropped = await drop_expired(conn, 14, cache=PartitionCache())
    assert dropped == [partition_name(add_months(current, n)) for n in range(-19, -14)]
    assert partition_name(last_expired) in dropped
    remaining = await names(conn)
    assert remaining[0] == partition_name(first_kept) and len(remaining) == 16
    kept = await conn.fetch("SELECT created_at FROM events ORDER BY created_at")
    assert [r["created_at"] for r in kept] == [
        datetime.fromisoformat(stamp(first_kept)),
        datetime.fromisoformat(stamp(current, "T00:00:01Z")),
    ]
    assert await drop_expired(conn, 14, cache=PartitionCache()) == []


async def test_a_process_clock_ahead_drops_nothing_current(
    conn: asyncpg.Connection[Any],
) -> None:
    # The consumer's clock no longer takes part: whatever the process believes the date is,
    # the database's now() decides. This month and last hold events; a retention of one
    # month keeps both, and so does a process whose clock ran a year ahead (the old code
    # computed the cutoff from it and dropped both months).
    current = await db_month(conn)
    previous = add_months(current, -1)
    await ensure_partition_for(conn, {previous, current}, cache=PartitionCache())
    await insert_at(conn, stamp(previous, "T12:00:00Z"))
    await insert_at(conn, stamp(current, "T00:00:01Z"))
    assert await drop_expired(conn, 1, cache=PartitionCache()) == []
    assert await names(conn) == sorted([partition_name(previous), partition_name(current)])


async def test_a_partition_whose_bounds_hold_current_events_is_never_dropped(
    conn: asyncpg.Connection[Any],
) -> None:
    # A table named like a long-gone month, attached by hand with bounds over this month:
    # the name says "expired", the bounds (which PostgreSQL enforces) say otherwise.
    current = await db_month(conn)
    await conn.execute(
        f"CREATE TABLE events_y2001m01 PARTITION OF events FOR VALUES"
        f" FROM ('{stamp(current)}') TO ('{stamp(add_months(current, 1))}')"
    )
    await insert_at(conn, stamp(current, "T00:00:01Z"))
    assert await drop_expired(conn, 1, cache=PartitionCache()) == []
    assert await names(conn) == ["events_y2001m01"]
    assert await conn.fetchval("SELECT count(*) FROM events") == 1


async def test_retention_zero_keeps_everything(conn: asyncpg.Connection[Any]) -> None:
    await ensure_partition_for(conn, {date(2001, 1, 1)}, cache=PartitionCache())
    assert await drop_expired(conn, 0, cache=PartitionCache()) == []
    assert await names(conn) == ["events_y2001m01"]


async def test_drop_expired_forgets_dropped_months_in_its_cache(
    conn: asyncpg.Connection[Any],
) -> None:
    cache = PartitionCache()
    await ensure_partition_for(conn, {date(2020, 1, 1)}, cache=cache)
    assert await drop_expired(conn, 12, cache=cache) == ["events_y2020m01"]
    assert await ensure_partition_for(conn, {date(2020, 1, 1)}, cache=cache) == ["events_y2020m01"]
