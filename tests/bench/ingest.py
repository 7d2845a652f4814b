"""Ingest benchmark: the real consumer process against same-run baselines on the same data.

service      `course-audit consume` as a process, empty store, group at offset 0 -> N stored
decode_only  the same messages consumed and decoded + validated in this process, no database
write_only   the same decoded rows written with a bare COPY into the events table, no Kafka
naive        a per-message INSERT-and-commit consumer (what a team would write first), run on
             a prefix of the stream because it is slow; its events/s is what is compared
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from common import Report, median, progress, stop_with_peak_rss
from naive import event_row, naive_write_batch_per_row

from course_audit.ingest.consumer import DECODE_YIELD_EVERY
from course_audit.ingest.decode import Decoder
from course_audit.ingest.validate import to_event
from course_audit.model import EVENT_RECORDS, Decoded, Event, Source
from course_audit.produce.encode import Encoder
from course_audit.produce.sample import World, sample_stream
from course_audit.retention import month_of
from course_audit.store.migrate import migrate
from course_audit.store.partitions import PartitionCache, ensure_partition_for
from course_audit.wire.schemas import SchemaCatalog
from service_process import ServiceProcess

PARTITIONS = 6
BATCH = 2000
COPY_COLUMNS = (
    "event_id",
    "created_at",
    "event_type",
    "event_source",
    "course_id",
    "account_id",
    "root_account_id",
    "user_id",
    "page_view_id",
    "sis_batch_id",
    "related_course_id",
    "event_data",
    "topic",
    "partition",
    "offset",
)


def build_messages(n: int, seed: int = 42) -> list[tuple[bytes, bytes]]:
    """N realistic messages (key, value): all 13 types in Canvas-like proportions."""
    world = World.build(seed=seed, courses=5000, accounts=50, roots=5, users=3000)
    encoder = Encoder()
    span_ms = 60 * 86400 * 1000  # two months of activity, so batches cross partitions
    start = datetime.now(UTC) - timedelta(milliseconds=span_ms + 3600_000)
    out = []
    for i, event in enumerate(sample_stream(world, n, start=start, spacing_ms=span_ms // n // 2)):
        record = EVENT_RECORDS[event.pop("event_type")]
        event["created_at"] = datetime.fromisoformat(event["created_at"])
        if "changes" in event:
            event["changes"] = {k: {"old": v[0], "new": v[1]} for k, v in event["changes"].items()}
        value = encoder.encode_single_object(record, event)
        out.append((str(event["course"]["id"]).encode(), value))
        if (i + 1) % 100_000 == 0:
            progress(f"  encoded {i + 1:,}/{n:,} messages")
    return out


async def prefill(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for i, (key, value) in enumerate(messages, start=1):
            pending.append(await producer.send(topic, value, key=key))
            if i % 50_000 == 0:
                await asyncio.gather(*pending)
                pending.clear()
                rate = i / (time.perf_counter() - started)
                progress(f"  produced {i:,}/{len(messages):,} ({rate:,.0f} msg/s)")
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


class Databases:
    """Fresh migrated databases on the benchmark's server, one per run."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.template: str | None = None

    def url(self, name: str) -> str:
        base, _, _ = self.server_url.rpartition("/")
        return f"{base}/{name}"

    async def fresh(self) -> str:
        conn = await asyncpg.connect(self.server_url)
        try:
            if self.template is None:
                self.template = f"bench_tpl_{uuid.uuid4().hex[:8]}"
                await conn.execute(f'CREATE DATABASE "{self.template}"')
                tpl = await asyncpg.connect(self.url(self.template))
                try:
                    await migrate(tpl)
                finally:
                    await tpl.close()
            name = f"bench_{uuid.uuid4().hex[:10]}"
            await conn.execute(
                f'CREATE DATABASE "{name}" TEMPLATE "{self.template}" STRATEGY FILE_COPY'
            )
        finally:
            await conn.close()
        return self.url(name)

    async def drop(self, url: str) -> None:
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')
        finally:
            await conn.close()


async def _stored_metric(session: aiohttp.ClientSession, base_url: str) -> float:
    async with session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    match = re.search(r"^course_audit_events_stored_total ([0-9.e+]+)$", text, re.M)
    return float(match[1]) if match else 0.0


async def run_service(
    db_url: str,
    bootstrap: str,
    topic: str,
    n: int,
    log_dir: Path,
    batch: int,
    already: int = 0,
) -> dict[str, Any]:
    """`course-audit consume` storing the topic's n messages into a store of `already` events."""
    env = {
        "AUDIT_DATABASE_URL": db_url,
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "AUDIT_KAFKA_TOPICS": topic,
        "AUDIT_KAFKA_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}",
        "AUDIT_BATCH_MAX_RECORDS": str(batch),
    }
    proc = ServiceProcess("consume", env, log_dir / f"service-{uuid.uuid4().hex[:6]}.log")
    proc.start()
    try:
        await proc.wait_ready(120)
        started = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            while await _stored_metric(session, proc.base_url) < n:
                if time.perf_counter() - started > 1800:
                    raise RuntimeError("service did not store the stream within 30 minutes")
                await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        rss = stop_with_peak_rss(proc)
    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    if stored != already + n:
        raise RuntimeError(f"service stored {stored - already} events, expected {n}")
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed, "peak_rss_mib": rss}


async def _consume(
    bootstrap: str, topic: str, n: int, handle: Any, auto_commit: bool = False
) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=auto_commit,
        auto_offset_reset="earliest",
        max_poll_records=BATCH,
    )
    await consumer.start()
    try:
        # Wait for the assignment before the clock starts, as the service's readiness does.
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
            if consumer.assignment():
                await consumer.seek_to_beginning()
        started = time.perf_counter()
        seen = 0
        while seen < n:
            fetched = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            for tp, records in fetched.items():
                for record in records:
                    if seen >= n:
                        break
                    await handle(tp, record)
                    seen += 1
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def run_decode_only(
    bootstrap: str, topic: str, n: int, keep: list[Event] | None = None
) -> dict[str, Any]:
    decoder = Decoder(SchemaCatalog())
    now = datetime.now(UTC)
    count = 0

    async def handle(tp: Any, record: Any) -> None:
        nonlocal count
        decoded = decoder.decode_sync(record.value)
        assert isinstance(decoded, Decoded), decoded
        source = None if keep is None else Source(tp.topic, tp.partition, record.offset)
        event = to_event(decoded, source=source, now=now)
        assert isinstance(event, Event), event
        if keep is not None:
            keep.append(event)
        count += 1
        if count % DECODE_YIELD_EVERY == 0:
            await asyncio.sleep(0)  # as the service yields while decoding

    elapsed = await _consume(bootstrap, topic, n, handle)
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed}


async def run_write_only(db_url: str, events: list[Event], batch: int) -> dict[str, Any]:
    rows = [event_row(i, e)[1:] for i, e in enumerate(events)]
    conn = await asyncpg.connect(db_url)
    try:
        months = {month_of(e.created_at) for e in events}
        await ensure_partition_for(conn, months, cache=PartitionCache())
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "events", records=rows[i : i + batch], columns=COPY_COLUMNS
                )
        elapsed = time.perf_counter() - started
        stored = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    if stored != len(rows):
        raise RuntimeError(f"COPY stored {stored} rows, expected {len(rows)}")
    return {"events": len(rows), "seconds": elapsed, "events_per_s": len(rows) / elapsed}


async def run_naive(db_url: str, bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    decoder = Decoder(SchemaCatalog())
    now = datetime.now(UTC)
    conn = await asyncpg.connect(db_url)
    cache = PartitionCache()  # this database's months, not another run's

    async def handle(tp: Any, record: Any) -> None:
        decoded = decoder.decode_sync(record.value)
        assert isinstance(decoded, Decoded)
        event = to_event(decoded, source=Source(tp.topic, tp.partition, record.offset), now=now)
        assert isinstance(event, Event)
        await naive_write_batch_per_row(conn, [event], cache=cache)  # a transaction each

    try:
        elapsed = await _consume(bootstrap, topic, n, handle, auto_commit=True)
        stored = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    if stored != n:
        raise RuntimeError(f"naive stored {stored} events, expected {n}")
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed}


async def bench_ingest(
    endpoints: Any, n: int, naive_n: int, repeats: int, log_dir: Path, batch: int = BATCH
) -> Report:
    report = Report(
        "ingest",
        {
            "messages": n,
            "naive_messages": naive_n,
            "topic_partitions": PARTITIONS,
            "batch_max_records": batch,
            "repeats": repeats,
        },
        targets={
            "service_vs_min_baseline": ">= 0.7",
            "service_vs_naive": ">= 10",
        },
    )
    report.notes.append(
        "naive runs on the first naive_messages of the same topic; rates (events/s) compared"
    )
    topic = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    progress(f"ingest: encoding {n:,} messages")
    messages = build_messages(n)
    avg = sum(len(v) for _, v in messages) / len(messages)
    report.parameters["avg_message_bytes"] = round(avg, 1)
    progress(f"ingest: producing to {topic} ({PARTITIONS} partitions, {avg:.0f} B/message)")
    await prefill(endpoints.kafka_bootstrap, topic, messages)
    del messages
    dbs = Databases(endpoints.database_url)
    runs: dict[str, list[dict[str, Any]]] = {
        "service": [],
        "decode_only": [],
        "write_only": [],
        "naive": [],
    }
    # write_only's rows come from an untimed pass: keeping 100,000s of events (and their
    # Source records) while timing decode_only made that baseline a third slower (19k against
    # 30k events/s on a 2-core machine).
    progress("ingest: decoding the stream once for write_only's rows (not timed)")
    kept: list[Event] = []
    await run_decode_only(endpoints.kafka_bootstrap, topic, n, kept)
    for r in range(repeats):
        progress(f"ingest run {r + 1}/{repeats}: decode_only")
        runs["decode_only"].append(await run_decode_only(endpoints.kafka_bootstrap, topic, n))
        progress(f"  decode_only {runs['decode_only'][-1]['events_per_s']:,.0f} events/s")
        db = await dbs.fresh()
        progress(f"ingest run {r + 1}/{repeats}: write_only")
        runs["write_only"].append(await run_write_only(db, kept, batch))
        progress(f"  write_only {runs['write_only'][-1]['events_per_s']:,.0f} events/s")
        await dbs.drop(db)
        db = await dbs.fresh()
        progress(f"ingest run {r + 1}/{repeats}: service (course-audit consume)")
        runs["service"].append(
            await run_service(db, endpoints.kafka_bootstrap, topic, n, log_dir, batch)
        )
        progress(f"  service {runs['service'][-1]['events_per_s']:,.0f} events/s")
        await dbs.drop(db)
        db = await dbs.fresh()
        progress(f"ingest run {r + 1}/{repeats}: naive ({naive_n:,} messages)")
        runs["naive"].append(await run_naive(db, endpoints.kafka_bootstrap, topic, naive_n))
        progress(f"  naive {runs['naive'][-1]['events_per_s']:,.0f} events/s")
        await dbs.drop(db)
    report.runs = runs
    for run in runs["service"]:
        report.note_rss("consume", run["peak_rss_mib"])
    report.medians = {k: median(r["events_per_s"] for r in v) for k, v in runs.items()}
    m = report.medians
    report.ratios = {
        "service_vs_min_baseline": m["service"] / min(m["decode_only"], m["write_only"]),
        "service_vs_naive": m["service"] / m["naive"],
    }
    print(
        report.table(
            f"\ningest: {n:,} messages, median of {repeats} (events/s)",
            ["variant", "median events/s", "runs"],
            [[k, m[k], ", ".join(f"{r['events_per_s']:,.0f}" for r in v)] for k, v in runs.items()],
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
