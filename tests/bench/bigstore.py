"""Big-store benchmark: 20,000,000 events over 14 monthly partitions, then ingest and pages.

The store is the query benchmark's (query.py) made ten times bigger by growing the number of
tenants, not the size of each: ten times the courses (50,000), accounts (500), root accounts
(50) and users (30,000, each root account seeing 3,000 of them), with every course, account
and root account holding as many events as in the 2,000,000-event store. The queried courses
(1000-1004) and account (100) are the same size in both stores, so their page latencies differ
only by what the store's size does to them (index depth, cache), not by longer index ranges.

Load (not through Kafka, fast): the 14 monthly partitions are created by the service's own
code (store/partitions.py), then each is detached, stripped of its indexes, filled by
INSERT ... SELECT generate_series on the server (several months in parallel, one connection
each), given back exactly the indexes it had, and attached again (PostgreSQL adopts the
matching indexes). event_ids and page_views are filled without their indexes, which are then
rebuilt from their own definitions. After ANALYZE, index definitions are compared with an
untouched partition of the same store and with a freshly migrated database (load_check).

Measured: `course-audit consume` storing the same messages as ingest.py's service run, on an
empty store and on the big one (same run, interleaved); both endpoints' first and deep pages
through `course-audit serve` against the query benchmark's 2,000,000-event figures; table and
index sizes per event.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from common import Report, median, progress, stop_with_peak_rss
from ingest import BATCH, Databases, build_messages, prefill, run_service
from query import PER_PAGE, _loadgen, deep_cursor

from course_audit.api.params import encode_bookmark
from course_audit.produce.sample import MIX
from course_audit.retention import add_months, month_of
from course_audit.store.partitions import PartitionCache, ensure_partition_for, partition_name
from course_audit.store.tokens import create_token
from service_process import ServiceProcess

SCALE = 10  # tenants, relative to query.py's store
COURSES = 5000 * SCALE
ACCOUNTS = 50 * SCALE
ROOTS = 5 * SCALE
USERS = 3000 * SCALE
USERS_PER_ROOT = 3000
BIG_COURSES = 5 * SCALE  # five per deep account, each ~120,000 events at 20,000,000
BIG_SHARE = 0.3
MONTHS = 14
QUERIED_COURSES = [1000 + c for c in range(5)]  # the big courses of account 100, as query.py
QUERIED_ACCOUNT = 100
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


async def _load_month(
    db_url: str, month: date, n: int, start: datetime, step: float, timings: dict[str, float]
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
        await conn.execute(f'ALTER TABLE events ATTACH PARTITION "{name}" {bounds}')
        t4 = time.perf_counter()
    finally:
        await conn.close()
    for key, value in (("insert", t2 - t1), ("indexes", t3 - t2), ("attach", t4 - t3)):
        timings[key] = timings.get(key, 0.0) + value
    progress(f"  {name}: {rows:,} events ({t4 - t0:.1f} s)")
    return rows


async def load_big(db_url: str, n: int, workers: int = WORKERS) -> dict[str, Any]:
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
                return await _load_month(db_url, month, n, start, step, timings)

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
        progress("  ANALYZE")
        await conn.execute("ANALYZE")
        t_analyze = time.perf_counter() - t0
    finally:
        await conn.close()
    elapsed = time.perf_counter() - started
    return {
        "events": n,
        "seconds": round(elapsed, 1),
        "events_per_s": round(n / elapsed),
        "phases_s": {
            "months (insert, indexes, attach; parallel)": round(t_months, 1),
            "event_ids and page_views keys": round(t_ids, 1),
            "snapshots": round(t_snap, 1),
            "analyze": round(t_analyze, 1),
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


# --- sizes ---------------------------------------------------------------------------------


async def sizes(conn: asyncpg.Connection, events: int) -> list[dict[str, Any]]:
    """Bytes of the tables and of each index; events' over all its partitions."""
    out = []
    tree = "(SELECT relid FROM pg_partition_tree($1::text::regclass)) AS tree"
    heap = await conn.fetchval(f"SELECT sum(pg_table_size(relid)) FROM {tree}", "events")
    out.append({"relation": "events (heap + TOAST, all partitions)", "bytes": int(heap)})
    for row in await conn.fetch(
        "SELECT indexrelid::regclass::text AS name FROM pg_index"
        " WHERE indrelid = 'events'::regclass ORDER BY 1"
    ):
        b = await conn.fetchval(f"SELECT sum(pg_relation_size(relid)) FROM {tree}", row["name"])
        out.append({"relation": f"  index {row['name']}", "bytes": int(b)})
    idx = await conn.fetchval(f"SELECT sum(pg_indexes_size(relid)) FROM {tree}", "events")
    out.append({"relation": "events indexes", "bytes": int(idx)})
    out.append({"relation": "events total", "bytes": int(heap) + int(idx)})
    for table in ("event_ids", "page_views", "courses", "users", "accounts"):
        row = await conn.fetchrow(
            "SELECT pg_table_size($1::text::regclass) AS t,"
            " pg_indexes_size($1::text::regclass) AS i,"
            " (SELECT count(*) FROM " + table + ") AS n",
            table,
        )
        out.append({"relation": f"{table} ({row['n']:,} rows)", "bytes": int(row["t"])})
        out.append({"relation": f"{table} indexes", "bytes": int(row["i"])})
    db = await conn.fetchval("SELECT pg_database_size(current_database())")
    out.append({"relation": "database", "bytes": int(db)})
    for entry in out:
        entry["bytes_per_event"] = round(entry["bytes"] / events, 1)
    return out


# --- measurements --------------------------------------------------------------------------


async def measure_pages(
    db: str, depth: int, repeats: int, duration: float, concurrency: int, log_dir: Path, tag: str
) -> tuple[dict[str, list[dict[str, Any]]], float | None]:
    """Both endpoints' first and deep pages through `course-audit serve` (query.py's way)."""
    conn = await asyncpg.connect(db)
    try:
        # Root account 1 holds account 100 and its courses in both stores (query.py, here).
        token = (await create_token(conn, "bench", [1])).token
    finally:
        await conn.close()
    cursors = {c: await deep_cursor(db, "course_id", c, depth) for c in QUERIED_COURSES}
    account_cursor = await deep_cursor(db, "account_id", QUERIED_ACCOUNT, depth)
    api = ServiceProcess(
        "serve",
        {"AUDIT_DATABASE_URL": db, "AUDIT_MIGRATE_ON_START": "false"},
        log_dir / f"bigstore-api-{tag}.log",
    ).start()
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        await api.wait_ready(120)
        a = f"{api.base_url}/api/v1/audit/course"
        targets = {
            "course_first_api": [f"{a}/courses/{k}?per_page={PER_PAGE}" for k in QUERIED_COURSES],
            "course_deep_api": [
                f"{a}/courses/{k}?page={encode_bookmark(cursors[k])}&per_page={PER_PAGE}"
                for k in QUERIED_COURSES
            ],
            "account_first_api": [f"{a}/accounts/{QUERIED_ACCOUNT}?per_page={PER_PAGE}"],
            "account_deep_api": [
                f"{a}/accounts/{QUERIED_ACCOUNT}?page={encode_bookmark(account_cursor)}"
                f"&per_page={PER_PAGE}"
            ],
        }
        runs = {name: [] for name in targets}
        for r in range(repeats):
            for name, urls in targets.items():
                result = await asyncio.to_thread(
                    _loadgen, urls, token, concurrency, duration, log_dir
                )
                runs[name].append(result)
                progress(
                    f"  {tag} run {r + 1}/{repeats} {name}: {result['rps']:,.0f} req/s, "
                    f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms"
                )
    finally:
        rss = stop_with_peak_rss(api)
    return runs, rss


def _medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    return {
        name: {k: median(run[k] for run in rs) for k in ("rps", "p50_ms", "p99_ms")}
        for name, rs in runs.items()
    }


async def bench_bigstore(
    endpoints: Any,
    n: int,
    ingest_n: int,
    depth: int,
    repeats: int,
    duration: float,
    concurrency: int,
    log_dir: Path,
    query_report: Report | None = None,
    baseline_n: int = 2_000_000,
) -> Report:
    report = Report(
        "bigstore",
        {
            "events": n,
            "months": MONTHS,
            "courses": COURSES,
            "accounts": ACCOUNTS,
            "root_accounts": ROOTS,
            "users": USERS,
            "queried_courses": QUERIED_COURSES,
            "queried_account": QUERIED_ACCOUNT,
            "per_page": PER_PAGE,
            "deep_page": depth,
            "concurrency": concurrency,
            "seconds_per_measurement": duration,
            "repeats": repeats,
            "ingest_messages": ingest_n,
            "batch_max_records": BATCH,
            "load_workers": WORKERS,
        },
        targets={
            "ingest_big_vs_empty": ">= 0.6",
            "course_first_p50_vs_2m": "<= 1.2",
            "course_deep_p50_vs_2m": "<= 1.2",
            "account_first_p50_vs_2m": "<= 1.2",
            "account_deep_p50_vs_2m": "<= 1.2",
        },
    )
    dbs = Databases(endpoints.database_url)
    runs: dict[str, list[dict[str, Any]]] = {}

    # The 2,000,000-event figures: this run's query benchmark, else measured here.
    if query_report is not None:
        base = {k: v for k, v in query_report.medians.items() if k.endswith("_api")}
        baseline_n = int(query_report.parameters["events"])
        report.notes.append("2M figures: this run's query benchmark (bench-results/query.json)")
    else:
        from query import load as load_small

        db = await dbs.fresh()
        progress(f"bigstore: no query result in this run; loading {baseline_n:,} events (query.py)")
        try:
            await load_small(db, baseline_n)
            small_runs, rss = await measure_pages(
                db, depth, repeats, duration, concurrency, log_dir, "small"
            )
            report.note_rss("serve", rss)
        finally:
            await dbs.drop(db)
        for name, rs in small_runs.items():
            runs[f"small_{name}"] = rs
        base = _medians(small_runs)
        report.notes.append("2M figures: measured by this benchmark with query.py's loader")
    report.parameters["baseline_events"] = baseline_n

    big = await dbs.fresh()
    try:
        progress(f"bigstore: loading {n:,} events over {MONTHS} monthly partitions")
        info = await load_big(big, n)
        progress(f"  loaded in {info['seconds']:.0f} s ({info['events_per_s']:,} events/s)")
        conn = await asyncpg.connect(big)
        fresh_url = await dbs.fresh()
        fresh = await asyncpg.connect(fresh_url)
        try:
            await load_check(conn, fresh, info)
            progress("  indexes: identical to an untouched partition and a migrated store")
            info["indexes_checked"] = True
            size_rows = await sizes(conn, n)
        finally:
            await conn.close()
            await fresh.close()
            await dbs.drop(fresh_url)
        report.parameters["load"] = info

        page_runs, rss = await measure_pages(
            big, depth, repeats, duration, concurrency, log_dir, "big"
        )
        report.note_rss("serve", rss)
        runs.update(page_runs)

        # Ingest: the same messages on an empty store and on the big one, interleaved.
        topic = f"bench-bigstore-{uuid.uuid4().hex[:8]}"
        progress(f"bigstore: encoding and producing {ingest_n:,} messages to {topic}")
        await prefill(endpoints.kafka_bootstrap, topic, build_messages(ingest_n))
        runs["ingest_empty"], runs["ingest_big"] = [], []
        for r in range(repeats):
            empty = await dbs.fresh()
            try:
                result = await run_service(
                    empty, endpoints.kafka_bootstrap, topic, ingest_n, log_dir, BATCH
                )
            finally:
                await dbs.drop(empty)
            runs["ingest_empty"].append(result)
            progress(f"  run {r + 1}/{repeats} empty store: {result['events_per_s']:,.0f} events/s")
            already = n + r * ingest_n
            result = await run_service(
                big, endpoints.kafka_bootstrap, topic, ingest_n, log_dir, BATCH, already=already
            )
            runs["ingest_big"].append(result)
            progress(f"  run {r + 1}/{repeats} big store: {result['events_per_s']:,.0f} events/s")
        for run in runs["ingest_empty"] + runs["ingest_big"]:
            report.note_rss("consume", run["peak_rss_mib"])
        conn = await asyncpg.connect(big)
        try:
            db_bytes = await conn.fetchval("SELECT pg_database_size(current_database())")
        finally:
            await conn.close()
    finally:
        await dbs.drop(big)
    report.notes.append(f"big database dropped at the end; it was {db_bytes / 2**30:.1f} GiB")
    report.runs = runs

    pages = _medians(
        {k: v for k, v in runs.items() if k.endswith("_api") and not k.startswith("small_")}
    )
    ingest = {k: median(r["events_per_s"] for r in runs[k]) for k in ("ingest_empty", "ingest_big")}
    report.medians = {
        "pages": pages,
        "pages_2m": base,
        "ingest_events_per_s": ingest,
        "load": {"seconds": info["seconds"], "events_per_s": info["events_per_s"]},
        "sizes": size_rows,
        "database_gib_at_end": round(db_bytes / 2**30, 2),
    }
    report.ratios["ingest_big_vs_empty"] = ingest["ingest_big"] / ingest["ingest_empty"]
    for kind in ("course", "account"):
        for page in ("first", "deep"):
            key = f"{kind}_{page}_api"
            report.ratios[f"{kind}_{page}_p50_vs_2m"] = pages[key]["p50_ms"] / base[key]["p50_ms"]
    print(
        report.table(
            f"\nbigstore: load of {n:,} events over {MONTHS} partitions ({WORKERS} at once)",
            ["phase", "seconds"],
            [
                *info["phases_s"].items(),
                ["whole load", info["seconds"]],
                ["events/s", info["events_per_s"]],
            ],
        )
    )
    print(
        report.table(
            f"\nbigstore: pages at {n:,} against {baseline_n:,} events, per_page={PER_PAGE}, "
            f"deep page {depth}, concurrency {concurrency}, median of {repeats}",
            ["scenario", "req/s", "p50 ms", "p99 ms", f"p50 ms at {baseline_n:,}"],
            [[k, v["rps"], v["p50_ms"], v["p99_ms"], base[k]["p50_ms"]] for k, v in pages.items()],
        )
    )
    print(
        report.table(
            f"\nbigstore: ingest of {ingest_n:,} messages (course-audit consume), median of "
            f"{repeats}",
            ["store", "events/s", "runs"],
            [
                [
                    k.removeprefix("ingest_"),
                    ingest[k],
                    ", ".join(f"{r['events_per_s']:,.0f}" for r in runs[k]),
                ]
                for k in ("ingest_empty", "ingest_big")
            ],
        )
    )
    print(
        report.table(
            f"\nbigstore: sizes at {n:,} events",
            ["relation", "MiB", "bytes/event"],
            [[s["relation"], s["bytes"] / 2**20, s["bytes_per_event"]] for s in size_rows],
        )
    )
    print(
        report.table(
            "",
            ["ratio", "value", "target"],
            [[k, v, report.targets[k]] for k, v in report.ratios.items()],
        )
    )
    print(report.rss_table())
    return report
