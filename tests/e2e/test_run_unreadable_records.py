"""`course-audit run` (consumer and API in one process) reading records aiokafka cannot parse.

Before the tolerant record reader, a header name that is not UTF-8 or an lz4/snappy/zstd batch
without its codec library raised out of `getmany()`: the process died, API included, and died
again at the same offset on every restart.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaProducer

from course_audit.produce.sample import World, sample_event
from kafka_batches import LZ4, Rec, batch_bytes, produce_batch
from pipeline import count_dead, count_events, encode, fetch, produce
from service_process import ServiceProcess, service_env
from waits import eventually

NOW = datetime.now(UTC).replace(microsecond=0)


async def test_run_survives_unreadable_records_and_keeps_serving(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, tmp_path: Path
) -> None:
    world = World.build(seed=41, courses=3)

    def event(minutes: int) -> bytes:
        return encode(sample_event(world, "updated", NOW - timedelta(minutes=minutes)))

    # Partition 0: an ordinary event, then a batch whose middle record has a bad header name.
    await produce(kafka_bootstrap, topic, [event(60)], partition=0)
    bad = Rec(event(59), headers=[(b"\xc3\x28", b"x")])
    await produce_batch(
        kafka_bootstrap, topic, 0, batch_bytes([Rec(event(58)), bad, Rec(event(57))], codec=LZ4)
    )
    # Partition 1: snappy and zstd batches from an ordinary producer.
    for codec in ("snappy", "zstd"):
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type=codec)
        await producer.start()
        try:
            batch = producer.create_batch()
            for minute in range(10):
                batch.append(key=None, value=event(40 + minute), timestamp=None)
            await (await producer.send_batch(batch, topic, partition=1))
        finally:
            await producer.stop()

    env = service_env(
        migrated_db_url, kafka_bootstrap, topic, group_id, AUDIT_BATCH_MAX_LATENCY_MS="50"
    )
    proc = ServiceProcess("run", env, tmp_path / "run.log").start()
    try:
        await eventually(
            lambda: count_events(migrated_db_url), lambda n: n == 23, 60, "23 events stored"
        )
        await eventually(lambda: count_dead(migrated_db_url), lambda n: n == 1, 30, "1 dead letter")
        # Alive and serving, ready, and still consuming after all that.
        await proc.wait_ready(30)
        await produce(kafka_bootstrap, topic, [event(1)], partition=0)
        await eventually(
            lambda: count_events(migrated_db_url), lambda n: n == 24, 30, "the next event"
        )
        await proc.wait_ready(30)
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.stop()
    rows = await fetch(
        migrated_db_url, 'SELECT "partition", "offset", error_code FROM dead_letters'
    )
    assert [tuple(r) for r in rows] == [(0, 2, "unreadable_record")]
