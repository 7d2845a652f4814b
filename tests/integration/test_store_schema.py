"""Migrations, the public views, and the indexes behind the two API queries (real PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import asyncpg
import orjson
import pytest

from course_audit.retention import month_of
from course_audit.store.migrate import load_migrations, migrate, pending_migrations
from course_audit.store.partitions import PartitionCache, ensure_partition_for
from course_audit.store.queries import Cursor, Window, page_args, page_sql


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to a fresh, empty database."""
    connection = await asyncpg.connect(db_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def mconn(migrated_db_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to a fresh database with the current schema (and no partitions yet)."""
    connection = await asyncpg.connect(migrated_db_url)
    try:
        yield connection
    finally:
        await connection.close()


async def test_migrate_applies_everything_once(conn: asyncpg.Connection[Any]) -> None:
    shipped = [m.version for m in load_migrations()]
    assert shipped[0] == 1
    assert [m.version for m in await pending_migrations(conn)] == shipped

    assert await migrate(conn) == shipped
    assert await pending_migrations(conn) == []
    assert await migrate(conn) == []
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == shipped


async def test_migrate_through_a_pool(db_url: str) -> None:
    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool:
        assert await migrate(pool) == [m.version for m in load_migrations()]
        assert await migrate(pool) == []


async def test_concurrent_migrate_from_three_connections_applies_once(db_url: str) -> None:
    conns = [await asyncpg.connect(db_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        shipped = [m.version for m in load_migrations()]
        assert sorted(results, key=len) == [[], [], shipped]
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(shipped)
    finally:
        for c in conns:
            await c.close()


async def _columns(conn: asyncpg.Connection[Any], view: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        view,
    )
    return [(r["column_name"], r["data_type"]) for r in rows]


async def test_public_views_have_exactly_the_contract_columns(
    mconn: asyncpg.Connection[Any],
) -> None:
    conn = mconn
    kinds = await conn.fetch(
        "SELECT table_name, table_type FROM information_schema.tables"
        " WHERE table_name IN ('course_audit_events', 'course_audit_dead_letters')"
    )
    assert {(r["table_name"], r["table_type"]) for r in kinds} == {
        ("course_audit_events", "VIEW"),
        ("course_audit_dead_letters", "VIEW"),
    }
    assert await _columns(conn, "course_audit_events") == [
        ("event_id", "uuid"),
        ("created_at", "timestamp with time zone"),
        ("event_type", "text"),
        ("event_source", "text"),
        ("course_id", "bigint"),
        ("account_id", "bigint"),
        ("root_account_id", "bigint"),
        ("user_id", "bigint"),
        ("page_view_id", "text"),
        ("sis_batch_id", "bigint"),
        ("related_course_id", "bigint"),
        ("event_data", "jsonb"),
        ("topic", "text"),
        ("partition", "integer"),
        ("offset", "bigint"),
        ("ingested_at", "timestamp with time zone"),
    ]
    assert await _columns(conn, "course_audit_dead_letters") == [
        ("topic", "text"),
        ("partition", "integer"),
        ("offset", "bigint"),
        ("error_code", "text"),
        ("error_message", "text"),
        ("failed_at", "timestamp with time zone"),
        ("replayed_at", "timestamp with time zone"),
        ("value", "bytea"),
    ]


async def test_public_views_refuse_writes(mconn: asyncpg.Connection[Any]) -> None:
    conn = mconn
    await ensure_partition_for(conn, {date(2026, 11, 1)}, cache=PartitionCache())
    await conn.execute(
        "INSERT INTO events (event_id, created_at, event_type, event_source, course_id,"
        " account_id, root_account_id, event_data)"
        " VALUES (gen_random_uuid(), '2026-11-02T00:00:00Z', 'published', 'api', 1, 2, 3, '{}')"
    )
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="read-only"):
        await conn.execute(
            'INSERT INTO course_audit_dead_letters (topic, "partition", "offset",'
            " error_code, error_message) VALUES ('t', 0, 0, 'x', 'y')"
        )
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="read-only"):
        await conn.execute("UPDATE course_audit_events SET event_type = 'deleted'")
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="read-only"):
        await conn.execute("DELETE FROM course_audit_events")
    assert await conn.fetchval("SELECT event_type FROM course_audit_events") == "published"
    assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 0


# --- the API's keyset queries are index range scans -------------------------------------------


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


async def _explain(conn: asyncpg.Connection[Any], sql: str, *args: Any) -> list[dict[str, Any]]:
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    return _plan_nodes(orjson.loads(raw)[0]["Plan"])


@pytest.fixture
async def big_store(mconn: asyncpg.Connection[Any]) -> asyncpg.Connection[Any]:
    """120,000 events over 55 days (two partitions), 400 courses in 40 accounts; events come
    in pairs of one course and one timestamp, so the tie-break matters."""
    conn = mconn
    first = await conn.fetchval("SELECT '2026-10-01T00:00:00Z'::timestamptz")
    await ensure_partition_for(
        conn, {month_of(first), month_of(first).replace(month=11)}, cache=PartitionCache()
    )
    await conn.execute(
        """
        INSERT INTO events (event_id, created_at, event_type, event_source, course_id,
                            account_id, root_account_id, event_data)
        SELECT gen_random_uuid(), '2026-10-01T00:00:00Z'::timestamptz + (g / 2) * interval '80 s',
               'updated', 'api', 1000 + (g / 2) % 400, 100 + (g / 2) % 40,
               CASE WHEN g % 5 = 0 THEN 2 ELSE 1 END, '{}'
          FROM generate_series(0, 119999) g
        """
    )
    await conn.execute("ANALYZE events")
    return conn


@pytest.mark.parametrize("roots", [[1], [1, 2]], ids=["one-root", "two-roots"])
@pytest.mark.parametrize(("column", "key"), [("course_id", 1007), ("account_id", 107)])
async def test_keyset_queries_use_the_order_index(
    big_store: asyncpg.Connection[Any], column: str, key: int, roots: list[int]
) -> None:
    conn = big_store
    # The last event of a page that ended between two twins (same key, same created_at).
    bookmark = await conn.fetchrow(
        f"SELECT created_at, seq FROM events WHERE {column} = $1 AND created_at < '2026-11-20'"
        " ORDER BY created_at DESC, seq DESC LIMIT 1",
        key,
    )
    assert bookmark is not None
    start = await conn.fetchval("SELECT '2026-10-05T00:00:00Z'::timestamptz")
    end = await conn.fetchval("SELECT '2026-12-31T00:00:00Z'::timestamptz")
    window = Window(since=start, until=end)
    cursor = Cursor(bookmark["created_at"], bookmark["seq"])
    # The service's own page query (a time window and a cursor: every clause it can have).
    sql, n_params = page_sql(column, window, cursor, len(roots))
    args = page_args(key, roots, window, cursor, 10)
    assert len(args) == n_params == 7

    custom = await _explain(conn, sql, *args)
    # The generic plan is what a prepared statement ends up with after a few executions.
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    generic = await _explain(conn, sql, *args)
    await conn.execute("RESET plan_cache_mode")

    for nodes in (custom, generic):
        types = [n["Node Type"] for n in nodes]
        assert "Seq Scan" not in types, types
        # One root account's page is one ordered range of the index, never sorted. With
        # several, each root account's range is read through the same index (the planner
        # may sort a small range rather than walk it), and the ranges are merged.
        sorts = [n for n in nodes if "Sort" in n["Node Type"]]
        if len(roots) == 1:
            assert not sorts, types
        scans = [
            n
            for n in nodes
            if n["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")
        ]
        assert scans, types
        assert all(
            n["Index Name"].endswith(f"{column}_root_account_id_created_at_seq_idx") for n in scans
        ), types
        assert all("ROW(created_at, seq) <" in n["Index Cond"] for n in scans)

    # And the query answers correctly: the next page after the bookmark, computed here from
    # every event of the key (the window is since <= created_at < until).
    # (A fifth of the events are root account 2's: a token for root 1 alone must not see them.)
    everything = await conn.fetch(
        f"SELECT event_id::text AS event_id, created_at, seq FROM events WHERE {column} = $1"
        " AND root_account_id = ANY($2::bigint[])",
        key,
        roots,
    )
    after = [
        (r["event_id"], r["created_at"], r["seq"])
        for r in everything
        if (r["created_at"], r["seq"]) < (bookmark["created_at"], bookmark["seq"])
        and start <= r["created_at"] < end
    ]
    after.sort(key=lambda r: (r[1], r[2]), reverse=True)
    page = await conn.fetch(sql, *args)
    assert [(r["event_id"], r["created_at"], r["seq"]) for r in page] == after[:10]
    assert page[0]["created_at"] == bookmark["created_at"]  # the twin comes next, not skipped
    assert page[0]["seq"] < bookmark["seq"]
