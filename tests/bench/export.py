"""Export benchmark: one course's N events exported over HTTP, as NDJSON and as CSV.

The store is loaded with COPY (not Kafka): N events (1,000,000; quick: 100,000) of one course
over 300 days, all 13 event types, most with a user, a quarter with a page view, a third
sharing their second with the previous event. `course-audit serve` runs as its own process;
the benchmark reads each export whole over HTTP, counting lines, and samples the API
process's resident memory (/proc/<pid>/status VmRSS every 20 ms; its peak, VmHWM, is reset
through /proc/<pid>/clear_refs before each export and read after it).

Reported per format: events/s (N over the time from request to the last byte) and the RSS
growth (the peak during the export minus the RSS before it). Targets: >= 20,000 events/s,
< 20 MB growth.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from common import Report, median, progress, stop_with_peak_rss
from ingest import COPY_COLUMNS, Databases

from course_audit.produce.sample import MIX
from course_audit.retention import month_of
from course_audit.store.partitions import PartitionCache, ensure_partition_for
from course_audit.store.tokens import create_token
from service_process import ServiceProcess

COURSE = 4242
ACCOUNT = 42
ROOT = 1
USERS = 3000
FORMATS = ("ndjson", "csv")
TARGET_EVENTS_PER_S = 20_000
TARGET_GROWTH_MB = 20.0
SAMPLE_S = 0.02


async def load(db_url: str, n: int, seed: int = 11) -> None:
    """COPY n events of one course (and its snapshot)."""
    rng = random.Random(seed)
    types, weights = zip(*MIX.items(), strict=True)
    now = datetime.now(UTC).replace(microsecond=0)
    span = timedelta(days=300)
    start = now - span
    step = span / n
    conn = await asyncpg.connect(db_url)
    try:
        months = {month_of(start + timedelta(days=d)) for d in range(0, 302, 5)}
        await ensure_partition_for(conn, months, cache=PartitionCache())
        chunk: list[tuple[Any, ...]] = []
        at = start
        for i in range(n):
            if rng.random() > 0.33:
                at = start + step * i
            event_type = rng.choices(types, weights)[0]
            data: dict[str, Any] = {}
            if event_type in ("created", "updated"):
                data = {"name": [f"Course {COURSE} ({i % 7})", f"Course {COURSE} ({i % 5})"]}
                if i % 3 == 0:
                    data["is_public"] = [False, True]
            related = 9000 + i % 50 if event_type.startswith(("copied", "reset")) else None
            user = 5000 + rng.randrange(USERS) if rng.random() < 0.9 else None
            page_view = (
                str(uuid.UUID(int=rng.getrandbits(128), version=4))
                if user is not None and rng.random() < 0.25
                else None
            )
            chunk.append(
                (
                    uuid.UUID(int=rng.getrandbits(128), version=4),
                    at,
                    event_type,
                    rng.choice(("manual", "api", "sis")),
                    COURSE,
                    ACCOUNT,
                    ROOT,
                    user,
                    page_view,
                    rng.randrange(1, 500) if rng.random() < 0.1 else None,
                    related,
                    orjson.dumps(data).decode(),
                    "bench",
                    0,
                    i,
                )
            )
            if len(chunk) == 100_000:
                await conn.copy_records_to_table("events", records=chunk, columns=COPY_COLUMNS)
                chunk.clear()
                progress(f"  loaded {i + 1:,}/{n:,} events")
        if chunk:
            await conn.copy_records_to_table("events", records=chunk, columns=COPY_COLUMNS)
        await conn.execute(
            "INSERT INTO courses (id, root_account_id, account_id, data, as_of)"
            " VALUES ($1, $2, $3, $4::jsonb, now())",
            COURSE,
            ROOT,
            ACCOUNT,
            orjson.dumps({"id": COURSE, "name": f"Course {COURSE}"}).decode(),
        )
        progress("  VACUUM ANALYZE")
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: clear_refs 5); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def _sample(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], _status_kb(pid, "VmRSS"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_S)


async def export_once(
    session: aiohttp.ClientSession, url: str, token: str, fmt: str, pid: int, n: int
) -> dict[str, Any]:
    """One whole export; its rate and the API process's memory around it."""
    rss_before = _status_kb(pid, "VmRSS")
    peak_reset = _reset_peak(pid)
    peak = [rss_before]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample(pid, peak, stop))
    lines = 0
    size = 0
    started = time.perf_counter()
    try:
        async with session.get(
            url, params={"format": fmt}, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"export answered {resp.status}: {await resp.text()}")
            async for block in resp.content.iter_chunked(1 << 16):
                lines += block.count(b"\n")
                size += len(block)
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        await sampler
    hwm_after = _status_kb(pid, "VmHWM")
    events = lines - (1 if fmt == "csv" else 0)
    if events != n:
        raise RuntimeError(f"{fmt} export gave {events:,} events, expected {n:,}")
    peak_kb = max(peak[0], hwm_after) if peak_reset else peak[0]
    return {
        "events": events,
        "bytes": size,
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "mb_per_s": size / elapsed / 1e6,
        "rss_before_mb": rss_before / 1024,
        "rss_peak_mb": peak_kb / 1024,
        "rss_growth_mb": (peak_kb - rss_before) / 1024,
        "peak_from_vmhwm": peak_reset,
        "rss_after_mb": _status_kb(pid, "VmRSS") / 1024,
    }


async def bench_export(endpoints: Any, n: int, repeats: int, log_dir: Path) -> Report:
    report = Report(
        "export",
        {"events": n, "course": COURSE, "formats": list(FORMATS), "repeats": repeats},
        targets={
            "ndjson_events_per_s": f">= {TARGET_EVENTS_PER_S:,}",
            "csv_events_per_s": f">= {TARGET_EVENTS_PER_S:,}",
            "ndjson_rss_growth_mb": f"< {TARGET_GROWTH_MB:.0f}",
            "csv_rss_growth_mb": f"< {TARGET_GROWTH_MB:.0f}",
        },
    )
    dbs = Databases(endpoints.database_url)
    db = await dbs.fresh()
    progress(f"export: loading {n:,} events of one course with COPY")
    await load(db, n)
    conn = await asyncpg.connect(db)
    try:
        token = (await create_token(conn, "bench", [ROOT])).token
    finally:
        await conn.close()
    api = ServiceProcess(
        "serve",
        {"AUDIT_DATABASE_URL": db, "AUDIT_MIGRATE_ON_START": "false"},
        log_dir / "export-api.log",
    ).start()
    runs: dict[str, list[dict[str, Any]]] = {fmt: [] for fmt in FORMATS}
    try:
        await api.wait_ready(60)
        url = f"{api.base_url}/api/v1/audit/course/courses/{COURSE}/export"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            # One small export first, so that the process's one-time allocations (the
            # first request, the pool's connection, imports) are not counted as growth.
            async with session.get(
                url,
                params={"end_time": "2000-01-01"},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                await resp.read()
            for r in range(repeats):
                for fmt in FORMATS:
                    result = await export_once(session, url, token, fmt, api.pid, n)
                    runs[fmt].append(result)
                    progress(
                        f"  run {r + 1}/{repeats} {fmt}: {result['events_per_s']:,.0f} events/s"
                        f" ({result['mb_per_s']:.1f} MB/s), RSS {result['rss_before_mb']:.1f}"
                        f" -> peak {result['rss_peak_mb']:.1f} MB"
                        f" (+{result['rss_growth_mb']:.1f})"
                    )
    finally:
        report.note_rss("serve", stop_with_peak_rss(api))
        await dbs.drop(db)
    report.runs = runs
    med = {
        fmt: {
            "events_per_s": median(r["events_per_s"] for r in rs),
            "mb_per_s": median(r["mb_per_s"] for r in rs),
            "rss_growth_mb_max": max(r["rss_growth_mb"] for r in rs),
        }
        for fmt, rs in runs.items()
    }
    report.medians = med
    for fmt in FORMATS:
        report.ratios[f"{fmt}_events_per_s_vs_target"] = (
            med[fmt]["events_per_s"] / TARGET_EVENTS_PER_S
        )
        report.ratios[f"{fmt}_rss_growth_mb_vs_target"] = (
            med[fmt]["rss_growth_mb_max"] / TARGET_GROWTH_MB
        )
    report.notes.append(
        "events_per_s: N over request-to-last-byte; rss_growth_mb: peak RSS of the API process "
        "during the export (sampled every 20 ms and VmHWM after a clear_refs reset) minus its "
        "RSS before; the max over the repeats"
    )
    print(
        report.table(
            f"\nexport: {n:,} events of one course, median of {repeats} (growth: max)",
            ["format", "events/s", "MB/s", "RSS growth MB"],
            [[k, v["events_per_s"], v["mb_per_s"], v["rss_growth_mb_max"]] for k, v in med.items()],
        )
    )
    report.notes.append(
        "peak_rss_mib.serve: VmHWM when the API stops, which counts from the last export's "
        "clear_refs reset (the peak of the last export, not of the whole run)"
    )
    print(report.rss_table())
    return report
