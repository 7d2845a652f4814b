"""Through the real consumer (Kafka + PostgreSQL): what the store does with unusual events.

Oversized fields, NUL characters in headers and event ids re-sent with other timestamps or
content: each a dead letter with its code, never a stall, and its neighbours stored.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from datetime import UTC, datetime, timedelta

from course_audit.produce.sample import World, sample_event
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


async def until(db_url: str, events: int, dead: int) -> None:
    """Wait until exactly `events` events and `dead` dead letters are stored."""

    async def counts() -> tuple[int, int]:
        return await count_events(db_url), await count_dead(db_url)

    await eventually(counts, lambda got: got == (events, dead), 30, f"{events} events, {dead} dead")


def _incompressible(n: int) -> str:
    # Random text: PostgreSQL would compress a repeated letter under its index row limit.
    return base64.b64encode(os.urandom(n))[:n].decode()


async def test_a_10_kb_sis_course_id_between_two_good_events(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    # Three courses: the oversized snapshot is the newest of its course, so (without the
    # size check) it would reach the courses table and its index: SQLSTATE 54000.
    world = World.build(seed=3, courses=3)
    ids = sorted(world.courses)
    before = sample_event(world, "updated", NOW - timedelta(minutes=3), course_id=ids[0])
    huge = sample_event(world, "updated", NOW - timedelta(minutes=2), course_id=ids[1])
    huge["course"] = dict(huge["course"], sis_course_id=_incompressible(10240))
    after = sample_event(world, "published", NOW - timedelta(minutes=1), course_id=ids[2])
    await produce(kafka_bootstrap, topic, [encode(e) for e in (before, huge, after)], partition=0)

    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id)
    async with running_ingestor(settings) as ingestor:
        await until(migrated_db_url, 2, 1)
        assert ingestor.health.writes_failing is False  # readiness not held down
    [dead] = await fetch(
        migrated_db_url, 'SELECT "offset", error_code, error_message FROM course_audit_dead_letters'
    )
    assert (dead["offset"], dead["error_code"], dead["error_message"]) == (
        1,
        "field_too_large",
        "course.sis_course_id is 10240 characters; the limit is 255",
    )
    stored = await fetch(migrated_db_url, "SELECT event_id::text FROM events")
    assert {r["event_id"] for r in stored} == {before["event_id"], after["event_id"]}


async def test_nul_in_headers_of_a_dead_letter(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    from aiokafka import AIOKafkaProducer

    world = World.build(seed=4, courses=2)
    good = [sample_event(world, "updated", NOW - timedelta(minutes=i)) for i in (2, 1)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, encode(good[0]), partition=1)
        await producer.send_and_wait(
            topic,
            b"\x05 not an event",
            partition=1,
            headers=[("tr\x00ace", b"\x00\x01"), ("origin", b"lms\x00")],
        )
        await producer.send_and_wait(
            topic, encode(good[1]), partition=1, headers=[("tr\x00ace", b"x")]
        )
    finally:
        await producer.stop()

    async with running_ingestor(settings_for(migrated_db_url, kafka_bootstrap, topic, group_id)):
        await until(migrated_db_url, 2, 1)
    [dead] = await fetch(migrated_db_url, "SELECT error_code, headers::text AS h FROM dead_letters")
    assert dead["error_code"] == "unknown_magic_byte"
    assert json.loads(dead["h"]) == [
        ["tr\\x00ace", base64.b64encode(b"\x00\x01").decode()],
        ["origin", base64.b64encode(b"lms\x00").decode()],
    ]


async def test_an_event_id_resent_with_another_time_or_content_is_a_dead_letter(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    world = World.build(seed=5, courses=2)
    first = sample_event(world, "updated", NOW - timedelta(days=40))
    other_time = copy.deepcopy(first) | {"created_at": (NOW - timedelta(days=1)).isoformat()}
    other_content = copy.deepcopy(first) | {"event_source": "other-" + first["event_source"]}
    same_again = copy.deepcopy(first)
    neighbour = sample_event(world, "published", NOW - timedelta(minutes=1))
    await produce(kafka_bootstrap, topic, [encode(first)], partition=0)

    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id)
    async with running_ingestor(settings) as ingestor:
        await until(migrated_db_url, 1, 0)
        await produce(
            kafka_bootstrap,
            topic,
            [encode(e) for e in (other_time, neighbour, other_content, same_again)],
            partition=0,
        )
        await until(migrated_db_url, 2, 2)
        assert ingestor.metrics.duplicates._value.get() == 1  # the same event again

    stored = await fetch(
        migrated_db_url, "SELECT event_id::text, created_at, event_source FROM events"
    )
    assert sorted((r["event_id"], r["created_at"], r["event_source"]) for r in stored) == sorted(
        [
            (first["event_id"], datetime.fromisoformat(first["created_at"]), first["event_source"]),
            (
                neighbour["event_id"],
                datetime.fromisoformat(neighbour["created_at"]),
                neighbour["event_source"],
            ),
        ]
    )
    dead = await fetch(
        migrated_db_url,
        'SELECT "offset", error_code, error_message FROM course_audit_dead_letters ORDER BY 1',
    )
    stored_at = _iso_ms(first["created_at"])
    assert [(d["offset"], d["error_code"]) for d in dead] == [
        (1, "conflicting_event_id"),
        (3, "conflicting_event_id"),
    ]
    assert dead[0]["error_message"].startswith(
        f"event_id {first['event_id']} is already stored with created_at {stored_at};"
    )
    assert (
        f"already stored with created_at {stored_at} and other content"
        in (dead[1]["error_message"])
    )


def _iso_ms(text: str) -> str:
    when = datetime.fromisoformat(text).astimezone(UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_replaying_a_conflict_or_a_refused_row_keeps_the_letter_with_its_reason(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str
) -> None:
    world = World.build(seed=6, courses=2)
    first = sample_event(world, "updated", NOW - timedelta(days=3))
    other_time = copy.deepcopy(first) | {"created_at": (NOW - timedelta(days=2)).isoformat()}
    nul = sample_event(world, "updated", NOW - timedelta(days=1))
    nul["changes"] = {"title": [None, "a\x00b"]}  # PostgreSQL text holds no NUL
    await produce(
        kafka_bootstrap, topic, [encode(e) for e in (first, other_time, nul)], partition=0
    )
    async with running_ingestor(settings_for(migrated_db_url, kafka_bootstrap, topic, group_id)):
        await until(migrated_db_url, 1, 2)

    replayed = await replay_dead_letters(migrated_db_url, AUDIT_RETENTION_MONTHS="14")
    assert "replayed 2: stored 0, still failing 2" in replayed
    dead = await fetch(
        migrated_db_url,
        'SELECT "offset", error_code, error_message, replayed_at FROM dead_letters ORDER BY 1',
    )
    assert [(d["offset"], d["error_code"], d["replayed_at"]) for d in dead] == [
        (1, "conflicting_event_id", None),
        (2, "store_rejected", None),
    ]
    assert f"event_id {first['event_id']} is already stored" in dead[0]["error_message"]
    assert "SQLSTATE 22" in dead[1]["error_message"]
    assert await count_events(migrated_db_url) == 1
