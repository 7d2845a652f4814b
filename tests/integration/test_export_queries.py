"""The export's read queries against a real PostgreSQL: order, keyset chunks, resume, plans."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from course_audit.retention import month_of
from course_audit.store.export import (
    Clause,
    event_position,
    export_chunks,
    export_query,
    known_roots,
)
from course_audit.store.partitions import PartitionCache, ensure_partition_for
from course_audit.store.queries import Cursor, Window

START = datetime(2026, 8, 1, tzinfo=UTC)


async def _fill(conn: asyncpg.Connection[Any], n: int) -> None:
    """`n` events over three months, 20 per instant: course 42 in account 100 under root
    accounts 1 (three in four) and 2 (one in four), course 43 (noise) every fifth."""
    months = {month_of(START + timedelta(days=d)) for d in range(0, 100, 10)}
    await ensure_partition_for(conn, months, cache=PartitionCache())
    await conn.execute(
        """
        INSERT INTO events (event_id, created_at, event_type, event_source, course_id,
                            account_id, root_account_id, event_data)
        SELECT gen_random_uuid(), $1::timestamptz + (g / 20) * interval '16 minutes',
               'updated', 'api', CASE WHEN g % 5 = 0 THEN 43 ELSE 42 END, 100,
               CASE WHEN g % 4 = 0 THEN 2 ELSE 1 END, jsonb_build_object('g', g)
          FROM generate_series(1, $2) g
        """,
        START,
        n,
    )
    await conn.execute(
        "INSERT INTO courses (id, root_account_id, account_id, data, as_of)"
        " VALUES (42, 1, 100, '{}', now()), (42, 2, 100, '{}', now())"
    )
    await conn.execute("ANALYZE events")


async def _all(conn: asyncpg.Connection[Any], column: str, key: int, roots: list[int]) -> list[int]:
    """The `g` of every matching event in (created_at, seq) order, the slow way."""
    rows = await conn.fetch(
        f"SELECT (event_data->>'g')::int AS g FROM events WHERE {column} = $1"
        " AND root_account_id = ANY($2::bigint[]) ORDER BY created_at, seq",
        key,
        roots,
    )
    return [r["g"] for r in rows]


async def _export(
    conn: asyncpg.Connection[Any], column: str, key: int, roots: list[int], **kw: Any
) -> list[int]:
    out: list[int] = []
    async with contextlib.aclosing(export_chunks(conn, column, key, roots, **kw)) as chunks:
        async for rows in chunks:
            assert 0 < len(rows) <= kw.get("chunk", 2000)
            out.extend(orjson.loads(r.event_data)["g"] for r in rows)
    return out


@pytest.mark.parametrize("roots", [[1], [2], [1, 2]])
async def test_chunks_return_every_event_once_oldest_first(
    conn: asyncpg.Connection[Any], roots: list[int]
) -> None:
    await _fill(conn, 5000)
    expected = await _all(conn, "course_id", 42, roots)
    assert len(expected) == {(1,): 3000, (2,): 1000, (1, 2): 4000}[tuple(roots)]
    for chunk in (7, 333, 2000):
        got = await _export(conn, "course_id", 42, roots, window=Window(), chunk=chunk)
        assert got == expected
    # The account export reads course 43 too.
    assert await _export(conn, "account_id", 100, roots, window=Window()) == await _all(
        conn, "account_id", 100, roots
    )


async def test_window_resume_and_extra_clauses(conn: asyncpg.Connection[Any]) -> None:
    await _fill(conn, 2000)
    since, until = START + timedelta(hours=4), START + timedelta(hours=20)
    rows = await conn.fetch(
        "SELECT event_id::text AS id, created_at, seq, (event_data->>'g')::int AS g FROM events"
        " WHERE course_id = 42 AND created_at >= $1 AND created_at < $2"
        " ORDER BY created_at, seq",
        since,
        until,
    )
    window = Window(since, until)
    assert await _export(conn, "course_id", 42, [1, 2], window=window, chunk=50) == [
        r["g"] for r in rows
    ]
    # Resuming after the 100th event of the window gives exactly the ones after it.
    middle = rows[99]
    position = await event_position(conn, "course_id", 42, [1, 2], middle["id"])
    assert position == Cursor(middle["created_at"], middle["seq"])
    rest = await _export(conn, "course_id", 42, [1, 2], window=window, after=position, chunk=50)
    assert rest == [r["g"] for r in rows[100:]]
    # An extra clause (how filters join) with its own argument.
    odd = await _export(
        conn, "course_id", 42, [1, 2], window=window, extra=[Clause("seq % {} = 1", (2,))]
    )
    assert odd == [r["g"] for r in rows if r["seq"] % 2 == 1]


async def test_event_position_is_none_outside_the_export(conn: asyncpg.Connection[Any]) -> None:
    await _fill(conn, 100)
    row = await conn.fetchrow(
        "SELECT event_id::text AS id FROM events WHERE course_id = 42 AND root_account_id = 2"
        " LIMIT 1"
    )
    assert row is not None
    assert await event_position(conn, "course_id", 42, [2], row["id"]) is not None
    assert await event_position(conn, "course_id", 42, [1], row["id"]) is None  # other tenant
    assert await event_position(conn, "course_id", 43, [2], row["id"]) is None  # other course
    assert await event_position(conn, "account_id", 100, [2], row["id"]) is not None
    missing = "00000000-0000-4000-8000-000000000000"
    assert await event_position(conn, "course_id", 42, [2], missing) is None
    assert await known_roots(conn, "course_id", 42) == [1, 2]
    assert await known_roots(conn, "course_id", 4242) == []


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out.extend(_nodes(child))
    return out


def _literal(value: Any) -> str:
    if isinstance(value, list):
        return f"'{{{','.join(str(int(v)) for v in value)}}}'::bigint[]"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    return str(int(value))


async def _explain(
    conn: asyncpg.Connection[Any], sql: str, args: list[Any], generic: bool
) -> dict[str, Any]:
    # A prepared statement, as asyncpg runs it; EXPLAIN EXECUTE shows the plan it gets.
    mode = "force_generic_plan" if generic else "force_custom_plan"
    await conn.execute(f"SET plan_cache_mode = {mode}")
    await conn.execute(f"PREPARE chunk AS {sql}")
    try:
        literals = ", ".join(_literal(a) for a in args)
        raw = await conn.fetchval(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE chunk({literals})"
        )
    finally:
        await conn.execute("DEALLOCATE chunk")
        await conn.execute("RESET plan_cache_mode")
    plan: dict[str, Any] = orjson.loads(raw)[0]["Plan"]
    return plan


@pytest.mark.parametrize("generic", [False, True])
@pytest.mark.parametrize("roots", [[1], [1, 2]])
@pytest.mark.parametrize("column", ["course_id", "account_id"])
async def test_chunks_are_backward_index_range_scans(
    conn: asyncpg.Connection[Any], generic: bool, roots: list[int], column: str
) -> None:
    # 160,000 events, course 42 nearly all of them: a statement planned for reading every
    # row of it could well choose a sequential scan and a sort; a chunk must not.
    await _fill(conn, 160_000)
    key = 42 if column == "course_id" else 100
    deep = await conn.fetchrow(
        f"SELECT created_at, seq FROM events WHERE {column} = $1 AND root_account_id = 1"
        " ORDER BY created_at, seq OFFSET 60000 LIMIT 1",
        key,
    )
    assert deep is not None
    window = Window(START + timedelta(days=2), START + timedelta(days=80))
    for after in (None, Cursor(deep["created_at"], deep["seq"])):
        sql, args = export_query(column, key, roots, window, after, limit=2000)
        plan = await _explain(conn, sql, args, generic)
        nodes = _nodes(plan)
        kinds = {n["Node Type"] for n in nodes}
        assert "Seq Scan" not in kinds and "Bitmap Heap Scan" not in kinds, kinds
        # With several root accounts, the merge of their chunks is the only sort, of at most
        # one chunk per root account.
        sorts = [n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort")]
        assert len(sorts) == (len(roots) > 1), kinds
        assert all(n["Actual Rows"] * n["Actual Loops"] <= 2000 * len(roots) for n in sorts)
        scans = [n for n in nodes if n["Node Type"] in ("Index Scan", "Index Only Scan")]
        index = f"{column}_root_account_id_created_at_seq_idx"
        assert scans and all(n["Index Name"].endswith(index) for n in scans), scans
        assert all(n["Scan Direction"] == "Backward" for n in scans)
        # One chunk reads the chunk: no more rows than it returns (per root account branch).
        assert plan["Actual Rows"] == 2000
        assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= 2000 * len(roots)
        if after is not None:
            assert any("ROW(created_at, seq) >" in n.get("Index Cond", "") for n in scans)
