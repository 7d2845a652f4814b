"""The big-store benchmark's loader (tests/bench/bigload.py) on a real migrated database.

Its index check is what makes the benchmark's store the service's own: these tests show the
check tells an identical index set from a missing, extra or unattached index, and that the
loader at a small size leaves every event, id and index where migrate and the partition code
would have.
"""

from __future__ import annotations

from datetime import date

import asyncpg

from bench.bigload import (
    MONTHS,
    index_definitions,
    load_big,
    load_check,
    partition_bounds,
    strip_indexes,
)
from course_audit.store.partitions import PartitionCache, ensure_partition_for

# The partitioned indexes of `events` the migrations define (0001, 0003, 0005).
EVENTS_INDEXES = {
    "events_pkey",
    "events_course_root_order_idx",
    "events_account_root_order_idx",
    "events_account_root_user_order_idx",
    "events_account_root_type_order_idx",
}


async def _two_partitions(conn: asyncpg.Connection) -> tuple[str, str]:
    await ensure_partition_for(conn, [date(2026, 1, 1), date(2026, 2, 1)], cache=PartitionCache())
    return "events_y2026m01", "events_y2026m02"


async def test_partitions_of_the_service_have_equal_index_sets(migrated_db_url: str) -> None:
    conn = await asyncpg.connect(migrated_db_url)
    try:
        a, b = await _two_partitions(conn)
        defs_a = await index_definitions(conn, a)
        assert {parent for _, _, parent, _, _ in defs_a} == EVENTS_INDEXES
        assert defs_a == await index_definitions(conn, b)
    finally:
        await conn.close()


async def test_stripped_and_rebuilt_partition_is_identical(migrated_db_url: str) -> None:
    conn = await asyncpg.connect(migrated_db_url)
    try:
        a, b = await _two_partitions(conn)
        reference = await index_definitions(conn, b)
        bounds = await partition_bounds(conn, a)
        await conn.execute(f"ALTER TABLE events DETACH PARTITION {a}")
        detached = await index_definitions(conn, a)
        assert detached != reference  # its indexes belong to no partitioned index now
        assert {parent for _, _, parent, _, _ in detached} == {""}
        rebuild = await strip_indexes(conn, a)
        assert await index_definitions(conn, a) == set()
        assert len(rebuild) == len(EVENTS_INDEXES)
        for statement in rebuild:
            await conn.execute(statement)
        await conn.execute(f"ALTER TABLE events ATTACH PARTITION {a} {bounds}")
        assert await index_definitions(conn, a) == reference
        # An index more, and the partitions differ.
        await conn.execute(f"CREATE INDEX extra_idx ON {a} (event_type)")
        assert await index_definitions(conn, a) != reference
    finally:
        await conn.close()


async def test_index_with_another_definition_differs(migrated_db_url: str) -> None:
    conn = await asyncpg.connect(migrated_db_url)
    try:
        a, b = await _two_partitions(conn)
        await conn.execute("DROP INDEX events_account_root_type_order_idx")  # on every partition
        await conn.execute(
            f"CREATE INDEX {a}_account_id_root_account_id_event_type_created_at_seq_idx"
            f" ON {a} (account_id, root_account_id, event_type, created_at, seq)"
        )
        await conn.execute(
            f"CREATE INDEX {b}_account_id_root_account_id_event_type_created_at_seq_idx"
            f" ON {b} (account_id, root_account_id, event_type, created_at DESC, seq DESC)"
        )
        assert await index_definitions(conn, a) != await index_definitions(conn, b)
    finally:
        await conn.close()


async def test_small_load_is_complete_and_has_the_migrated_indexes(
    migrated_db_url: str, migrated_template: str
) -> None:
    n = 14_000
    info = await load_big(migrated_db_url, n)
    conn = await asyncpg.connect(migrated_db_url)
    fresh = await asyncpg.connect(f"{migrated_db_url.rpartition('/')[0]}/{migrated_template}")
    try:
        await load_check(conn, fresh, info)
        assert len(info["months"]) == MONTHS
        assert await conn.fetchval("SELECT count(*) FROM events") == n
        assert await conn.fetchval("SELECT count(*) FROM event_ids") == n
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM events e JOIN event_ids i USING (event_id, created_at)"
            )
            == n
        )
        # Every month holds events, and each lies in its partition's month.
        per_month = await conn.fetch(
            "SELECT tableoid::regclass::text AS part, count(*) AS n,"
            " bool_and(to_char(created_at AT TIME ZONE 'UTC', '\"events_y\"YYYY\"m\"MM')"
            "          = tableoid::regclass::text) AS inside"
            " FROM events GROUP BY 1"
        )
        assert sorted(r["part"] for r in per_month) == sorted(info["months"])
        assert all(r["n"] > 0 and r["inside"] for r in per_month)
        assert await conn.fetchval("SELECT count(*) FROM page_views") == await conn.fetchval(
            "SELECT count(*) FROM events WHERE page_view_id IS NOT NULL"
        )
        # The queried course and account hold the share the benchmark relies on.
        assert await conn.fetchval("SELECT count(*) FROM events WHERE account_id = 100") > 0
        assert await conn.fetchval("SELECT count(*) FROM events WHERE course_id = 1000") > 0
        # The next event the consumer stores gets a seq after the loaded ones.
        assert await conn.fetchval("SELECT nextval('events_seq')") > await conn.fetchval(
            "SELECT max(seq) FROM events"
        )
    finally:
        await conn.close()
        await fresh.close()
