"""Property-based ingestion: random mixes of messages through a real broker into the service.

Each example is a stream of message kinds drawn by hypothesis (valid events, duplicates, odd
headers, broken framings, bad semantics, every compression codec), produced to a real Kafka
topic that one `course-audit consume` process reads for the whole test. After each example:
every valid event is stored exactly once, every other message is exactly one dead letter at
its own offset, the process is alive and ready, and the consumer's lag is back to 0.

The default run is short (a fixed example budget and a fixed seed, so CI is deterministic);
`make test-properties EXAMPLES=200` runs a longer, randomised one.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.codec import has_gzip, has_lz4, has_snappy, has_zstd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_audit.model import EVENT_RECORDS
from course_audit.produce.sample import World, sample_event
from pipeline import encode
from service_process import ServiceProcess, service_env
from waits import eventually

EXAMPLES = int(os.environ.get("AUDIT_PROPERTY_EXAMPLES", "6"))
#: A fixed seed unless a longer run asks for randomness (AUDIT_PROPERTY_RANDOM=1).
DERANDOMIZE = os.environ.get("AUDIT_PROPERTY_RANDOM", "") != "1"

CODECS = [None] + [
    name
    for name, available in (
        ("gzip", has_gzip()),
        ("snappy", has_snappy()),
        ("lz4", has_lz4()),
        ("zstd", has_zstd()),
    )
    if available
]
NOW = datetime.now(UTC)


@dataclass
class Message:
    """One message to produce (made at produce time) and what must become of it."""

    #: The event it carries (None: no event at all, `raw` is the value).
    event: dict[str, Any] | None
    #: "valid", "truncated" (cut at `cut`), "trailing" (`raw` appended), "semantic",
    #: "oversized" (a field over its size limit), "conflict" (an id sent before, another
    #: created_at), "raw"
    kind: str
    raw: bytes | None = None
    cut: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def stored(self) -> bool:
        return self.kind == "valid"

    def key(self) -> bytes:
        """The course id, as producers key their messages (a tombstone needs a key too)."""
        if self.event is None:
            return b"no-event"
        return str(self.event["course"]["id"]).encode()

    def event_id(self, salt: uuid.UUID) -> str:
        """The event's id in this example: ids are made unique per example, so an id drawn
        again in a later example is a new event there, not a re-sent one."""
        assert self.event is not None
        return str(uuid.uuid5(salt, self.event["event_id"]))

    def value(self, salt: uuid.UUID) -> bytes | None:
        if self.event is None:
            return self.raw
        event = dict(self.event)
        if self.kind != "semantic":
            event["event_id"] = self.event_id(salt)
        value = encode(event)
        if self.kind == "truncated":
            # A valid header and a datum cut short: the reader runs out of bytes, always.
            return value[: max(10, min(self.cut, len(value) - 1))]
        if self.kind == "trailing":
            return value + (self.raw or b"")
        return value


def valid_event(
    seed: int, event_type: str, minutes_ago: int, event_id: uuid.UUID
) -> dict[str, Any]:
    """A realistic event, all of it decided by what hypothesis drew (for shrinking)."""
    world = World.build(seed=seed, courses=3, accounts=2, roots=2, users=4)
    event = sample_event(world, event_type, NOW - timedelta(minutes=minutes_ago))
    event["event_id"] = str(event_id)
    return event


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(
        st.sampled_from(
            [
                "valid",
                "valid",
                "valid",
                "truncated",
                "trailing",
                "garbage",
                "empty",
                "semantic",
                "oversized",
            ]
        )
    )
    event = valid_event(
        draw(st.integers(0, 2**16)),
        draw(st.sampled_from(list(EVENT_RECORDS))),
        draw(st.integers(0, 60 * 24 * 40)),
        draw(st.uuids(version=4)),
    )
    headers = draw(
        st.lists(st.tuples(st.text(min_size=1, max_size=12), st.binary(max_size=24)), max_size=3)
    )
    if kind == "valid":
        return Message(event, "valid", headers=headers)
    if kind == "truncated":
        return Message(event, "truncated", cut=draw(st.integers(10, 400)), headers=headers)
    if kind == "trailing":
        return Message(event, "trailing", draw(st.binary(min_size=1, max_size=16)), 0, headers)
    if kind == "garbage":
        first = draw(st.integers(1, 255).filter(lambda b: b != 0xC3))
        raw = bytes([first]) + draw(st.binary(max_size=64))
        return Message(None, "raw", raw, headers=headers)
    if kind == "empty":
        return Message(None, "raw", draw(st.sampled_from([None, b""])), headers=headers)
    if kind == "oversized":
        # docs/messages.md#field-sizes: an SIS course id has at most 255 characters.
        sis_id = "S" * draw(st.integers(256, 12_000))
        event["course"] = {**event["course"], "sis_course_id": sis_id}
        return Message(event, "oversized", headers=headers)
    # A well-framed event that validation refuses.
    broken = draw(st.sampled_from(["created_at", "course_id", "event_id"]))
    if broken == "created_at":
        event["created_at"] = "1999-12-31T23:59:59.000Z"
    elif broken == "course_id":
        event["course"] = {**event["course"], "id": -draw(st.integers(0, 10**6))}
    else:
        event["event_id"] = "00000000-0000-0000-0000-000000000000"
    return Message(event, "semantic", headers=headers)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Message], str | None]:
    stream = draw(st.lists(messages(), min_size=1, max_size=25))
    # Redeliveries: some valid messages sent again, later in the stream.
    valid = [m for m in stream if m.stored]
    if valid:
        stream.extend(draw(st.lists(st.sampled_from(valid), max_size=3)))
        # The same event_id again with another created_at: never a second row.
        for original in draw(st.lists(st.sampled_from(valid), max_size=2, unique_by=id)):
            assert original.event is not None
            moved = datetime.fromisoformat(original.event["created_at"]) + timedelta(minutes=1)
            event = {**original.event, "created_at": moved.isoformat(timespec="milliseconds")}
            stream.append(Message(event, "conflict", headers=original.headers))
    return stream, draw(st.sampled_from(CODECS))


@dataclass
class Offsets:
    """Where the dead messages of an example landed: (partition, offset) pairs."""

    dead: list[tuple[int, int]] = field(default_factory=list)


async def produce_stream(
    bootstrap: str, topic: str, stream: list[Message], codec: str | None, salt: uuid.UUID
) -> Offsets:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, compression_type=codec
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, m.value(salt), key=m.key(), headers=m.headers or None)
            for m in stream
        ]
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    offsets = Offsets()
    for message, meta in zip(stream, sent, strict=True):
        if not message.stored:
            offsets.dead.append((meta.partition, meta.offset))
    return offsets


async def lag_total(proc: ServiceProcess, topic: str) -> float | None:
    async with aiohttp.ClientSession() as http, http.get(f"{proc.base_url}/metrics") as r:
        text = await r.text()
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("course_audit_consumer_lag{") and f'topic="{topic}"' in line
    ]
    return sum(values) if values else None


@pytest.fixture
async def consumer(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, tmp_path: Path
) -> Any:
    env = service_env(
        migrated_db_url, kafka_bootstrap, topic, group_id, AUDIT_BATCH_MAX_LATENCY_MS="50"
    )
    proc = ServiceProcess("consume", env, tmp_path / "consume.log").start()
    await proc.wait_ready(60)
    yield proc
    proc.stop()


@pytest.mark.timeout(600)
def test_every_message_is_stored_once_or_kept_as_one_dead_letter(
    consumer: ServiceProcess, migrated_db_url: str, kafka_bootstrap: str, topic: str
) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=DERANDOMIZE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(streams())
    def example(drawn: tuple[list[Message], str | None]) -> None:
        stream, codec = drawn
        asyncio.run(check(consumer, migrated_db_url, kafka_bootstrap, topic, stream, codec))

    example()


async def check(
    proc: ServiceProcess,
    db_url: str,
    bootstrap: str,
    topic: str,
    stream: list[Message],
    codec: str | None,
) -> None:
    # What an earlier (failed) example left on the topic is consumed before counting.
    await eventually(
        lambda: lag_total(proc, topic), lambda lag: not lag, 60, "no lag before the example"
    )
    conn = await asyncpg.connect(db_url)
    try:
        events_before = await conn.fetchval("SELECT count(*) FROM events")
        dead_before = await conn.fetchval("SELECT count(*) FROM dead_letters")
        salt = uuid.uuid4()
        offsets = await produce_stream(bootstrap, topic, stream, codec, salt)
        ids = sorted({m.event_id(salt) for m in stream if m.stored})
        want = (events_before + len(ids), dead_before + len(offsets.dead))

        async def counts() -> tuple[int, int]:
            return (
                await conn.fetchval("SELECT count(*) FROM events"),
                await conn.fetchval("SELECT count(*) FROM dead_letters"),
            )

        await eventually(counts, lambda c: c == want, 60, f"{want} events and dead letters")
        await eventually(
            lambda: lag_total(proc, topic), lambda lag: lag == 0, 30, "the consumer's lag at 0"
        )
        assert await counts() == want  # and nothing more arrived once all was consumed
        stored = await conn.fetch(
            "SELECT event_id::text AS id, count(*) AS n FROM events"
            " WHERE event_id = ANY($1::uuid[]) GROUP BY event_id",
            ids,
        )
        assert {r["id"]: r["n"] for r in stored} == dict.fromkeys(ids, 1)
        dead = await conn.fetch(
            'SELECT "partition", "offset", count(*) AS n FROM dead_letters'
            " WHERE topic = $1 GROUP BY 1, 2",
            topic,
        )
        at = {(r["partition"], r["offset"]): r["n"] for r in dead}
        assert {key: at.get(key) for key in offsets.dead} == dict.fromkeys(offsets.dead, 1)
    finally:
        await conn.close()
    health = await proc.health()
    assert health is not None and health[0] == 200, health
