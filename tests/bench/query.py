"""Query benchmark: the API's first and deep pages against a bare handler on the same SQL.

The store is loaded with the fastest path (COPY, not Kafka): N events over ~5,000 courses and
~50 accounts, skewed so that a few courses and accounts hold enough events for pages 1,000
deep at per_page=100. `course-audit serve` and the bare baseline (bare_server.py) each run as
their own process; the load comes from loadgen.py, a third process, at fixed concurrency,
alternating between the two servers every second within each measurement.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from common import Report, median, paired_ratio, progress, stop_with_peak_rss
from ingest import COPY_COLUMNS, Databases
from scaleout import cpu_seconds

from course_audit.api.params import encode_bookmark
from course_audit.produce.sample import MIX
from course_audit.retention import month_of
from course_audit.store.partitions import PartitionCache, ensure_partition_for
from course_audit.store.queries import Cursor
from course_audit.store.tokens import create_token
from service_process import ServiceProcess

HERE = Path(__file__).resolve().parent
COURSES = 5000
ACCOUNTS = 50
ROOTS = 5
USERS = 3000
BIG_COURSES = 5  # each holds ~6% of the events, enough for deep pages
PER_PAGE = 100


def _account_of(course: int) -> int:
    # The big courses share account 100, which makes it the deep account too.
    return 100 if course < BIG_COURSES else 100 + course % ACCOUNTS


def _root_of(account: int) -> int:
    return 1 + account % ROOTS


async def load(db_url: str, n: int, seed: int = 7) -> dict[str, Any]:
    """COPY n events and their snapshots; return the ids the scenarios query."""
    rng = random.Random(seed)
    types, weights = zip(*MIX.items(), strict=True)
    now = datetime.now(UTC).replace(microsecond=0)
    span = timedelta(days=360)
    step = span / n
    start = now - span
    big_share = 0.3  # 30% of events on the big courses
    conn = await asyncpg.connect(db_url)
    try:
        months = {month_of(start + timedelta(days=d)) for d in range(0, 362, 5)}
        await ensure_partition_for(conn, months, cache=PartitionCache())
        chunk: list[tuple[Any, ...]] = []
        page_views: list[tuple[Any, ...]] = []
        loaded = 0
        at = start
        for i in range(n):
            # Bursts: a third of the events share their second with the previous one.
            if rng.random() > 0.33:
                at = start + step * i
            course = (
                rng.randrange(BIG_COURSES) if rng.random() < big_share else rng.randrange(COURSES)
            )
            account = _account_of(course)
            event_type = rng.choices(types, weights)[0]
            data: dict[str, Any] = {}
            if event_type in ("created", "updated"):
                data = {"name": [f"Course {course}", f"Course {course} ({i % 7})"]}
            related = (
                rng.randrange(COURSES) + 1000
                if event_type.startswith(("copied", "reset"))
                else None
            )
            user = 5000 + rng.randrange(USERS) if rng.random() < 0.9 else None
            page_view = None
            if user is not None and rng.random() < 0.25:
                page_view = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                page_views.append((page_view, _root_of(account), at))
            chunk.append(
                (
                    uuid.UUID(int=rng.getrandbits(128), version=4),
                    at,
                    event_type,
                    rng.choice(("manual", "api", "sis")),
                    course + 1000,
                    account,
                    _root_of(account),
                    user,
                    page_view,
                    None,
                    related,
                    orjson.dumps(data).decode(),
                    "bench",
                    0,
                    i,
                )
            )
            if len(chunk) == 100_000:
                await conn.copy_records_to_table("events", records=chunk, columns=COPY_COLUMNS)
                loaded += len(chunk)
                chunk.clear()
                progress(f"  loaded {loaded:,}/{n:,} events")
        if chunk:
            await conn.copy_records_to_table("events", records=chunk, columns=COPY_COLUMNS)
        await _snapshots(conn, now, page_views)
        # VACUUM too: after a COPY of millions of rows, autovacuum's insert-triggered vacuum
        # would otherwise run during the first measurements (one full run's first repeats
        # were up to twice as slow, for the API and the bare handler alike). CHECKPOINT so
        # that no flush of the load is left for them either.
        progress("  VACUUM (ANALYZE), CHECKPOINT")
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return {
        "big_courses": [c + 1000 for c in range(BIG_COURSES)],
        "deep_account": 100,
        "root_accounts": list(range(1, ROOTS + 1)),
    }


async def _snapshots(
    conn: asyncpg.Connection, now: datetime, page_views: list[tuple[str, int, datetime]]
) -> None:
    courses = []
    for c in range(COURSES):
        account = _account_of(c)
        data = {
            "id": c + 1000,
            "account_id": account,
            "root_account_id": _root_of(account),
            "name": f"Course {c + 1000}",
            "course_code": f"C-{c + 1000}",
            "workflow_state": "available",
            "sis_course_id": f"SIS-{c + 1000}",
            "start_at": "2026-08-24T06:00:00Z",
            "is_public": False,
            "time_zone": "America/Denver",
            "default_view": "modules",
        }
        courses.append(
            (
                c + 1000,
                _root_of(account),
                account,
                data["sis_course_id"],
                orjson.dumps(data).decode(),
                now,
            )
        )
    await conn.copy_records_to_table(
        "courses",
        records=courses,
        columns=("id", "root_account_id", "account_id", "sis_course_id", "data", "as_of"),
    )
    # Users act in every root account, and each keeps its own snapshot of them.
    users = [
        (
            5000 + u,
            root,
            orjson.dumps(
                {
                    "id": 5000 + u,
                    "name": f"User {u}",
                    "sortable_name": f"{u}, User",
                    "login_id": f"u{u}",
                }
            ).decode(),
            now,
        )
        for u in range(USERS)
        for root in range(1, ROOTS + 1)
    ]
    await conn.copy_records_to_table(
        "users", records=users, columns=("id", "root_account_id", "data", "as_of")
    )
    await conn.execute(
        "INSERT INTO accounts (id, root_account_id, as_of)"
        " SELECT account_id, root_account_id, max(created_at) FROM events GROUP BY 1, 2"
    )
    views = [
        (
            pv,
            root,
            orjson.dumps(
                {
                    "id": pv,
                    "url": "https://canvas.example.edu/courses/1/settings",
                    "context_type": "Course",
                    "controller": "courses",
                    "action": "update",
                    "interaction_seconds": 3.5,
                    "created_at": at.isoformat(),
                    "user_request": True,
                    "render_time": 0.12,
                    "user_agent": "Mozilla/5.0",
                    "participated": False,
                    "http_method": "put",
                    "remote_ip": "10.0.0.1",
                }
            ).decode(),
            at,
        )
        for pv, root, at in page_views
    ]
    for i in range(0, len(views), 100_000):
        await conn.copy_records_to_table(
            "page_views",
            records=views[i : i + 100_000],
            columns=("id", "root_account_id", "data", "as_of"),
        )
    progress(
        f"  snapshots: {len(courses):,} courses, {len(users):,} users, {len(views):,} page views"
    )


async def deep_cursor(db_url: str, column: str, key: int, depth: int) -> Cursor:
    """The keyset position after `depth` full pages (what a client walking `next` would hold)."""
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            f"SELECT created_at, seq FROM events WHERE {column} = $1"
            " ORDER BY created_at DESC, seq DESC OFFSET $2 LIMIT 1",
            key,
            depth * PER_PAGE - 1,
        )
    finally:
        await conn.close()
    if row is None:
        raise RuntimeError(f"{column}={key} has fewer than {depth * PER_PAGE} events")
    return Cursor(row["created_at"], row["seq"])


async def _snapshot_paths(base: str) -> dict[str, float]:
    """The API's counts of pages served on the trusted and on the checked path."""
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as resp:
        text = await resp.text()
    found = {}
    for line in text.splitlines():
        for path in ("trusted", "checked"):
            if line.startswith(f"course_audit_snapshot_cache_{path}_total "):
                found[path] = float(line.rsplit(" ", 1)[1])
    return found


def _loadgen(
    urls: list[str],
    token: str | None,
    concurrency: int,
    duration: float,
    tmp: Path,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """One load generator run; with `server_pid`, also the server's CPU time (utime + stime,
    /proc/<pid>/stat) per answered request, warm-up included, in µs."""
    return _alternating([(urls, server_pid)], token, concurrency, duration, tmp)[0]


def _alternating(
    servers: list[tuple[list[str], int | None]],
    token: str | None,
    concurrency: int,
    duration: float,
    tmp: Path,
) -> list[dict[str, Any]]:
    """One load generator run over several servers' URL lists, the time sliced between them
    (loadgen.py; `duration` is the whole measured time, shared by the lists). Per server: its
    result, and with a pid its CPU time per answered request, warm-up included, in µs."""
    cmd = [sys.executable, str(HERE / "loadgen.py")]
    for urls, _ in servers:
        url_file = tmp / f"urls-{uuid.uuid4().hex[:6]}.txt"
        url_file.write_text("\n".join(urls) + "\n")
        cmd += ["--urls", str(url_file)]
    cmd += [
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
        "--warmup",
        # 2 s before a full run's measurements, half the measured time before QUICK's short ones.
        str(min(2.0, duration / 2)),
    ]
    if token:
        cmd.append(f"--token={token}")  # a token may begin with "-"
    cpu_before = [cpu_seconds(pid) if pid is not None else 0.0 for _, pid in servers]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 120)
    parsed = json.loads(out.stdout)
    results: list[dict[str, Any]] = parsed if len(servers) > 1 else [parsed]
    for (_, pid), before, result in zip(servers, cpu_before, results, strict=True):
        if pid is not None and result.get("answered"):
            result["cpu_us_per_request"] = (cpu_seconds(pid) - before) / result["answered"] * 1e6
        if result["errors"]:
            raise RuntimeError(f"load generator saw {result['errors']} non-200 answers")
    return results


SCENARIOS = ("course_first", "course_deep", "account_first", "account_deep")


def scenario_urls(
    base: str, bare: bool, ids: dict[str, Any], cursors: dict[tuple[str, int], Cursor]
) -> dict[str, list[str]]:
    """Each scenario's URLs: the first and the deep page (`cursors[(kind, key)]`) of the big
    courses and of the deep account, on the API at `base` or on the bare server there."""
    urls: dict[str, list[str]] = {}
    for kind, keys in (("course", ids["big_courses"]), ("account", [ids["deep_account"]])):
        path = "courses" if kind == "course" else "accounts"
        first, deep = [], []
        for k in keys:
            at = cursors[(kind, k)]
            if bare:
                first.append(f"{base}/bare/{kind}/{k}?per_page={PER_PAGE}")
                after = f"{int(at.created_at.timestamp() * 1e6)},{at.seq}"
                deep.append(f"{base}/bare/{kind}/{k}?per_page={PER_PAGE}&after={after}")
            else:
                page = f"{base}/api/v1/audit/course/{path}/{k}"
                first.append(f"{page}?per_page={PER_PAGE}")
                deep.append(f"{page}?page={encode_bookmark(at)}&per_page={PER_PAGE}")
        urls[f"{kind}_first"], urls[f"{kind}_deep"] = first, deep
    return urls


def free_port() -> int:
    """A port free now, for the bare server (bench only; a collision fails the run)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_bare(db: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                str(HERE / "bare_server.py"),
                "--database-url",
                db,
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


async def _wait_http(url: str, timeout: float = 60) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


async def bench_query(
    endpoints: Any,
    n: int,
    depth: int,
    repeats: int,
    duration: float,
    concurrency: int,
    log_dir: Path,
) -> Report:
    report = Report(
        "query",
        {
            "events": n,
            "courses": COURSES,
            "accounts": ACCOUNTS,
            "per_page": PER_PAGE,
            "deep_page": depth,
            "concurrency": concurrency,
            "seconds_per_measurement": duration,
            "repeats": repeats,
        },
        targets={
            "course_deep_p50_vs_first_p50": "<= 1.2",
            "account_deep_p50_vs_first_p50": "<= 1.2",
            "course_first_api_rps_vs_bare_rps": ">= 0.75",
            "course_deep_api_rps_vs_bare_rps": ">= 0.75",
            "account_first_api_rps_vs_bare_rps": ">= 0.75",
            "account_deep_api_rps_vs_bare_rps": ">= 0.75",
        },
    )
    dbs = Databases(endpoints.database_url)
    db = await dbs.fresh()
    progress(f"query: loading {n:,} events with COPY")
    ids = await load(db, n)
    conn = await asyncpg.connect(db)
    try:
        # A token for the one root account the queried courses and account are in, as most
        # tokens are (the page query reads one index range per root account of the token).
        token = (await create_token(conn, "bench", [_root_of(ids["deep_account"])])).token
    finally:
        await conn.close()

    cursors = {}
    for course in ids["big_courses"]:
        cursors[("course", course)] = await deep_cursor(db, "course_id", course, depth)
    cursors[("account", ids["deep_account"])] = await deep_cursor(
        db, "account_id", ids["deep_account"], depth
    )

    api = ServiceProcess(
        "serve",
        {"AUDIT_DATABASE_URL": db, "AUDIT_MIGRATE_ON_START": "false"},
        log_dir / "query-api.log",
    ).start()
    bare_port = free_port()
    bare = _start_bare(db, bare_port, log_dir / "query-bare.log")
    try:
        await api.wait_ready(60)
        await _wait_http(f"http://127.0.0.1:{bare_port}/bare/course/1000?per_page=1")
        a, b = api.base_url, f"http://127.0.0.1:{bare_port}"
        on_api, on_bare = (
            scenario_urls(a, False, ids, cursors),
            scenario_urls(b, True, ids, cursors),
        )
        # Each scenario's API and bare handler in one load generator run that alternates
        # between them every second, so that what else the machine does at the time falls on
        # both alike (loadgen.py); each gets `duration` seconds of the run.
        runs: dict[str, list[dict[str, Any]]] = {}
        for r in range(repeats):
            for scenario in SCENARIOS:
                on_api_result, on_bare_result = await asyncio.to_thread(
                    _alternating,
                    [(on_api[scenario], api.pid), (on_bare[scenario], bare.pid)],
                    token,
                    concurrency,
                    2 * duration,
                    log_dir,
                )
                for name, result in (
                    (f"{scenario}_api", on_api_result),
                    (f"{scenario}_bare", on_bare_result),
                ):
                    runs.setdefault(name, []).append(result)
                    progress(
                        f"  run {r + 1}/{repeats} {name}: {result['rps']:,.0f} req/s, "
                        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                        f"CPU {result['cpu_us_per_request']:.0f} µs/request"
                    )
        # Which way the API's pages got their linked snapshots (docs/design.md#snapshot-caches):
        # trusted (announced changes, no version round trip) or checked.
        report.medians["snapshot_pages"] = await _snapshot_paths(api.base_url)
        progress(f"  linked snapshots by path: {report.medians['snapshot_pages']}")
    finally:
        report.note_rss("serve", stop_with_peak_rss(api))
        bare.terminate()
        bare.wait(10)
        await dbs.drop(db)
    report.runs = runs
    med = {
        name: {
            k: median(run[k] for run in rs)
            for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")
        }
        for name, rs in runs.items()
    }
    report.medians = med
    for kind in ("course", "account"):
        report.ratios[f"{kind}_deep_p50_vs_first_p50"] = (
            med[f"{kind}_deep_api"]["p50_ms"] / med[f"{kind}_first_api"]["p50_ms"]
        )
        for page in ("first", "deep"):
            report.ratios[f"{kind}_{page}_api_rps_vs_bare_rps"] = paired_ratio(
                runs[f"{kind}_{page}_api"], runs[f"{kind}_{page}_bare"]
            )
    print(
        report.table(
            f"\nquery: {n:,} events, per_page={PER_PAGE}, deep page {depth}, concurrency "
            f"{concurrency}, median of {repeats}",
            ["scenario", "req/s", "p50 ms", "p99 ms", "CPU µs/request"],
            [
                [k, v["rps"], v["p50_ms"], v["p99_ms"], v["cpu_us_per_request"]]
                for k, v in med.items()
            ],
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
