"""Scale-out benchmark: 1, 2 and 3 `course-audit consume` processes in one consumer group.

The ingest benchmark's messages (same sample, same encoder) are produced once to a topic of 6
partitions; each round starts K consumer processes with a fresh database and a fresh group id,
all at offset 0, and measures:

events_per_s        the events stored from the moment the group has settled (every
                    consumer's last "partitions assigned" log line, together the 6 partitions
                    once each) until all N are stored, over that time; polled from the database
                    (the events sequence while it runs, count(*) at the end). What the group
                    stored while it was still rebalancing (consumers start a few seconds apart,
                    and each join is a rebalance) is the warm-up, reported as warmup_events
cpu_us_per_event    CPU time (utime + stime from /proc/<pid>/stat) over the same interval, per
                    stored event: of the consumer processes together, of the PostgreSQL server
                    (postmaster, its live backends, and the children it reaped) and of the
                    Kafka broker
peak_rss_mib        each consumer's VmHWM when it is stopped

Rounds alternate K = 1, 2, 3 within each repeat, so the variants share the machine's conditions.
From the CPU figures: events/s ~ cores / (consumer + PostgreSQL + Kafka CPU seconds per event)
when the CPU is the limit, and at most K / (consumer CPU seconds per event) for K consumers
(each is one Python process, so one core at most).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from common import Report, median, peak_rss_mib, progress, stop_with_peak_rss
from ingest import BATCH, PARTITIONS, Databases, build_messages, prefill

from service_process import ServiceProcess

HERE = Path(__file__).resolve().parent
CONSUMERS = (1, 2, 3)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of a process (and, with children, of the children it has reaped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17.
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / TICKS


def children_of(parent: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        if int(text.rsplit(")", 1)[1].split()[1]) == parent:  # the ppid
            found.append(int(entry.name))
    return found


def server_cpu_seconds(postmaster: int) -> float:
    """The PostgreSQL server's CPU: the postmaster (with reaped children) and its live children."""
    return cpu_seconds(postmaster, children=True) + sum(
        cpu_seconds(pid) for pid in children_of(postmaster)
    )


def listener_pid(port: int) -> int | None:
    """The process listening on a local TCP port (from /proc/net/tcp* and /proc/*/fd)."""
    inodes = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table_path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                try:
                    if os.readlink(fd.path) in inodes:
                        return int(entry.name)
                except OSError:
                    continue
        except OSError:
            continue
    return None


def _assignment(proc: ServiceProcess) -> list[int] | None:
    """The partitions a consumer holds per its log: its last assignment, unless revoked since."""
    last = None
    for line in proc.log_lines():
        if '"msg":"partitions assigned"' in line or '"msg":"partitions revoked"' in line:
            last = line
    if last is None or '"msg":"partitions revoked"' in last:
        return None
    return [int(p) for p in re.findall(r"partition=(\d+)", last)]


def settled(procs: list[ServiceProcess]) -> bool:
    """Every consumer holds partitions and together they hold each partition once."""
    held = [_assignment(p) for p in procs]
    if any(not h for h in held):
        return False
    return sorted(p for h in held if h for p in h) == list(range(PARTITIONS))


async def _stored_so_far(conn: asyncpg.Connection) -> int:
    """Rows given a seq so far (cheap; counts a batch still in its transaction)."""
    value = await conn.fetchval(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_seq"
    )
    return int(value)


async def run_group(
    db_url: str,
    bootstrap: str,
    topic: str,
    n: int,
    consumers: int,
    log_dir: Path,
    postmaster: int,
    kafka: int | None,
) -> dict[str, Any]:
    group = f"bench-scale-{uuid.uuid4().hex[:8]}"
    procs = [
        ServiceProcess(
            "consume",
            {
                "AUDIT_DATABASE_URL": db_url,
                "AUDIT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "AUDIT_KAFKA_TOPICS": topic,
                "AUDIT_KAFKA_GROUP_ID": group,
                "AUDIT_BATCH_MAX_RECORDS": str(BATCH),
            },
            log_dir / f"scaleout-{consumers}-{i}-{group}.log",
        )
        for i in range(consumers)
    ]
    rss: list[float | None] = []
    conn = await asyncpg.connect(db_url)
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            await proc.wait_ready(120)
        deadline = time.monotonic() + 1800

        def sample() -> tuple[float, float, float, float]:
            return (
                time.perf_counter(),
                sum(cpu_seconds(p.pid) for p in procs),
                server_cpu_seconds(postmaster),
                cpu_seconds(kafka) if kafka else 0.0,
            )

        while not settled(procs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{consumers} consumers did not settle in 30 minutes")
            await asyncio.sleep(0.01)
        start = sample()
        first_count = await _stored_so_far(conn)
        if first_count >= n:
            raise RuntimeError(
                f"all {n} events were stored before the group settled: use more messages"
            )
        while (
            await _stored_so_far(conn) < n or await conn.fetchval("SELECT count(*) FROM events") < n
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{consumers} consumers did not store {n} events in 30 min")
            await asyncio.sleep(0.05)
        end = sample()
        stored = await conn.fetchval("SELECT count(*) FROM events")
        for proc in procs:
            assert proc.proc is not None
            if proc.proc.poll() is not None:
                raise RuntimeError(f"a consumer exited ({proc.proc.returncode}): {proc.log_path}")
    finally:
        await conn.close()
        for proc in procs:
            rss.append(stop_with_peak_rss(proc))
    if stored != n:
        raise RuntimeError(f"{consumers} consumers stored {stored} events, expected {n}")
    counted = n - first_count  # events stored inside the measured interval
    seconds = end[0] - start[0]
    cpu = {
        "consumer": end[1] - start[1],
        "postgres": end[2] - start[2],
        "kafka": end[3] - start[3],
    }
    return {
        "consumers": consumers,
        "events": n,
        "counted_events": counted,
        "warmup_events": first_count,
        "seconds": seconds,
        "events_per_s": counted / seconds,
        "cpu_seconds": cpu,
        "cpu_us_per_event": {k: v / counted * 1e6 for k, v in cpu.items()},
        "cpu_busy_cores": sum(cpu.values()) / seconds,
        "peak_rss_mib": [None if m is None else round(m, 1) for m in rss],
    }


def projection(cpu_us: dict[str, float], consumers_max: float, cores: int) -> float:
    """events/s on `cores` cores with enough consumers, from the measured CPU per event."""
    total = sum(cpu_us.values())
    return min(cores / total * 1e6, consumers_max)


async def bench_scaleout(
    endpoints: Any,
    n: int,
    repeats: int,
    log_dir: Path,
    *,
    api_events: int,
    api_seconds: float,
    concurrency: int,
) -> Report:
    report = Report(
        "scaleout",
        {
            "messages": n,
            "topic_partitions": PARTITIONS,
            "consumers": list(CONSUMERS),
            "batch_max_records": BATCH,
            "repeats": repeats,
            "cores": os.cpu_count(),
        },
        targets={"events_per_s": "(reported)", "cpu_us_per_event": "(reported)"},
    )
    db_port = urlsplit(endpoints.database_url).port or 5432
    kafka_port = int(endpoints.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])
    postmaster = listener_pid(db_port)
    if postmaster is None:
        raise RuntimeError(f"no process found listening on PostgreSQL's port {db_port}")
    kafka = listener_pid(kafka_port)
    if kafka is None:
        report.notes.append("Kafka's process was not found: its CPU is not counted")
    topic = f"bench-scaleout-{uuid.uuid4().hex[:8]}"
    progress(f"scaleout: encoding {n:,} messages")
    messages = build_messages(n)
    progress(f"scaleout: producing to {topic} ({PARTITIONS} partitions)")
    await prefill(endpoints.kafka_bootstrap, topic, messages)
    del messages
    dbs = Databases(endpoints.database_url)
    runs: dict[str, list[dict[str, Any]]] = {str(k): [] for k in CONSUMERS}
    for r in range(repeats):
        for k in CONSUMERS:
            db = await dbs.fresh()
            progress(f"scaleout run {r + 1}/{repeats}: {k} consumer(s)")
            try:
                result = await run_group(
                    db, endpoints.kafka_bootstrap, topic, n, k, log_dir, postmaster, kafka
                )
            finally:
                await dbs.drop(db)
            runs[str(k)].append(result)
            us = result["cpu_us_per_event"]
            progress(
                f"  {result['events_per_s']:,.0f} events/s; CPU µs/event consumer "
                f"{us['consumer']:.0f}, PostgreSQL {us['postgres']:.0f}, Kafka {us['kafka']:.0f};"
                f" {result['cpu_busy_cores']:.2f} cores busy"
            )
    report.runs = runs
    med: dict[str, Any] = {}
    for k, rs in runs.items():
        med[k] = {
            "events_per_s": median(r["events_per_s"] for r in rs),
            "cpu_us_per_event": {
                part: median(r["cpu_us_per_event"][part] for r in rs)
                for part in ("consumer", "postgres", "kafka")
            },
            "cpu_busy_cores": median(r["cpu_busy_cores"] for r in rs),
            "peak_rss_mib_max": max(
                (m for r in rs for m in r["peak_rss_mib"] if m is not None), default=None
            ),
        }
        for r in rs:
            for m in r["peak_rss_mib"]:
                report.note_rss("consume", m)
    # Per-core figures from the one-consumer rounds: the least oversubscribed (on 2 cores,
    # three consumers + PostgreSQL + Kafka want more CPU than there is).
    one = med["1"]["cpu_us_per_event"]
    per_consumer_max = 1e6 / one["consumer"]
    med["events_per_cpu_second"] = {
        "consumer": 1e6 / one["consumer"],
        "postgres": 1e6 / one["postgres"],
        "all": 1e6 / sum(one.values()),
    }
    med["projection_events_per_s"] = {
        str(cores): projection(one, per_consumer_max * min(cores, PARTITIONS), cores)
        for cores in (2, 4, 8, 16)
    }
    report.medians = med
    report.ratios = {
        f"events_per_s_{k}_vs_1": med[str(k)]["events_per_s"] / med["1"]["events_per_s"]
        for k in CONSUMERS[1:]
    }
    for key in report.ratios:
        report.targets[key] = "(reported)"
    report.notes.append(
        f"{os.cpu_count()} cores shared with the Kafka broker, PostgreSQL, the benchmark and "
        "other work on the machine: rounds with more consumers than free cores are "
        "oversubscribed, and their events/s shows it"
    )
    report.notes.append(
        "projection_events_per_s: cores / (consumer + postgres + kafka CPU s per event of the "
        "one-consumer rounds), capped at min(cores, partitions) consumers of 1 core each"
    )
    print(
        report.table(
            f"\nscaleout: {n:,} messages on {PARTITIONS} partitions, median of {repeats}, "
            f"{os.cpu_count()} cores",
            [
                "consumers",
                "events/s",
                "consumer µs/ev",
                "PG µs/ev",
                "Kafka µs/ev",
                "cores busy",
                "warm-up events",
            ],
            [
                [
                    k,
                    med[str(k)]["events_per_s"],
                    med[str(k)]["cpu_us_per_event"]["consumer"],
                    med[str(k)]["cpu_us_per_event"]["postgres"],
                    med[str(k)]["cpu_us_per_event"]["kafka"],
                    med[str(k)]["cpu_busy_cores"],
                    median(r["warmup_events"] for r in runs[str(k)]),
                ]
                for k in CONSUMERS
            ],
        )
    )
    print(
        report.table(
            "\nprojection from the one-consumer CPU per event (enough consumers, CPU-bound)",
            ["cores", "events/s"],
            [[int(c), v] for c, v in med["projection_events_per_s"].items()],
        )
    )
    await bench_api_workers(
        endpoints, report, api_events, repeats, api_seconds, concurrency, log_dir
    )
    print(report.rss_table())
    return report


# ---------------------------------------------------------------------- API workers

WORKERS = (1, 2)


def _run_loadgen(
    urls: list[str], token: str, concurrency: int, duration: float, warmup: float, tmp: Path
) -> dict[str, Any]:
    url_file = tmp / f"urls-{uuid.uuid4().hex[:6]}.txt"
    url_file.write_text("\n".join(urls) + "\n")
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--urls", str(url_file), f"--token={token}"]
    cmd += ["--concurrency", str(concurrency), "--duration", str(duration)]
    cmd += ["--warmup", str(warmup)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 120)
    result: dict[str, Any] = json.loads(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"load generator saw {result['errors']} non-200 answers")
    return result


def service_cpu_seconds(pid: int) -> float:
    """A `serve` process and its workers (children), CPU seconds."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children_of(pid))


async def bench_api_workers(
    endpoints: Any,
    report: Report,
    events: int,
    repeats: int,
    duration: float,
    concurrency: int,
    log_dir: Path,
) -> None:
    """Requests/s and CPU per request of `serve` with 1 and 2 workers on the same store."""
    from query import _root_of, load

    from course_audit.store.tokens import create_token

    postmaster = listener_pid(urlsplit(endpoints.database_url).port or 5432)
    assert postmaster is not None
    dbs = Databases(endpoints.database_url)
    db = await dbs.fresh()
    progress(f"api workers: loading {events:,} events with COPY")
    ids = await load(db, events)
    conn = await asyncpg.connect(db)
    try:
        token = (await create_token(conn, "bench", [_root_of(ids["deep_account"])])).token
    finally:
        await conn.close()
    paths = [f"courses/{c}" for c in ids["big_courses"]] + [f"accounts/{ids['deep_account']}"]
    runs: dict[str, list[dict[str, Any]]] = {str(w): [] for w in WORKERS}
    try:
        for r in range(repeats):
            for workers in WORKERS:
                api = ServiceProcess(
                    "serve",
                    {
                        "AUDIT_DATABASE_URL": db,
                        "AUDIT_MIGRATE_ON_START": "false",
                        "AUDIT_API_WORKERS": str(workers),
                    },
                    log_dir / f"api-workers-{workers}-{r}.log",
                ).start()
                try:
                    if workers > 1:
                        await api.wait_log('"msg":"http listening"', 60, count=workers)
                    await api.wait_ready(60)
                    urls = [f"{api.base_url}/api/v1/audit/course/{p}?per_page=100" for p in paths]
                    await asyncio.to_thread(_run_loadgen, urls, token, concurrency, 2, 0, log_dir)
                    before = (service_cpu_seconds(api.pid), server_cpu_seconds(postmaster))
                    result = await asyncio.to_thread(
                        _run_loadgen, urls, token, concurrency, duration, 0, log_dir
                    )
                    after = (service_cpu_seconds(api.pid), server_cpu_seconds(postmaster))
                    rss = [peak_rss_mib(p) for p in [api.pid, *children_of(api.pid)]]
                finally:
                    stop_with_peak_rss(api)
                requests = result["requests"]
                run = {
                    "workers": workers,
                    "rps": result["rps"],
                    "p50_ms": result["p50_ms"],
                    "p99_ms": result["p99_ms"],
                    "requests": requests,
                    "cpu_us_per_request": {
                        "api": (after[0] - before[0]) / requests * 1e6,
                        "postgres": (after[1] - before[1]) / requests * 1e6,
                    },
                    "peak_rss_mib": [round(m, 1) for m in rss if m is not None],
                }
                runs[str(workers)].append(run)
                for m in run["peak_rss_mib"]:
                    report.note_rss("serve", m)
                us = run["cpu_us_per_request"]
                progress(
                    f"  run {r + 1}/{repeats} {workers} worker(s): {run['rps']:,.0f} req/s, "
                    f"p50 {run['p50_ms']:.1f} ms; CPU µs/request API {us['api']:.0f}, "
                    f"PostgreSQL {us['postgres']:.0f}"
                )
    finally:
        await dbs.drop(db)
    report.runs.update({f"api_workers_{k}": v for k, v in runs.items()})
    med = {
        k: {
            "rps": median(r["rps"] for r in rs),
            "p50_ms": median(r["p50_ms"] for r in rs),
            "p99_ms": median(r["p99_ms"] for r in rs),
            "cpu_us_per_request": {
                part: median(r["cpu_us_per_request"][part] for r in rs)
                for part in ("api", "postgres")
            },
        }
        for k, rs in runs.items()
    }
    report.medians["api_workers"] = med
    report.ratios["api_rps_2_workers_vs_1"] = med["2"]["rps"] / med["1"]["rps"]
    report.targets["api_rps_2_workers_vs_1"] = "(reported)"
    report.parameters["api_workers"] = {
        "events": events,
        "per_page": 100,
        "concurrency": concurrency,
        "seconds_per_measurement": duration,
        "urls": "first pages of the 5 big courses and the deep account, in turn",
    }
    print(
        report.table(
            f"\nAPI workers (`serve`, AUDIT_API_WORKERS): first pages, {events:,} events, "
            f"concurrency {concurrency}, median of {repeats}, {os.cpu_count()} cores shared "
            "with the load generator and PostgreSQL",
            ["workers", "req/s", "p50 ms", "p99 ms", "API µs/req", "PG µs/req"],
            [
                [
                    int(k),
                    v["rps"],
                    v["p50_ms"],
                    v["p99_ms"],
                    v["cpu_us_per_request"]["api"],
                    v["cpu_us_per_request"]["postgres"],
                ]
                for k, v in med.items()
            ],
        )
    )
