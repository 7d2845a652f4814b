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
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from bigload import (
    ACCOUNTS,
    COURSES,
    MONTHS,
    ROOTS,
    USERS,
    WORKERS,
    load_big,
    load_check,
)
from common import Report, median, progress, stop_with_peak_rss
from ingest import BATCH, Databases, build_messages, prefill, run_service
from query import PER_PAGE, _loadgen, deep_cursor

from course_audit.api.params import encode_bookmark
from course_audit.store.tokens import create_token
from service_process import ServiceProcess

QUERIED_COURSES = [1000 + c for c in range(5)]  # the big courses of account 100, as query.py
QUERIED_ACCOUNT = 100


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
        info = await load_big(big, n, log=progress)
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

        # Ingest: the same messages on an empty store and on the big one, interleaved. Each
        # round has messages of its own (another seed: other event ids), since the big store
        # keeps what the round before stored and would count the same ids as duplicates.
        runs["ingest_empty"], runs["ingest_big"] = [], []
        for r in range(repeats):
            topic = f"bench-bigstore-{uuid.uuid4().hex[:8]}"
            progress(f"bigstore: encoding and producing {ingest_n:,} messages to {topic}")
            await prefill(endpoints.kafka_bootstrap, topic, build_messages(ingest_n, seed=42 + r))
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
