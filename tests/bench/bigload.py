"""The big store's loader (bigstore.py): 20,000,000 events in minutes, and a check that the
loaded store has exactly the indexes `course-audit migrate` and the partition code give it.

No bench-only imports, so that tests/integration/test_bench_bigload.py can run it at small n.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from course_audit.produce.sample import MIX
from course_audit.retention import add_months, month_of
from course_audit.store.partitions import PartitionCache, ensure_partition_for, partition_name


def _quiet(message: str) -> None:
    pass


SCALE = 10  # tenants, relative to query.py's store
COURSES = 5000 * SCALE
ACCOUNTS = 50 * SCALE
ROOTS = 5 * SCALE
USERS = 3000 * SCALE
USERS_PER_ROOT = 3000
BIG_COURSES = 5 * SCALE  # five per deep account, each ~120,000 events at 20,000,000
BIG_SHARE = 0.3
MONTHS = 14
WORKERS = 2  # months loaded at once (one connection each)


# --- index definitions -------------------------------------------------------------------


async def index_definitions(conn: asyncpg.Connection, table: str) -> set[tuple[str, ...]]:
    """A table's indexes and key constraints, with its own name replaced by ``<table>``.

    Each index: its definition, the partitioned index it is attached to (if any), and the
    constraint it backs (name and definition). Two partitions created the same way give equal
    sets; a missing, extra, differently defined or unattached index makes them differ.
    """
    rows = await conn.fetch(
        """
        SELECT i.indexname, i.indexdef, parent.relname AS parent_index,
               con.conname, pg_get_constraintdef(con.oid) AS condef
          FROM pg_indexes i
          JOIN pg_class ic ON ic.relname = i.indexname AND ic.relnamespace =
               (SELECT oid FROM pg_namespace WHERE nspname = i.schemaname)
          LEFT JOIN pg_inherits inh ON inh.inhrelid = ic.oid
          LEFT JOIN pg_class parent ON parent.oid = inh.inhparent
          LEFT JOIN pg_constraint con ON con.conindid = ic.oid AND con.contype IN ('p', 'u', 'x')
         WHERE i.tablename = $1 AND i.schemaname = current_schema()
        """,
        table,
    )

    def norm(text: str | None) -> str:
        return "" if text is None else text.replace(table, "<table>")

    return {
        (
            norm(r["indexname"]),
            norm(r["indexdef"]),
            r["parent_index"] or "",
            norm(r["conname"]),
            r["condef"] or "",
        )
        for r in rows
    }


async def strip_indexes(conn: asyncpg.Connection, table: str) -> list[str]:
    """Drop a (not partitioned) table's indexes and key constraints; return the statements
    that rebuild them exactly (same names and definitions)."""
    constraints = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS def, conindid FROM pg_constraint"
        " WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'x')",
        table,
    )
    indexes = await conn.fetch(
        "SELECT i.indexname, i.indexdef, c.oid FROM pg_indexes i"
        " JOIN pg_class c ON c.relname = i.indexname"
        " WHERE i.tablename = $1 AND i.schemaname = current_schema()",
        table,
    )
    backing = {c["conindid"] for c in constraints}
    rebuild = [r["indexdef"] for r in indexes if r["oid"] not in backing]
    rebuild += [
        f'ALTER TABLE "{table}" ADD CONSTRAINT "{c["conname"]}" {c["def"]}' for c in constraints
    ]
    for c in constraints:
        await conn.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{c["conname"]}"')
    for r in indexes:
        if r["oid"] not in backing:
            await conn.execute(f'DROP INDEX "{r["indexname"]}"')
    return rebuild


async def partition_bounds(conn: asyncpg.Connection, name: str) -> str:
    expr: str = await conn.fetchval(
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = $1", name
    )
    return expr


# --- load ----------------------------------------------------------------------------------


def _event_type_sql(r: str) -> str:
    total = sum(MIX.values())
    cases, acc = [], 0
    for name, weight in MIX.items():
        acc += weight
        cases.append(f"WHEN {r} < {acc / total!r} THEN '{name}'")
    return "CASE " + " ".join(cases[:-1]) + f" ELSE '{list(MIX)[-1]}' END"


# One month's events, generated on the server. Indexes: $1..$2 the events' numbers (seq and
# offset too), $3 the first instant, $4 seconds between events, $5/$6 the month's bounds.
# A third of the events share their instant with the one before (bursts), as in query.py.
MONTH_SQL = f"""
INSERT INTO {{table}} (event_id, created_at, seq, event_type, event_source, course_id,
    account_id, root_account_id, user_id, page_view_id, sis_batch_id, related_course_id,
    event_data, topic, "partition", "offset")
SELECT gen_random_uuid(), at, i, event_type,
       (ARRAY['manual', 'api', 'sis'])[1 + floor(r_source * 3)::int],
       course + 1000, account, root,
       CASE WHEN r_user < 0.9
            THEN 5000 + ((root - 1) * {USERS // ROOTS} + floor(r_who * {USERS_PER_ROOT})::int)
                        % {USERS} END,
       CASE WHEN r_user < 0.9 AND r_view < 0.25 THEN gen_random_uuid()::text END,
       NULL,
       CASE WHEN event_type LIKE 'copied%' OR event_type LIKE 'reset%'
            THEN 1000 + floor(r_related * {COURSES})::bigint END,
       CASE WHEN event_type IN ('created', 'updated')
            THEN jsonb_build_object('name', jsonb_build_array(
                     'Course ' || (course + 1000),
                     'Course ' || (course + 1000) || ' (' || i % 7 || ')'))
            ELSE '{{{{}}}}'::jsonb END,
       'bench', 0, i
  FROM (SELECT i, at, course, account, 1 + account % {ROOTS} AS root, event_type,
               r_source, r_user, r_who, r_view, r_related
          FROM (SELECT i, at, course,
                       CASE WHEN course < {BIG_COURSES} THEN 100 + course / 5
                            ELSE 100 + course % {ACCOUNTS} END AS account,
                       {_event_type_sql("r_type")} AS event_type,
                       r_source, r_user, r_who, r_view, r_related
                  FROM (SELECT i, $3::timestamptz
                                  + make_interval(secs => (i - (i % 3 = 2)::int) * $4::float8)
                                  AS at,
                               CASE WHEN random() < {BIG_SHARE}
                                    THEN floor(random() * {BIG_COURSES})::bigint
                                    ELSE floor(random() * {COURSES})::bigint END AS course,
                               random() AS r_type, random() AS r_source, random() AS r_user,
                               random() AS r_who, random() AS r_view, random() AS r_related
                          FROM generate_series($1::bigint, $2::bigint) AS i
                        OFFSET 0) AS g
                 OFFSET 0) AS h) AS e
 WHERE at >= $5 AND at < $6
"""

PAGE_VIEWS_SQL = """
INSERT INTO page_views (id, root_account_id, data, as_of)
SELECT page_view_id, root_account_id,
       jsonb_build_object(
           'id', page_view_id, 'url', 'https://canvas.example.edu/courses/1/settings',
           'context_type', 'Course', 'controller', 'courses', 'action', 'update',
           'interaction_seconds', 3.5, 'created_at', created_at, 'user_request', true,
           'render_time', 0.12, 'user_agent', 'Mozilla/5.0', 'participated', false,
           'http_method', 'put', 'remote_ip', '10.0.0.1'),
       created_at
  FROM {table} WHERE page_view_id IS NOT NULL
"""


async def _session(conn: asyncpg.Connection) -> None:
    await conn.execute("SET maintenance_work_mem = '512MB'")
    await conn.execute("SET max_parallel_maintenance_workers = 0")
    await conn.execute("SET synchronous_commit = off")
    # The snapshot tables' announcement triggers (migration 0006) stay quiet during the load:
    # no API runs yet, and each starts with an empty cache. Hundreds of thousands of page
    # views per statement would otherwise be announced in thousands of notifications.
    await conn.execute("SET session_replication_role = replica")


async def _load_month(
    db_url: str,
    month: date,
    n: int,
    start: datetime,
    step: float,
    timings: dict[str, float],
    log: Callable[[str], None],
) -> int:
    name = partition_name(month)
    lo_at = datetime(month.year, month.month, 1, tzinfo=UTC)
    nxt = add_months(month, 1)
    hi_at = datetime(nxt.year, nxt.month, 1, tzinfo=UTC)
    first = max(0, int((lo_at - start).total_seconds() / step) - 2)
    last = min(n - 1, int((hi_at - start).total_seconds() / step) + 2)
    conn = await asyncpg.connect(db_url)
    try:
        await _session(conn)
        bounds = await partition_bounds(conn, name)
        t0 = time.perf_counter()
        await conn.execute(f'ALTER TABLE events DETACH PARTITION "{name}"')
        rebuild = await strip_indexes(conn, name)
        t1 = time.perf_counter()
        status = await conn.execute(
            MONTH_SQL.format(table=f'"{name}"'), first, last, start, step, lo_at, hi_at
        )
        rows = int(status.split()[-1])
        await conn.execute(
            "INSERT INTO event_ids (event_id, created_at)"
            f' SELECT event_id, created_at FROM "{name}"'
        )
        await conn.execute(PAGE_VIEWS_SQL.format(table=f'"{name}"'))
        t2 = time.perf_counter()
        for statement in rebuild:
            await conn.execute(statement)
        t3 = time.perf_counter()
        # Hint bits and the visibility map set now, as on a store that has been running, and
        # not by autovacuum (and the first readers) during the measurements.
        await conn.execute(f'VACUUM "{name}"')
        t4 = time.perf_counter()
        await conn.execute(f'ALTER TABLE events ATTACH PARTITION "{name}" {bounds}')
        t5 = time.perf_counter()
    finally:
        await conn.close()
    for key, value in (
        ("insert", t2 - t1),
        ("indexes", t3 - t2),
        ("vacuum", t4 - t3),
        ("attach", t5 - t4),
    ):
        timings[key] = timings.get(key, 0.0) + value
    log(f"  {name}: {rows:,} events ({t5 - t0:.1f} s)")
    return rows


async def load_big(
    db_url: str, n: int, workers: int = WORKERS, log: Callable[[str], None] = _quiet
) -> dict[str, Any]:
    """Load n events over the 14 months ending now; return the load's figures."""
    now = datetime.now(UTC).replace(microsecond=0)
    current = month_of(now)
    months = [add_months(current, -k) for k in range(MONTHS - 1, -1, -1)]
    start = datetime(months[0].year, months[0].month, 1, tzinfo=UTC) + timedelta(hours=1)
    step = (now - start).total_seconds() / n
    timings: dict[str, float] = {}
    started = time.perf_counter()
    conn = await asyncpg.connect(db_url)
    try:
        await _session(conn)
        # The service's own partition code: the 14 months and, untouched, the next month as
        # the reference for the index check.
        await ensure_partition_for(conn, [*months, add_months(current, 1)], cache=PartitionCache())
        snapshot_rebuild = {t: await strip_indexes(conn, t) for t in ("event_ids", "page_views")}
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(workers)

        async def one(month: date) -> int:
            async with sem:
                return await _load_month(db_url, month, n, start, step, timings, log)

        counts = await asyncio.gather(*(one(m) for m in months))
        total = sum(counts)
        if total != n:
            raise RuntimeError(f"loaded {total:,} events, expected {n:,}")
        t_months = time.perf_counter() - t0
        await conn.execute(f"SELECT setval('events_seq', {n + 1})")
        t0 = time.perf_counter()
        # event_ids' primary key and page_views' in parallel, on two connections.
        other = await asyncpg.connect(db_url)
        try:
            await _session(other)
            await asyncio.gather(
                *(
                    _run_all(c, statements)
                    for c, statements in zip((conn, other), snapshot_rebuild.values(), strict=True)
                )
            )
        finally:
            await other.close()
        t_ids = time.perf_counter() - t0
        t0 = time.perf_counter()
        await _snapshots(conn, now)
        t_snap = time.perf_counter() - t0
        t0 = time.perf_counter()
        log("  VACUUM ANALYZE")
        # ANALYZE of the partitioned table samples every partition and analyzes each.
        await conn.execute("VACUUM (ANALYZE) event_ids, page_views, courses, users, accounts")
        await conn.execute("ANALYZE events")
        # The load's dirty pages written now, not by a checkpoint during the measurements.
        await conn.execute("CHECKPOINT")
        t_analyze = time.perf_counter() - t0
    finally:
        await conn.close()
    elapsed = time.perf_counter() - started
    return {
        "events": n,
        "seconds": round(elapsed, 1),
        "events_per_s": round(n / elapsed),
        "phases_s": {
            "months (insert, indexes, vacuum, attach; parallel)": round(t_months, 1),
            "event_ids and page_views keys": round(t_ids, 1),
            "snapshots": round(t_snap, 1),
            "vacuum and analyze": round(t_analyze, 1),
        },
        "month_work_s": {k: round(v, 1) for k, v in timings.items()},
        "workers": workers,
        "months": [partition_name(m) for m in months],
        "reference_partition": partition_name(add_months(current, 1)),
    }


async def _run_all(conn: asyncpg.Connection, statements: list[str]) -> None:
    for statement in statements:
        await conn.execute(statement)


async def _snapshots(conn: asyncpg.Connection, now: datetime) -> None:
    await conn.execute(
        f"""
        INSERT INTO courses (id, root_account_id, account_id, sis_course_id, data, as_of)
        SELECT c + 1000, 1 + a % {ROOTS}, a, 'SIS-' || (c + 1000),
               jsonb_build_object('id', c + 1000, 'account_id', a,
                   'root_account_id', 1 + a % {ROOTS}, 'name', 'Course ' || (c + 1000),
                   'course_code', 'C-' || (c + 1000), 'workflow_state', 'available',
                   'sis_course_id', 'SIS-' || (c + 1000), 'start_at', '2026-08-24T06:00:00Z',
                   'is_public', false, 'time_zone', 'America/Denver',
                   'default_view', 'modules'),
               $1
          FROM (SELECT c, CASE WHEN c < {BIG_COURSES} THEN 100 + c / 5
                               ELSE 100 + c % {ACCOUNTS} END AS a
                  FROM generate_series(0, {COURSES - 1}) AS c) AS x
        """,
        now,
    )
    # Each root account sees USERS_PER_ROOT users (a window of the user ids), as the events do.
    await conn.execute(
        f"""
        INSERT INTO users (id, root_account_id, data, as_of)
        SELECT 5000 + u, root,
               jsonb_build_object('id', 5000 + u, 'name', 'User ' || u,
                   'sortable_name', u || ', User', 'login_id', 'u' || u),
               $1
          FROM generate_series(1, {ROOTS}) AS root,
               LATERAL (SELECT ((root - 1) * {USERS // ROOTS} + k) % {USERS} AS u
                          FROM generate_series(0, {USERS_PER_ROOT - 1}) AS k) AS w
        """,
        now,
    )
    await conn.execute(
        "INSERT INTO accounts (id, root_account_id, as_of)"
        " SELECT account_id, root_account_id, max(created_at) FROM events GROUP BY 1, 2"
    )


async def load_check(
    conn: asyncpg.Connection, fresh: asyncpg.Connection, info: dict[str, Any]
) -> None:
    """Every loaded partition has exactly the indexes of an untouched one, and the
    unpartitioned tables those of a freshly migrated database; raise otherwise."""
    reference = await index_definitions(conn, info["reference_partition"])
    if not reference:
        raise RuntimeError("the reference partition has no indexes")
    for name in info["months"]:
        got = await index_definitions(conn, name)
        if got != reference:
            raise RuntimeError(f"{name}: indexes differ: {sorted(got ^ reference)}")
    for table in ("events", "event_ids", "page_views", "courses", "users", "accounts"):
        got, want = await index_definitions(conn, table), await index_definitions(fresh, table)
        if got != want:
            raise RuntimeError(f"{table}: indexes differ: {sorted(got ^ want)}")
