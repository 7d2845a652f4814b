"""The consumer with a schema registry, against real Kafka and PostgreSQL.

Hostile registered schemas, a flood of unknown schema ids, and a registry outage longer than
max.poll.interval: none of them stops ingestion, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from course_audit.produce.sample import World, sample_event
from course_audit.retry import Backoff
from course_audit.wire.framing import frame_confluent
from course_audit.wire.registry import RegistryClient
from hostile_schemas import HOSTILE
from pipeline import ENCODER, count_dead, count_events, fetch, produce, running_ingestor
from pipeline import settings_for as _settings_for
from registry_stub import RegistryStub
from tcp_proxy import Proxy
from waits import eventually

NOW = datetime.now(UTC).replace(microsecond=0)
UPDATED_ID = 1
PUBLISHED_ID = 2
FAST = Backoff(first=0.05, cap=0.2)


@pytest.fixture
async def stub() -> AsyncIterator[RegistryStub]:
    async with RegistryStub() as registry:
        registry.register(UPDATED_ID, ENCODER.schema_json("updated"))
        registry.register(PUBLISHED_ID, ENCODER.schema_json("published"))
        yield registry


def confluent(world: World, event_type: str, schema_id: int, minutes_ago: int) -> bytes:
    name, datum = ENCODER.event_from_json(
        sample_event(world, event_type, NOW - timedelta(minutes=minutes_ago))
    )
    return ENCODER.encode_confluent(schema_id, name, datum)


async def stored(db_url: str, n: int, timeout: float = 60) -> None:
    await eventually(lambda: count_events(db_url), lambda got: got == n, timeout, f"{n} events")


async def dead_lettered(db_url: str, n: int, timeout: float = 60) -> None:
    await eventually(lambda: count_dead(db_url), lambda got: got == n, timeout, f"{n} letters")


def settings_for(db_url: str, bootstrap: str, topic: str, group: str, url: str) -> Any:
    return _settings_for(db_url, bootstrap, topic, group, schema_registry_url=url)


async def test_hostile_registry_schemas_are_dead_letters_and_neighbours_are_stored(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, stub: RegistryStub
) -> None:
    world = World.build(seed=31, courses=3)
    values: list[bytes] = []
    reasons: list[str] = []
    for i, (text, datum, reason) in enumerate(HOSTILE.values()):
        stub.register(100 + i, text)
        values.append(confluent(world, "updated", UPDATED_ID, 60 - i))
        values.append(frame_confluent(100 + i, datum))
        reasons.append(reason)
    values.append(confluent(world, "published", PUBLISHED_ID, 1))
    good = len(values) - len(HOSTILE)
    await produce(kafka_bootstrap, topic, values, partition=0)
    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id, stub.url)
    async with (
        RegistryClient(stub.url, retry=FAST) as client,
        running_ingestor(settings, client) as ingestor,
    ):
        await dead_lettered(migrated_db_url, len(HOSTILE))
        await stored(migrated_db_url, good)
        # Still consuming after all that, and ready.
        await produce(kafka_bootstrap, topic, [confluent(world, "published", PUBLISHED_ID, 0)])
        await stored(migrated_db_url, good + 1)
        assert ingestor.health.ready and ingestor.health.registry is True
    rows = await fetch(
        migrated_db_url,
        'SELECT error_code, error_message, "offset" FROM course_audit_dead_letters'
        ' ORDER BY "offset"',
    )
    assert [r["error_code"] for r in rows] == ["invalid_schema"] * len(HOSTILE)
    assert [r["offset"] for r in rows] == [2 * i + 1 for i in range(len(HOSTILE))]
    for row, reason in zip(rows, reasons, strict=True):
        assert reason in row["error_message"], row["error_message"]
    # Each schema was fetched once, however many messages used it.
    assert sorted(stub.requests) == sorted(
        [UPDATED_ID, PUBLISHED_ID, *range(100, 100 + len(HOSTILE))]
    )


async def test_a_thousand_unknown_ids_in_a_batch_are_fetched_once_each_and_concurrently(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, stub: RegistryStub
) -> None:
    world = World.build(seed=32, courses=3)
    unknown = list(range(10_000, 11_000))
    values = [confluent(world, "updated", UPDATED_ID, 5)]
    values += [frame_confluent(i, b"\x02") for i in unknown]
    values.append(confluent(world, "published", PUBLISHED_ID, 4))
    await produce(kafka_bootstrap, topic, values, partition=1)
    # Answers wait until eight requests are in flight together.
    stub.open_at_in_flight = 8
    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id, stub.url)
    async with (
        RegistryClient(stub.url, retry=FAST, max_concurrent=8) as client,
        running_ingestor(settings, client),
    ):
        await dead_lettered(migrated_db_url, len(unknown))
        await stored(migrated_db_url, 2)
    assert sorted(stub.requests) == sorted([UPDATED_ID, PUBLISHED_ID, *unknown])
    assert stub.max_in_flight == 8
    rows = await fetch(
        migrated_db_url, "SELECT error_code, count(*) AS n FROM dead_letters GROUP BY 1"
    )
    assert [(r["error_code"], r["n"]) for r in rows] == [("unknown_schema", len(unknown))]


async def test_a_registry_outage_longer_than_max_poll_interval_keeps_the_member(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, stub: RegistryStub
) -> None:
    world = World.build(seed=33, courses=3)
    max_poll_interval_s = 3.0
    proxy = await Proxy("127.0.0.1", stub.port).start()
    url = f"http://127.0.0.1:{proxy.port}"
    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id, url)
    try:
        async with (
            RegistryClient(url, request_timeout=2.0) as client,
            running_ingestor(
                settings,
                client,
                registry_backoff=Backoff(first=0.1, cap=0.5),
                max_poll_interval_ms=int(max_poll_interval_s * 1000),
            ) as ingestor,
        ):
            await produce(kafka_bootstrap, topic, [confluent(world, "updated", UPDATED_ID, 30)])
            await stored(migrated_db_url, 1)
            consumer = ingestor._consumer
            assert consumer is not None
            assigned = consumer.assignment()
            generation = ingestor._generation  # counts the rebalances this member went through
            assert len(assigned) == 3 and ingestor.health.ready
            member = await eventually(
                lambda: _members(kafka_bootstrap, group_id),
                lambda members: len(members) == 1,
                30,
                "the member in its group",
            )

            proxy.cut()
            cut_at = time.monotonic()
            # A schema id the consumer has not seen yet.
            outage = [confluent(world, "published", PUBLISHED_ID, 20 - i) for i in range(9)]
            await produce(kafka_bootstrap, topic, outage, [str(i).encode() for i in range(9)])
            await eventually(
                lambda: _value(ingestor.health.registry),
                lambda registry: registry is False,
                30,
                "readiness to say registry: false",
            )
            assert not ingestor.health.ready
            assert ingestor.health.as_dict()["registry"] is False
            # The outage lasts twice max.poll.interval (a member that stopped polling for
            # that long would have left its group), the consumer retrying throughout.
            await eventually(
                lambda: _value(time.monotonic() - cut_at),
                lambda elapsed: elapsed >= 2 * max_poll_interval_s,
                30,
                "an outage twice as long as max.poll.interval",
            )
            errors = ingestor.metrics.registry.get_sample_value(
                "course_audit_registry_errors_total"
            )
            assert errors is not None and errors >= 3
            assert ingestor.health.registry is False
            assert await count_events(migrated_db_url) == 1
            # The broker still counts it as the group's member, under the same id.
            assert await _members(kafka_bootstrap, group_id) == member

            proxy.mend()
            await stored(migrated_db_url, 1 + len(outage))
            assert ingestor.health.registry is True and ingestor.health.ready
            # Never revoked: the member kept its partitions through the outage, and commits.
            assert ingestor._generation == generation
            assert consumer.assignment() == assigned
            assert await _members(kafka_bootstrap, group_id) == member
            end = await consumer.end_offsets(list(assigned))
            await eventually(
                lambda: _committed(consumer, assigned),
                lambda committed: committed == end,
                30,
                "every offset committed",
            )
    finally:
        await proxy.close()
    assert await count_dead(migrated_db_url) == 0


async def _members(bootstrap: str, group_id: str) -> list[str]:
    """The member ids the broker has for the group (none when the group is empty)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    (group,) = response.groups
    members = group[5]  # (error, id, state, protocol type, protocol, members, ...)
    return sorted(m[0] for m in members)


async def _value(value: Any) -> Any:
    return value


async def _committed(consumer: Any, partitions: Any) -> dict[Any, int]:
    return {tp: await consumer.committed(tp) or 0 for tp in partitions}


async def test_stopping_while_the_registry_hangs_gives_the_batch_up_uncommitted(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, stub: RegistryStub
) -> None:
    world = World.build(seed=34, courses=3)
    stub.gate = asyncio.Event()  # the registry accepts requests and answers none of them
    values = [confluent(world, "published", PUBLISHED_ID, 10 - i) for i in range(5)]
    await produce(kafka_bootstrap, topic, values, partition=0)
    settings = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id, stub.url)
    # A request would hang for a minute: stopping must not wait for it (the block's end waits
    # for the consumer to stop, within 30 s).
    async with (
        RegistryClient(stub.url, request_timeout=60) as client,
        running_ingestor(settings, client) as ingestor,
    ):
        await eventually(
            lambda: _value(list(stub.requests)),
            lambda asked: asked == [PUBLISHED_ID],
            30,
            "a fetch",
        )
        consumer = ingestor._consumer
        assert consumer is not None
    tp = TopicPartition(topic, 0)
    assert await count_events(migrated_db_url) == 0
    # The batch was given up, not committed: the next start reads it again.
    stub.gate.set()
    async with (
        RegistryClient(stub.url) as client,
        running_ingestor(settings, client) as ingestor,
    ):
        await stored(migrated_db_url, len(values))
        consumer = ingestor._consumer
        assert consumer is not None
        await eventually(
            lambda: _committed(consumer, [tp]),
            lambda committed: committed == {tp: len(values)},
            30,
            "the offsets committed",
        )
    assert await count_dead(migrated_db_url) == 0


async def test_a_rebalance_during_a_registry_outage_hands_the_waiting_batch_over(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, stub: RegistryStub
) -> None:
    world = World.build(seed=35, courses=3)
    proxy = await Proxy("127.0.0.1", stub.port).start()
    cut_off = settings_for(
        migrated_db_url, kafka_bootstrap, topic, group_id, f"http://127.0.0.1:{proxy.port}"
    )
    direct = settings_for(migrated_db_url, kafka_bootstrap, topic, group_id, stub.url)
    values = [confluent(world, "published", PUBLISHED_ID, 30 - i) for i in range(30)]
    try:
        proxy.cut()
        async with (
            RegistryClient(cut_off.schema_registry_url or "") as first_client,
            running_ingestor(
                cut_off, first_client, registry_backoff=Backoff(first=0.1, cap=0.5)
            ) as first,
        ):
            await produce(kafka_bootstrap, topic, values, [str(i).encode() for i in range(30)])
            await eventually(
                lambda: _value(first.health.registry),
                lambda registry: registry is False,
                30,
                "the first member waiting for its registry",
            )
            # A second member, whose registry answers, joins: the group rebalances while the
            # first one waits, and the first one's batch goes to whoever owns it now.
            async with (
                RegistryClient(stub.url) as second_client,
                running_ingestor(direct, second_client) as second,
            ):
                await eventually(
                    lambda: _value(second._consumer and second._consumer.assignment()),
                    lambda assigned: bool(assigned),
                    60,
                    "the second member to get partitions",
                )
                # The second member stores what it now owns while the first still waits.
                await eventually(
                    lambda: count_events(migrated_db_url), lambda n: n > 0, 60, "some events"
                )
                assert first.health.registry is False
                proxy.mend()
                await stored(migrated_db_url, len(values))
    finally:
        await proxy.close()
    assert await count_dead(migrated_db_url) == 0
    rows = await fetch(migrated_db_url, "SELECT count(DISTINCT event_id) AS n FROM events")
    assert rows[0]["n"] == len(values)
