"""Freshness benchmark: time from produce to visible through the course endpoint.

`course-audit run` (consumer + API, one process) runs against an empty store while this
process produces at a steady rate; every SAMPLE_EVERY-th event is watched: a poller asks the
course endpoint (start_time = the event's own second) until the event's id appears.
"""

from __future__ import annotations

import asyncio
import time
import uuid
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

SAMPLE_EVERY = 400  # 5 samples/s at 2,000 events/s: the pollers must not load the service
POLL_INTERVAL = 0.025


async def _watch(
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    course: int,
    event_id: str,
    second: str,
    produced_at: float,
    deadline: float,
) -> float | None:
    url = f"{base}/api/v1/audit/course/courses/{course}"
    params = {"start_time": second, "per_page": "100"}
    headers = {"Authorization": f"Bearer {token}"}
    while time.perf_counter() < deadline:
        async with session.get(url, params=params, headers=headers) as resp:
            if resp.status == 200:
                doc = await resp.json()
                if any(e["id"] == event_id for e in doc["events"]):
                    return time.perf_counter() - produced_at
        await asyncio.sleep(POLL_INTERVAL)
    return None


async def bench_freshness(endpoints: Any, rate: int, seconds: int, log_dir: Path) -> Report:
    report = Report(
        "freshness",
        {"rate_events_per_s": rate, "seconds": seconds, "sample_every": SAMPLE_EVERY,
         "poll_interval_s": POLL_INTERVAL},
        targets={"p99_s": "<= 1.0"},
    )  # fmt: skip
    latencies, missed, achieved = await measure_freshness(
        endpoints.kafka_bootstrap, endpoints.database_url, rate, seconds, log_dir, report=report
    )
    report.parameters["achieved_rate"] = round(achieved, 1)
    report.runs = {"latencies_s": [{"sample": i, "seconds": v} for i, v in enumerate(latencies)]}
    report.medians = {
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies) if latencies else float("nan"),
        "samples": len(latencies),
        "missed": missed,
    }
    report.ratios = {"p99_s": report.medians["p99_s"]}
    print(
        report.table(
            f"\nfreshness: {rate:,} events/s for {seconds}s (achieved {achieved:,.0f}/s), "
            f"{len(latencies)} samples, {missed} not seen within 30 s",
            ["p50 s", "p99 s", "max s"],
            [[report.medians["p50_s"], report.medians["p99_s"], report.medians["max_s"]]],
        )
    )
    return report


async def measure_freshness(
    kafka: str,
    server_url: str,
    rate: int,
    seconds: int,
    log_dir: Path,
    *,
    report: Report,
    read_server_url: str | None = None,
    label: str = "freshness",
) -> tuple[list[float], int, float]:
    """Produce at `rate` for `seconds` into a fresh database on `server_url`, `course-audit
    run` storing and serving (reading the same database on `read_server_url`, a streaming
    replica, when given); the sampled latencies, the samples missed and the rate achieved.
    The `run` process's peak RSS goes into `report`."""
    topic = f"bench-fresh-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 6, replication_factor=1)])
    finally:
        await admin.close()
    dbs = Databases(server_url)
    db = await dbs.fresh()
    read = {}
    if read_server_url is not None:
        read["AUDIT_DATABASE_READ_URL"] = Databases(read_server_url).url(db.rpartition("/")[2])
    world = World.build(seed=17, courses=500, accounts=10, roots=2, users=300)
    conn = await asyncpg.connect(db)
    try:
        token = (await create_token(conn, "bench", world.root_accounts)).token
    finally:
        await conn.close()
    service = ServiceProcess(
        "run",
        {
            "AUDIT_DATABASE_URL": db,
            "AUDIT_KAFKA_BOOTSTRAP_SERVERS": kafka,
            "AUDIT_KAFKA_TOPICS": topic,
            "AUDIT_KAFKA_GROUP_ID": f"bench-{uuid.uuid4().hex[:6]}",
            **read,
        },
        log_dir / f"{label}-run.log",
    ).start()
    encoder = Encoder()
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks=1, linger_ms=2)
    latencies: list[float] = []
    missed = 0
    try:
        await service.wait_ready(60)
        await producer.start()
        types = list(EVENT_RECORDS)
        watchers: list[asyncio.Task[float | None]] = []
        total = rate * seconds
        tick = 0.01
        per_tick = max(1, round(rate * tick))
        started = time.perf_counter()
        sent = 0
        async with aiohttp.ClientSession() as session:
            progress(f"{label}: producing {total:,} events at {rate:,}/s")
            while sent < total:
                for _ in range(per_tick):
                    event = sample_event(world, types[sent % len(types)], datetime.now(UTC))
                    record = EVENT_RECORDS[event.pop("event_type")]
                    event["created_at"] = datetime.fromisoformat(event["created_at"])
                    if "changes" in event:
                        event["changes"] = {
                            k: {"old": v[0], "new": v[1]} for k, v in event["changes"].items()
                        }
                    value = encoder.encode_single_object(record, event)
                    course = event["course"]["id"]
                    await producer.send(topic, value, key=str(course).encode())
                    if sent % SAMPLE_EVERY == 0:
                        second = event["created_at"].replace(microsecond=0).isoformat()
                        watchers.append(
                            asyncio.create_task(
                                _watch(session, service.base_url, token, course,
                                       event["event_id"], second, time.perf_counter(),
                                       time.perf_counter() + 30)
                            )
                        )  # fmt: skip
                    sent += 1
                # Hold the rate: sleep until this tick's slot.
                target = started + (sent / rate)
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if sent % (rate * 10) < per_tick:
                    progress(f"  sent {sent:,}/{total:,}")
            achieved = sent / (time.perf_counter() - started)
            for result in await asyncio.gather(*watchers):
                if result is None:
                    missed += 1
                else:
                    latencies.append(result)
    finally:
        await producer.stop()
        role = "run" if read_server_url is None else "run (reads on the replica)"
        report.note_rss(role, stop_with_peak_rss(service))
        await dbs.drop(db)
    return latencies, missed, achieved


async def bench_replica(
    endpoints: Any, rate: int, seconds: int, repeats: int, log_dir: Path
) -> Report:
    """Freshness with the API reading a streaming replica, against the same run reading the
    primary, alternated on one local primary + hot standby pair (tests/harness.py
    `provide_replicated`; Kafka from the session)."""
    from harness import provide_replicated

    report = Report(
        "replica",
        {"rate_events_per_s": rate, "seconds": seconds, "sample_every": SAMPLE_EVERY,
         "poll_interval_s": POLL_INTERVAL, "repeats": repeats},
        targets={"replica_p99_s": "<= 1.0"},
    )  # fmt: skip
    found: dict[str, list[float]] = {"primary": [], "replica": []}
    missed = {"primary": 0, "replica": 0}
    achieved: dict[str, list[float]] = {"primary": [], "replica": []}
    with provide_replicated() as pair:
        primary, _, _ = pair.primary_url.rpartition("/")
        standby, _, _ = pair.standby_url.rpartition("/")
        for repeat in range(repeats):
            for variant in ("primary", "replica"):
                lat, miss, rate_got = await measure_freshness(
                    endpoints.kafka_bootstrap, f"{primary}/postgres", rate, seconds, log_dir,
                    report=report,
                    read_server_url=f"{standby}/postgres" if variant == "replica" else None,
                    label=f"replica-{variant}-{repeat}",
                )  # fmt: skip
                found[variant].extend(lat)
                missed[variant] += miss
                achieved[variant].append(rate_got)
    report.runs = {
        variant: [{"sample": i, "seconds": v} for i, v in enumerate(values)]
        for variant, values in found.items()
    }
    report.parameters["achieved_rate"] = {
        k: [round(v, 1) for v in vs] for k, vs in achieved.items()
    }
    report.medians = {
        f"{variant}_{name}": value
        for variant, values in found.items()
        for name, value in (
            ("p50_s", percentile(values, 50)),
            ("p99_s", percentile(values, 99)),
            ("max_s", max(values) if values else float("nan")),
            ("samples", len(values)),
            ("missed", missed[variant]),
        )
    }
    report.ratios = {"replica_p99_s": report.medians["replica_p99_s"]}
    print(
        report.table(
            f"\nfreshness through a replica: {rate:,} events/s for {seconds}s x {repeats},"
            " reads on the primary vs on a streaming standby (alternated)",
            ["reads on", "p50 s", "p99 s", "max s", "samples", "missed"],
            [
                [
                    variant,
                    report.medians[f"{variant}_p50_s"],
                    report.medians[f"{variant}_p99_s"],
                    report.medians[f"{variant}_max_s"],
                    len(found[variant]),
                    missed[variant],
                ]
                for variant in ("primary", "replica")
            ],
        )
    )
    print(report.rss_table())
    return report
