"""Live tail benchmark: time from produce to the event arriving on an SSE stream, and what
1,000 idle subscribers cost the API process.

`course-audit consume` and `course-audit serve` run as two processes against an empty store
(the stream crosses them through LISTEN/NOTIFY, as with separate replicas). Then:

1. idle, no streams: the API process's RSS and CPU% over IDLE_SECONDS;
2. freshness (after 3 s of unmeasured warm-up): WATCHED course streams open while this process
   produces at a steady rate; every event of a watched course is timed from just before its
   send to its `id:` line arriving;
3. IDLE_SUBSCRIBERS idle streams opened (on quiet courses that get no events): RSS and CPU%
   idle again;
4. freshness again with them connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from common import Report, percentile, progress, stop_with_peak_rss
from ingest import Databases

from course_audit.model import EVENT_RECORDS
from course_audit.produce.encode import Encoder
from course_audit.produce.sample import World, sample_event
from course_audit.store.tokens import create_token
from service_process import ServiceProcess
from waits import eventually

WATCHED = 20  # course streams whose every event is timed
QUIET = 100  # quiet courses (no events while measuring), IDLE_SUBSCRIBERS / QUIET streams each
IDLE_SUBSCRIBERS = 1000
IDLE_SECONDS = 10.0
QUIET_BASE = 900_000
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _usage(pid: int, seconds: float) -> tuple[float, float]:
    """(RSS MB at the end, CPU % of one core) of `pid` over `seconds`."""
    cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu1, t1 = _cpu_seconds(pid), time.perf_counter()
    return _rss_mb(pid), 100 * (cpu1 - cpu0) / (t1 - t0)


def _encode(encoder: Encoder, event: dict[str, Any]) -> bytes:
    record = EVENT_RECORDS[event.pop("event_type")]
    event["created_at"] = datetime.fromisoformat(event["created_at"])
    if "changes" in event:
        event["changes"] = {k: {"old": v[0], "new": v[1]} for k, v in event["changes"].items()}
    return encoder.encode_single_object(record, event)


@dataclass
class Watch:
    """Send times of watched events not seen yet, and the latencies of those seen."""

    sent: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    #: Wall-clock arrival of each watched event (against the store's ingested_at).
    arrivals: dict[str, float] = field(default_factory=dict)

    def seen(self, event_id: str) -> None:
        at = self.sent.pop(event_id, None)
        if at is not None:
            self.latencies.append(time.perf_counter() - at)
            self.arrivals[event_id] = time.time()
            self.arrived.set()

    async def delivery(self, db: str) -> list[float]:
        """Seconds from each watched event's store transaction (ingested_at, the same host's
        clock) to its arrival: the live tail's own share of the freshness."""
        conn = await asyncpg.connect(db)
        try:
            rows = await conn.fetch(
                "SELECT event_id::text AS id, extract(epoch FROM ingested_at)::float8 AS at"
                " FROM events WHERE event_id = ANY($1::uuid[])",
                list(self.arrivals),
            )
        finally:
            await conn.close()
        return [self.arrivals[r["id"]] - r["at"] for r in rows]


async def _read(
    resp: aiohttp.ClientResponse, watch: Watch | None, greeted: list[int] | None
) -> None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
        async for raw in resp.content:
            if watch is not None and raw.startswith(b"id: "):
                watch.seen(raw[4:].strip().decode())
            elif greeted is not None and raw.startswith(b"retry: "):
                # The stream's opening: the server is done with it and waits for events.
                greeted[0] += 1


async def _open(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    watch: Watch | None,
    greeted: list[int] | None = None,
) -> tuple[aiohttp.ClientResponse, asyncio.Task[None]]:
    """Open a stream; with `greeted`, count it there once its opening lines arrive."""
    resp = await session.get(url, headers={"Authorization": f"Bearer {token}"})
    if resp.status != 200:
        raise RuntimeError(f"GET {url}: {resp.status} {await resp.text()}")
    return resp, asyncio.create_task(_read(resp, watch, greeted))


async def _produce(
    producer: AIOKafkaProducer,
    encoder: Encoder,
    world: World,
    topic: str,
    rate: int,
    seconds: float,
    watched: set[int],
    watch: Watch,
) -> float:
    """Produce at `rate` for `seconds`; return the rate achieved."""
    types = list(EVENT_RECORDS)
    total = int(rate * seconds)
    per_tick = max(1, round(rate * 0.01))
    started = time.perf_counter()
    sent = 0
    while sent < total:
        for _ in range(per_tick):
            event = sample_event(world, types[sent % len(types)], datetime.now(UTC))
            course = event["course"]["id"]
            event_id = event["event_id"]
            value = _encode(encoder, event)
            if course in watched:
                watch.sent[event_id] = time.perf_counter()
            await producer.send(topic, value, key=str(course).encode())
            sent += 1
        delay = started + sent / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    return sent / (time.perf_counter() - started)


async def _settle(watch: Watch, timeout: float) -> int:
    """Wait for the watched events still in flight; return how many never arrived."""
    end = time.perf_counter() + timeout
    while watch.sent and time.perf_counter() < end:
        watch.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch.arrived.wait(), end - time.perf_counter())
    return len(watch.sent)


async def _seed(db: str, kafka: str, topic: str, world: World, encoder: Encoder) -> None:
    """One event of each watched and quiet course, stored (so that the courses are known)."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    ids = []
    try:
        courses = list(world.courses)[:WATCHED] + [QUIET_BASE + i for i in range(QUIET)]
        for cid in courses:
            event = sample_event(world, "created", datetime.now(UTC), cid)
            ids.append(event["event_id"])
            await producer.send(topic, _encode(encoder, event), key=str(cid).encode())
        await producer.flush()
    finally:
        await producer.stop()
    conn = await asyncpg.connect(db)
    try:
        end = time.perf_counter() + 120
        while time.perf_counter() < end:
            found = await conn.fetchval(
                "SELECT count(*) FROM events WHERE event_id = ANY($1::uuid[])", ids
            )
            if found == len(ids):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError("the seed events were not stored within 120 s")
    finally:
        await conn.close()


async def _fanout(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The API's own fan-out lag over the whole run (course_audit_stream_fanout_seconds):
    rounds, mean, and the share of rounds within 10 and 50 ms."""
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("course_audit_stream_fanout_seconds"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    count = values.get("course_audit_stream_fanout_seconds_count", 0.0)
    total = values.get("course_audit_stream_fanout_seconds_sum", 0.0)

    def share(le: str) -> float:
        key = f'course_audit_stream_fanout_seconds_bucket{{le="{le}"}}'
        return values.get(key, 0.0) / count if count else float("nan")

    return {
        "rounds": count,
        "mean_s": total / count if count else float("nan"),
        "within_10ms": share("0.01"),
        "within_50ms": share("0.05"),
    }


def _latency(watch: Watch, missed: int, delivery: list[float]) -> dict[str, Any]:
    lat = watch.latencies
    return {
        "p50_s": percentile(lat, 50),
        "p99_s": percentile(lat, 99),
        "max_s": max(lat) if lat else float("nan"),
        "samples": len(lat),
        "missed": missed,
        "stored_to_stream_p50_s": percentile(delivery, 50),
        "stored_to_stream_p99_s": percentile(delivery, 99),
    }


async def bench_stream(endpoints: Any, rate: int, seconds: int, log_dir: Path) -> Report:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report = Report(
        "stream",
        {"rate_events_per_s": rate, "seconds": seconds, "watched_streams": WATCHED,
         "idle_subscribers": IDLE_SUBSCRIBERS, "quiet_courses": QUIET,
         "idle_seconds": min(IDLE_SECONDS, seconds)},
        targets={"p99_s": "<= 1.0"},
    )  # fmt: skip
    topic = f"bench-stream-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=endpoints.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 6, replication_factor=1)])
    finally:
        await admin.close()
    dbs = Databases(endpoints.database_url)
    db = await dbs.fresh()
    world = World.build(seed=23, courses=500, accounts=10, roots=2, users=300)
    for i in range(QUIET):
        world.add_course(QUIET_BASE + i, 100)
    quiet = {QUIET_BASE + i: world.courses.pop(QUIET_BASE + i) for i in range(QUIET)}
    conn = await asyncpg.connect(db)
    try:
        token = (await create_token(conn, "bench", world.root_accounts)).token
    finally:
        await conn.close()
    common = {
        "AUDIT_DATABASE_URL": db,
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap,
        "AUDIT_KAFKA_TOPICS": topic,
        "AUDIT_KAFKA_GROUP_ID": f"bench-{uuid.uuid4().hex[:6]}",
    }
    consume = ServiceProcess("consume", common, log_dir / "stream-consume.log").start()
    serve = ServiceProcess(
        "serve",
        {
            **common,
            "AUDIT_MIGRATE_ON_START": "false",
            "AUDIT_HTTP_MAX_CONNECTIONS": str(IDLE_SUBSCRIBERS * 3),
            "AUDIT_STREAM_MAX_SUBSCRIBERS": str(IDLE_SUBSCRIBERS * 2),
        },
        log_dir / "stream-serve.log",
    ).start()
    encoder = Encoder()
    producer = AIOKafkaProducer(bootstrap_servers=endpoints.kafka_bootstrap, acks=1, linger_ms=2)
    streams: list[tuple[aiohttp.ClientResponse, asyncio.Task[None]]] = []
    results: dict[str, Any] = {}
    try:
        await consume.wait_ready(60)
        await serve.wait_ready(60)
        world.courses.update(quiet)
        await _seed(db, endpoints.kafka_bootstrap, topic, world, encoder)
        for cid in quiet:
            del world.courses[cid]
        pid = serve.pid
        await producer.start()
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            base = f"{serve.base_url}/api/v1/audit/course/courses"
            progress("stream: API process idle, no streams")
            results["none_idle_rss_mb"], results["none_idle_cpu_pct"] = await _usage(
                pid, min(IDLE_SECONDS, seconds)
            )
            watched = set(list(world.courses)[:WATCHED])
            watch_a = Watch()
            for cid in watched:
                streams.append(await _open(session, f"{base}/{cid}/stream", token, watch_a))
            # Warm-up, not measured: the consumer's first batches, the first group queries.
            await _produce(producer, encoder, world, topic, rate, 3, set(), Watch())
            progress(f"stream: freshness, {rate:,} events/s for {seconds}s, {WATCHED} streams")
            cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
            results["achieved_a"] = await _produce(
                producer, encoder, world, topic, rate, seconds, watched, watch_a
            )
            missed_a = await _settle(watch_a, 30)
            results["busy_cpu_pct_a"] = (
                100 * (_cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
            )
            progress(f"stream: opening {IDLE_SUBSCRIBERS:,} idle streams")
            quiet_ids = list(quiet)
            greeted = [0]
            for i in range(IDLE_SUBSCRIBERS):
                cid = quiet_ids[i % QUIET]
                streams.append(await _open(session, f"{base}/{cid}/stream", token, None, greeted))
            # Idle is measured once every stream has got its opening lines (the server is
            # done opening them all).

            async def opened() -> int:
                return greeted[0]

            await eventually(
                opened,
                lambda n: n >= IDLE_SUBSCRIBERS,
                60,
                f"the opening lines of {IDLE_SUBSCRIBERS:,} idle streams",
                interval=0.05,
            )
            results["idle_rss_mb"], results["idle_cpu_pct"] = await _usage(
                pid, min(IDLE_SECONDS, seconds)
            )
            watch_b = Watch()
            for _, task in streams[:WATCHED]:
                task.cancel()
            for resp, _ in streams[:WATCHED]:
                resp.close()
            streams = streams[WATCHED:]
            for cid in watched:
                streams.append(await _open(session, f"{base}/{cid}/stream", token, watch_b))
            progress(f"stream: freshness again, with {IDLE_SUBSCRIBERS:,} idle streams open")
            cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
            results["achieved_b"] = await _produce(
                producer, encoder, world, topic, rate, seconds, watched, watch_b
            )
            missed_b = await _settle(watch_b, 30)
            results["busy_cpu_pct_b"] = (
                100 * (_cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
            )
            results["busy_rss_mb_b"] = _rss_mb(pid)
            results["fanout"] = await _fanout(session, serve.base_url)
            for resp, task in streams:
                task.cancel()
                resp.close()
            delivery_a = await watch_a.delivery(db)
            delivery_b = await watch_b.delivery(db)
    finally:
        await producer.stop()
        report.note_rss("serve", stop_with_peak_rss(serve))
        report.note_rss("consume", stop_with_peak_rss(consume))
        await dbs.drop(db)
    a, b = _latency(watch_a, missed_a, delivery_a), _latency(watch_b, missed_b, delivery_b)
    report.parameters["achieved_rate"] = round(min(results["achieved_a"], results["achieved_b"]), 1)
    report.runs = {
        "without_idle": [{"sample": i, "seconds": v} for i, v in enumerate(watch_a.latencies)],
        "with_idle": [{"sample": i, "seconds": v} for i, v in enumerate(watch_b.latencies)],
    }
    report.medians = {
        "freshness_without_idle": a,
        "freshness_with_idle": b,
        "api_rss_mb_no_streams": results["none_idle_rss_mb"],
        "api_rss_mb_idle_streams": results["idle_rss_mb"],
        "api_rss_mb_per_idle_stream_kb": 1024
        * (results["idle_rss_mb"] - results["none_idle_rss_mb"])
        / IDLE_SUBSCRIBERS,
        "api_cpu_pct_idle_no_streams": results["none_idle_cpu_pct"],
        "api_cpu_pct_idle_streams": results["idle_cpu_pct"],
        "api_cpu_pct_producing_without_idle": results["busy_cpu_pct_a"],
        "api_cpu_pct_producing_with_idle": results["busy_cpu_pct_b"],
        "fanout": results["fanout"],
    }
    report.ratios = {
        "p99_s": max(a["p99_s"], b["p99_s"]),
        "p99_with_idle_over_without": b["p99_s"] / a["p99_s"] if a["p99_s"] else float("nan"),
    }
    print(
        report.table(
            f"\nstream freshness: {rate:,} events/s for {seconds}s, {WATCHED} watched course"
            " streams (produce -> `id:` line on the stream)",
            [
                "idle streams",
                "p50 s",
                "p99 s",
                "max s",
                "samples",
                "missed",
                "stored->stream p50 s",
                "p99 s",
            ],
            [
                [
                    0,
                    a["p50_s"],
                    a["p99_s"],
                    a["max_s"],
                    a["samples"],
                    a["missed"],
                    a["stored_to_stream_p50_s"],
                    a["stored_to_stream_p99_s"],
                ],
                [
                    IDLE_SUBSCRIBERS,
                    b["p50_s"],
                    b["p99_s"],
                    b["max_s"],
                    b["samples"],
                    b["missed"],
                    b["stored_to_stream_p50_s"],
                    b["stored_to_stream_p99_s"],
                ],
            ],
        )
    )
    fan = results["fanout"]
    print(
        f"\nAPI fan-out (notification to queued, whole run): {fan['rounds']:,.0f} rounds, mean"
        f" {fan['mean_s'] * 1000:.1f} ms, {fan['within_10ms']:.1%} within 10 ms,"
        f" {fan['within_50ms']:.1%} within 50 ms"
    )
    none_row = [0, results["none_idle_rss_mb"], results["none_idle_cpu_pct"]]
    idle_row = [IDLE_SUBSCRIBERS, results["idle_rss_mb"], results["idle_cpu_pct"]]
    print(
        report.table(
            "\nAPI process (`serve`)",
            ["idle streams", "RSS MB", "CPU % idle", "CPU % producing"],
            [[*none_row, results["busy_cpu_pct_a"]], [*idle_row, results["busy_cpu_pct_b"]]],
        )
    )
    print(report.rss_table())
    return report
