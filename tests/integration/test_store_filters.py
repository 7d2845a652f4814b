"""The filtered page queries (docs/store.md#filter-indexes): every combination of filters, on
both endpoints' columns and for one or several root accounts, reads ranges of the index meant
for it (no sequential scan, no sort of more than the ranges' first rows), and pages through
exactly the events a plain query over the whole key selects."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import asyncpg
import orjson
import pytest

from course_audit.retention import month_of
from course_audit.store.partitions import PartitionCache, ensure_partition_for
from course_audit.store.queries import MAX_PAGE_ROWS, Cursor, Filters, Window, page_args, page_sql
from course_audit.store.tail import TailSpec, tail_page, tail_sql

# Indexes of the `events` table (partitioned: each partition's index is attached to these).
ORDER = {"course_id": "events_course_root_order_idx", "account_id": "events_account_root_order_idx"}
# Filter indexes exist on accounts only (docs/store.md#filter-indexes): a course's filtered
# pages read its order index range.
USER = {
    "course_id": "events_course_root_order_idx",
    "account_id": "events_account_root_user_order_idx",
}
TYPE = {
    "course_id": "events_course_root_order_idx",
    "account_id": "events_account_root_type_order_idx",
}
ONE_TYPE = ("published",)
SEVERAL_TYPES = ("concluded", "created", "published")
SOURCE = "sis"
USER_ID = 5


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out.extend(_nodes(child))
    return out


@pytest.fixture
async def store(conn: asyncpg.Connection[Any]) -> asyncpg.Connection[Any]:
    """120,000 events over 55 days (two partitions), 400 courses in 40 accounts, a fifth of
    them under root account 2; 60% `updated` and the rest any of the 13 types, 97 users (and
    events without one), sources api (60%), manual (30%) and sis (10%)."""
    first = await conn.fetchval("SELECT '2026-10-01T00:00:00Z'::timestamptz")
    await ensure_partition_for(
        conn, {month_of(first), month_of(first).replace(month=11)}, cache=PartitionCache()
    )
    await conn.execute("SELECT setseed(0.42)")
    await conn.execute(
        """
        INSERT INTO events (event_id, created_at, event_type, event_source, course_id,
                            account_id, root_account_id, user_id, event_data)
        SELECT gen_random_uuid(), '2026-10-01T00:00:00Z'::timestamptz + (g / 2) * interval '80 s',
               CASE WHEN random() < 0.6 THEN 'updated'
                    ELSE (ARRAY['created', 'updated', 'concluded', 'unconcluded', 'published',
                                'unpublished', 'claimed', 'deleted', 'restored', 'copied_from',
                                'copied_to', 'reset_from', 'reset_to']
                         )[1 + floor(random() * 13)::int]
               END,
               (ARRAY['api', 'api', 'api', 'api', 'api', 'api', 'manual', 'manual', 'manual',
                      'sis'])[1 + floor(random() * 10)::int],
               1000 + (g / 2) % 400, 100 + (g / 2) % 40,
               CASE WHEN g % 5 = 0 THEN 2 ELSE 1 END,
               CASE WHEN g % 17 = 0 THEN NULL ELSE 1 + (g * 7) % 97 END,
               '{}'
          FROM generate_series(0, 119999) g
        """
    )
    # And in course 1007 (account 107), under both root accounts, a few events of each
    # combination of the filter values the test asks for, spread over the whole period.
    await conn.execute(
        """
        INSERT INTO events (event_id, created_at, event_type, event_source, course_id,
                            account_id, root_account_id, user_id, event_data)
        SELECT gen_random_uuid(),
               '2026-10-01T00:00:00Z'::timestamptz + (g * 7919 % 4700) * interval '1000 s',
               t, s, 1007, 107, r, u, '{}'
          FROM unnest(ARRAY['published', 'concluded', 'created', 'updated']) t,
               unnest(ARRAY['sis', 'api']) s, unnest(ARRAY[1, 2]) r,
               unnest(ARRAY[$1::bigint, 3]) u, generate_series(1, 4) g
        """,
        USER_ID,
    )
    await conn.execute("ANALYZE events")
    return conn


async def _parent_index(conn: asyncpg.Connection[Any], name: str, cache: dict[str, str]) -> str:
    """The index of `events` a partition's index is attached to."""
    if name not in cache:
        parent = await conn.fetchval(
            "SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE i.inhrelid = $1::regclass",
            name,
        )
        cache[name] = parent or name
    return cache[name]


def _combinations(user: int) -> list[Filters]:
    """Every combination of the three filters, with one and with several event types."""
    out = []
    for types, with_user, with_source in itertools.product(
        [(), ONE_TYPE, SEVERAL_TYPES], [False, True], [False, True]
    ):
        filters = Filters(types, user if with_user else None, SOURCE if with_source else None)
        if filters.active:
            out.append(filters)
    assert len(out) == 11
    return out


def _intended(column: str, filters: Filters) -> str:
    if filters.user_id is not None:
        return USER[column]
    if filters.event_types:
        return TYPE[column]
    return ORDER[column]  # event_source alone: the order index, the source checked per row


async def _expected(
    conn: asyncpg.Connection[Any], column: str, key: int, roots: list[int], filters: Filters
) -> list[tuple[str, datetime, int]]:
    """The filtered events of `key`, newest first, by a plain query written here."""
    rows = await conn.fetch(
        f"SELECT event_id::text AS event_id, created_at, seq, event_type, user_id, event_source"
        f" FROM events WHERE {column} = $1 AND root_account_id = ANY($2::bigint[])",
        key,
        roots,
    )
    kept = [
        (r["event_id"], r["created_at"], r["seq"])
        for r in rows
        if (not filters.event_types or r["event_type"] in filters.event_types)
        and (filters.user_id is None or r["user_id"] == filters.user_id)
        and (filters.event_source is None or r["event_source"] == filters.event_source)
    ]
    return sorted(kept, key=lambda e: (e[1], e[2]), reverse=True)


async def _explain(conn: asyncpg.Connection[Any], sql: str, args: list[Any]) -> dict[str, Any]:
    raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
    plan: dict[str, Any] = orjson.loads(raw)[0]["Plan"]
    return plan


@pytest.mark.parametrize("roots", [[1], [1, 2]], ids=["one-root", "two-roots"])
@pytest.mark.parametrize(("column", "key"), [("course_id", 1007), ("account_id", 107)])
async def test_every_filter_combination_reads_its_index_and_pages_exactly(
    store: asyncpg.Connection[Any], column: str, key: int, roots: list[int]
) -> None:
    conn = store
    user = USER_ID
    parents: dict[str, str] = {}
    start = await conn.fetchval("SELECT '2026-10-03T00:00:00Z'::timestamptz")
    for filters in _combinations(user):
        expected = await _expected(conn, column, key, roots, filters)
        assert expected, filters  # every combination selects some events of the key
        per_type = len(filters.event_types) > 1 and filters.user_id is None
        ranges = len(roots) * (len(filters.event_types) if per_type else 1)

        # Page through everything, 40 at a time, and through a window with a cursor.
        seen: list[tuple[str, datetime, int]] = []
        cursor: Cursor | None = None
        plans = []
        while True:
            sql, n = page_sql(column, Window(), cursor, len(roots), filters)
            args = page_args(key, roots, Window(), cursor, 41, filters)
            assert len(args) == n
            plans.append(await _explain(conn, sql, args))
            rows = await conn.fetch(sql, *args)
            seen.extend((r["event_id"], r["created_at"], r["seq"]) for r in rows[:40])
            if len(rows) <= 40:
                break
            cursor = Cursor(rows[39]["created_at"], rows[39]["seq"])
        assert seen == expected, filters

        window = Window(since=start)
        sql, _ = page_sql(column, window, cursor, len(roots), filters)
        args = page_args(key, roots, window, cursor, MAX_PAGE_ROWS, filters)
        assert (
            cursor is None
            or [(r["event_id"], r["created_at"], r["seq"]) for r in await conn.fetch(sql, *args)]
            == [
                e
                for e in expected
                if e[1] >= start and (e[1], e[2]) < (cursor.created_at, cursor.seq)
            ][:MAX_PAGE_ROWS]
        )
        plans.append(await _explain(conn, sql, args))
        # And the generic plan a prepared statement ends up with.
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        try:
            plans.append(await _explain(conn, sql, args))
        finally:
            await conn.execute("RESET plan_cache_mode")

        intended = _intended(column, filters)
        source_alone = filters == Filters(event_source=SOURCE)
        for plan in plans:
            nodes = _nodes(plan)
            kinds = [n["Node Type"] for n in nodes]
            assert "Seq Scan" not in kinds, (filters, kinds)
            ordered = [n for n in nodes if n["Node Type"] in ("Index Scan", "Index Only Scan")]
            bitmaps = [n for n in nodes if n["Node Type"] == "Bitmap Index Scan"]
            assert ordered or bitmaps, (filters, kinds)
            used = {await _parent_index(conn, n["Index Name"], parents) for n in ordered}
            assert used <= {intended}, (filters, used)
            # Where the planner expects fewer matches than a page, it may fetch them through
            # the index's range in one sweep (a bitmap) and sort those few. A source alone has
            # no index of its own: such a sweep may take any index of the key.
            swept = {await _parent_index(conn, n["Index Name"], parents) for n in bitmaps}
            keys = {ORDER[column], TYPE[column], USER[column]}
            assert swept <= (keys if source_alone else {intended}), (filters, swept)
            # Each range is read in the API's order and stops after a page: a sort merges at
            # most the first rows of each range; only a sweep's matches are sorted otherwise,
            # and then keeping a page's rows at most (top-N), never the whole set.
            sorts = [n for n in nodes if "Sort" in n["Node Type"]]
            for sort in sorts:
                fed = sum(c["Actual Rows"] * c["Actual Loops"] for c in sort["Plans"])
                # (PostgreSQL sorts up to twice a LIMIT's rows in full, a heap beyond.)
                bounded = sort.get("Sort Method") == "top-N heapsort" or (
                    fed <= 2 * MAX_PAGE_ROWS * sort["Actual Loops"]
                )
                assert fed <= ranges * MAX_PAGE_ROWS or (bitmaps and bounded), (
                    filters,
                    fed,
                    sort.get("Sort Method"),
                )
            if ranges == 1 and not bitmaps:
                assert not sorts, (filters, kinds)
            # The filters' columns are index conditions of the range where the index has them.
            conds = " ".join(n.get("Index Cond", "") for n in ordered + bitmaps)
            if column == "course_id":
                continue
            if filters.user_id is not None:
                assert "user_id =" in conds, (filters, conds)
            elif filters.event_types:
                assert "event_type =" in conds, (filters, conds)


@pytest.mark.parametrize("roots", [[1], [1, 2]], ids=["one-root", "two-roots"])
@pytest.mark.parametrize(("column", "key"), [("course_id", 1007), ("account_id", 107)])
async def test_the_live_tails_filtered_queries_read_indexes_and_select_exactly(
    store: asyncpg.Connection[Any], column: str, key: int, roots: list[int]
) -> None:
    """The live tail's group query (docs/design.md#live-tail) with each combination of
    filters, in each of its shapes: a notified batch (a seq range), a catch-up (after a key,
    or stored late), a resume's backfill (after a key, page by page)."""
    conn = store
    parents: dict[str, str] = {}
    since = await conn.fetchval("SELECT '2026-10-01T00:00:00Z'::timestamptz")
    keys = {ORDER[column], TYPE[column], USER[column]}
    for filters in _combinations(USER_ID):
        newest_first = await _expected(conn, column, key, roots, filters)
        recent = [e for e in reversed(newest_first) if e[1] >= since]
        assert len(recent) >= 4, filters
        middle = recent[len(recent) // 2]
        after = Cursor(middle[1], middle[2])
        seqs = sorted(e[2] for e in recent)
        lo, hi = seqs[1], seqs[-2]
        top_seq = max(e[2] for e in newest_first)

        def ids(rows: list[Any]) -> list[str]:
            return [str(r.event_id) for r in rows]

        # What each shape selects: the filtered events, oldest first (written out here).
        assert ids(await tail_page(conn, column, key, roots, since, filters=filters)) == [
            e[0] for e in recent
        ], filters
        assert ids(
            await tail_page(conn, column, key, roots, since, seq_range=(lo, hi), filters=filters)
        ) == [e[0] for e in recent if lo <= e[2] <= hi], filters
        assert ids(
            await tail_page(conn, column, key, roots, since, after=after, filters=filters)
        ) == [e[0] for e in recent if (e[1], e[2]) > (after.created_at, after.seq)], filters
        paged: list[str] = []
        page: Cursor | None = None
        while True:
            rows = await tail_page(
                conn, column, key, roots, since, after=after, page=page, limit=3, filters=filters
            )
            paged.extend(ids(rows))
            if len(rows) < 3:
                break
            page = rows[-1].cursor
        assert paged == [e[0] for e in recent if (e[1], e[2]) > (after.created_at, after.seq)]

        shapes = [
            (TailSpec(seq_range=True), [lo, hi]),
            (TailSpec(after=True, late=True), [after.created_at, after.seq, top_seq]),
            (TailSpec(after=True, page=True), [after.created_at, after.seq, *after_page(after)]),
        ]
        for spec, middle_args in shapes:
            sql, n = tail_sql(column, spec, filters=filters)
            args = [key, roots, since, *middle_args, *filter_args(filters), 1000]
            assert len(args) == n
            plans = [await _explain(conn, sql, args)]
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            try:
                plans.append(await _explain(conn, sql, args))
            finally:
                await conn.execute("RESET plan_cache_mode")
            for plan in plans:
                nodes = _nodes(plan)
                kinds = [node["Node Type"] for node in nodes]
                assert "Seq Scan" not in kinds, (filters, spec, kinds)
                scans = [
                    node
                    for node in nodes
                    if node["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")
                ]
                assert scans, (filters, spec, kinds)
                used = {await _parent_index(conn, node["Index Name"], parents) for node in scans}
                assert used <= keys, (filters, spec, used)


def after_page(after: Cursor) -> list[Any]:
    return [after.created_at, after.seq]


def filter_args(filters: Filters) -> list[Any]:
    """The filters' values in the order tail_sql numbers them (written out here)."""
    out: list[Any] = []
    if filters.event_types:
        types = filters.event_types
        out.append(types[0] if len(types) == 1 else list(types))
    if filters.user_id is not None:
        out.append(filters.user_id)
    if filters.event_source is not None:
        out.append(filters.event_source)
    return out
