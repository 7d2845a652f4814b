"""`course-audit produce`: JSON lines -> framed Avro messages on the topic, keyed by course id."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import IO, Any

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

from course_audit.config import Settings
from course_audit.kafka_check import probe
from course_audit.produce.encode import Encoder, EventJsonError
from course_audit.security import kafka_identity, kafka_options, registry_session


class SchemaRegistration:
    """Registers writer schemas under TopicRecordNameStrategy subjects and caches their ids."""

    def __init__(self, url: str, topic: str, encoder: Encoder) -> None:
        self.url = url
        self.topic = topic
        self.encoder = encoder
        self.ids: dict[str, int] = {}

    async def schema_id(self, session: aiohttp.ClientSession, record_name: str) -> int:
        if record_name not in self.ids:
            subject = f"{self.topic}-{record_name}"
            body = {"schema": self.encoder.schema_json(record_name)}
            async with session.post(
                f"{self.url}/subjects/{subject}/versions",
                json=body,
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            ) as resp:
                resp.raise_for_status()
                self.ids[record_name] = int((await resp.json(content_type=None))["id"])
        return self.ids[record_name]


async def produce_lines(
    settings: Settings, lines: Iterable[tuple[int, str]], errors: IO[str]
) -> tuple[int, int]:
    """Encode and publish each line to the first configured topic; report bad lines."""
    topic = settings.kafka_topics[0]
    encoder = Encoder()
    registration = (
        SchemaRegistration(settings.schema_registry_url, topic, encoder)
        if settings.schema_registry_url
        else None
    )
    options = kafka_options(settings)
    await probe(options, kafka_identity(settings))  # KafkaUnavailable says why, in one line
    producer = AIOKafkaProducer(
        **options,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    sent = failed = 0
    pending: list[asyncio.Future[Any]] = []
    session = registry_session(settings) if registration else None
    try:
        for number, line in lines:
            try:
                obj = orjson.loads(line)
                record_name, datum = encoder.event_from_json(obj)
                if registration is not None and session is not None:
                    schema_id = await registration.schema_id(session, record_name)
                    value = encoder.encode_confluent(schema_id, record_name, datum)
                else:
                    value = encoder.encode_single_object(record_name, datum)
            except orjson.JSONDecodeError as exc:
                print(f"line {number}: not valid JSON: {exc}", file=errors)
                failed += 1
                continue
            except EventJsonError as exc:
                print(f"line {number}: {exc}", file=errors)
                failed += 1
                continue
            key = str(datum["course"]["id"]).encode()
            pending.append(await producer.send(topic, value, key=key))
            sent += 1
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        if session is not None:
            await session.close()
    return sent, failed
