"""Kafka records that are unusual below the message value: every codec, unreadable records.

Against the real broker: compressed batches come from aiokafka's producer, and the records no
client library writes (a header name that is not UTF-8) are written byte by byte and appended
with a raw Produce request (tests/kafka_batches.py), as a librdkafka producer would send them.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from course_audit.model import DeadLetter, ErrorCode, Source
from course_audit.produce.sample import World, sample_event
from course_audit.store.writer import write_dead_letters
from kafka_batches import (
    CODEC_IDS,
    ZSTD,
    Rec,
    attributes_of,
    batch_bytes,
    fetch_raw,
    produce_batch,
)
from pipeline import (
    count_dead,
    count_events,
    encode,
    fetch,
    produce,
    replay_dead_letters,
    running_ingestor,
    settings_for,
)
from waits import eventually

NOW = datetime.now(UTC).replace(microsecond=0)
BAD_NAME = b"trace-\xff\xfe"  # not UTF-8: Kafka says header names are, the broker does not check


async def until_counts(db_url: str, events: int, dead: int) -> None:
    async def counts() -> tuple[int, int]:
        return await count_events(db_url), await count_dead(db_url)

    await eventually(
        counts, lambda got: got == (events, dead), 30, f"{events} events, {dead} dead letters"
    )


async def _send_compressed(
    bootstrap: str, topic: str, partition: int, codec: str, values: list[bytes]
) -> int:
    """One batch holding all `values`, compressed by aiokafka's producer; its base offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type=codec)
    await producer.start()
    try:
        batch = producer.create_batch()
        for value in values:
            assert batch.append(key=None, value=value, timestamp=None) is not None
        sent = await producer.send_batch(batch, topic, partition=partition)
        return int((await sent).offset)
    finally:
        await producer.stop()


async def test_batches_of_every_codec_are_consumed(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    world = World.build(seed=31, courses=3)
    expected = 0
    for i, codec in enumerate(CODEC_IDS):
        values = [
            encode(sample_event(world, "updated", NOW - timedelta(minutes=i * 10 + j)))
            for j in range(8)
        ]
        partition = i % 3
        offset = await _send_compressed(kafka_bootstrap, topic, partition, codec, values)
        # The broker keeps the producer's codec: the consumer really reads this codec.
        raw = await fetch_raw(kafka_bootstrap, topic, partition, offset)
        assert attributes_of(raw) & 0x07 == CODEC_IDS[codec], codec
        expected += len(values)

    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id)
    async with running_ingestor(settings):
        await until_counts(migrated_db_url, expected, 0)
    # Each event once, none left out.
    assert await fetch(migrated_db_url, "SELECT count(DISTINCT event_id) FROM events") == [
        (expected,)
    ]


async def test_a_decompression_bomb_is_a_dead_letter_and_the_partition_goes_on(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    """80 MiB of zeros in one record: a few KB of zstd, which the broker accepts; read without
    the bound, the consumer would hold all of it (and again after every restart)."""
    world = World.build(seed=33, courses=3)
    before = encode(sample_event(world, "published", NOW - timedelta(hours=2)))
    after = encode(sample_event(world, "concluded", NOW - timedelta(hours=1)))
    bomb = batch_bytes([Rec(b"x"), Rec(bytes(80 << 20), key=b"bomb")], codec=ZSTD)
    assert len(bomb) < 100_000
    await produce(kafka_bootstrap, topic, [before], partition=2)
    assert await produce_batch(kafka_bootstrap, topic, 2, bomb) == 1
    await produce(kafka_bootstrap, topic, [after], partition=2)
    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id)
    async with running_ingestor(settings) as ingestor:
        await until_counts(migrated_db_url, 2, 1)
        assert ingestor.health.subscribed is True
    (row,) = await fetch(
        migrated_db_url,
        'SELECT "partition", "offset", value, error_code, error_message FROM dead_letters',
    )
    assert (row["partition"], row["offset"], row["error_code"]) == (2, 2, "unreadable_record")
    assert row["error_message"] == (
        "record batch: it decompresses to more than 67,108,864 bytes; nothing could be read of "
        "offsets 1-2, the raw bytes are kept"
    )
    # The compressed batch as it came from the broker (its base offset rewritten), not 80 MiB.
    assert len(row["value"]) == len(bomb)


@pytest.mark.parametrize("codec", [0, ZSTD], ids=["uncompressed", "zstd"])
async def test_header_name_not_utf8_is_a_dead_letter_and_its_neighbours_are_stored(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, codec: int
) -> None:
    world = World.build(seed=32, courses=3)
    before, after = (
        encode(sample_event(world, "published", NOW - timedelta(hours=2))),
        encode(sample_event(world, "concluded", NOW - timedelta(hours=1))),
    )
    bad_value = encode(sample_event(world, "updated", NOW - timedelta(minutes=90)))
    batch = batch_bytes(
        [
            Rec(before, key=b"1"),
            Rec(bad_value, key=b"2", headers=[(b"ok", b"v1"), (BAD_NAME, b"v2")]),
            Rec(after, key=b"3", headers=[(b"fine", None)]),
        ],
        codec=codec,
    )
    # The first message of the partition is an ordinary one, then the hand-written batch.
    first = encode(sample_event(world, "published", NOW - timedelta(hours=3)))
    await produce(kafka_bootstrap, topic, [first], partition=1)
    base = await produce_batch(kafka_bootstrap, topic, 1, batch)
    assert base == 1
    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id)
    async with running_ingestor(settings) as ingestor:
        await until_counts(migrated_db_url, 3, 1)
        # Still consuming, past the batch.
        last = encode(sample_event(world, "published", NOW))
        await produce(kafka_bootstrap, topic, [last], partition=1)
        await until_counts(migrated_db_url, 4, 1)
        assert ingestor.health.subscribed is True

    rows = await fetch(
        migrated_db_url,
        'SELECT topic, "partition", "offset", key, value, headers::text AS headers, '
        "error_code, error_message FROM dead_letters",
    )
    (row,) = rows
    assert (row["topic"], row["partition"], row["offset"]) == (topic, 1, 2)
    assert row["error_code"] == "unreadable_record"
    assert "header 1 name b'trace-\\xff\\xfe' is not UTF-8" in row["error_message"]
    # Everything was recovered: key, value, both headers (the bad name with escapes).
    assert row["key"] == b"2"
    assert row["value"] == bad_value
    assert json.loads(row["headers"]) == [
        ["ok", base64.b64encode(b"v1").decode()],
        ["trace-\\xff\\xfe", base64.b64encode(b"v2").decode()],
    ]


async def test_replay_stores_a_recovered_value_and_leaves_raw_bytes_unreadable(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    world = World.build(seed=33, courses=2)
    value = encode(sample_event(world, "updated", NOW - timedelta(minutes=5)))
    await produce_batch(
        kafka_bootstrap, topic, 0, batch_bytes([Rec(value, headers=[(BAD_NAME, b"")])])
    )
    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id)
    async with running_ingestor(settings):
        await until_counts(migrated_db_url, 0, 1)
    # A range of a batch that could not be read keeps the batch's raw bytes as its value.
    raw_batch = batch_bytes([Rec(value)], codec=6, compressed=b"?")
    conn = await asyncpg.connect(migrated_db_url)
    try:
        range_reason = "record batch: its compression codec (6) is unknown; ..."
        source = Source(topic, 2, 0, None, raw_batch)
        letter = DeadLetter(source, ErrorCode.UNREADABLE_RECORD, range_reason, NOW)
        assert await write_dead_letters(conn, [letter]) == 1
    finally:
        await conn.close()

    out = await replay_dead_letters(migrated_db_url, "--code", "unreadable_record")
    assert "replayed 2: stored 1, still failing 1" in out
    assert await count_events(migrated_db_url) == 1
    rows = await fetch(
        migrated_db_url,
        'SELECT "partition", error_code, error_message, replayed_at IS NOT NULL AS replayed '
        'FROM dead_letters ORDER BY "partition"',
    )
    assert [(r["partition"], r["error_code"], r["replayed"]) for r in rows] == [
        (0, "unreadable_record", True),
        (2, "unreadable_record", False),
    ]
    assert rows[1]["error_message"] == range_reason
