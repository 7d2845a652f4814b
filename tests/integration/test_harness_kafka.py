"""The harness gives a real Kafka broker: produce, consume in a group, commit, resume."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from waits import Deadline


async def _consume(bootstrap: str, topic: str, group: str, want: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = Deadline(30, f"{want} message(s) from {topic} in group {group}")
        while len(got) < want:
            if deadline.passed():
                raise deadline.failure(f"got {len(got)}")
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                got.extend(r.value for r in records if r.value is not None)
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_round_trip_with_committed_offsets(
    kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(30):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=str(i % 5).encode())
    finally:
        await producer.stop()

    got = await _consume(kafka_bootstrap, topic, group_id, 30)
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(30))

    # The committed offsets, read back by a fresh member of the group, cover everything.
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group_id)
    await reader.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(3)]
        committed = {tp.partition: await reader.committed(tp) for tp in parts}
        ends = await reader.end_offsets(parts)
    finally:
        await reader.stop()
    assert sum(v or 0 for v in committed.values()) == 30
    assert committed == {tp.partition: ends[tp] for tp in parts}

    # A new member of the same group resumes after the commit: only new messages arrive.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"late", key=b"1")
    finally:
        await producer.stop()
    assert await _consume(kafka_bootstrap, topic, group_id, 1) == [b"late"]
