"""Shared helpers for tests that push messages through Kafka into the store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from course_audit.config import Settings
from course_audit.ingest.consumer import Ingestor
from course_audit.ingest.decode import Decoder
from course_audit.produce.encode import Encoder
from course_audit.retry import Backoff
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics
from course_audit.wire.registry import RegistryClient
from course_audit.wire.schemas import SchemaCatalog
from waits import within

ENCODER = Encoder()


def encode(obj: dict[str, Any]) -> bytes:
    """A JSON event (the produce format) as a single-object-encoded message."""
    record_name, datum = ENCODER.event_from_json(obj)
    return ENCODER.encode_single_object(record_name, datum)


async def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes | None],
    keys: Iterable[bytes | None] | None = None,
    partition: int | None = None,
) -> int:
    """Publish raw values (in order) and wait until all are acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    count = 0
    try:
        futures = []
        key_iter = iter(keys) if keys is not None else None
        for value in values:
            key = next(key_iter) if key_iter is not None else None
            futures.append(await producer.send(topic, value, key=key, partition=partition))
            count += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return count


def settings_for(db_url: str, bootstrap: str, topic: str, group: str, **kw: Any) -> Settings:
    return Settings(
        database_url=db_url,
        kafka_bootstrap_servers=bootstrap,
        kafka_topics=(topic,),
        kafka_group_id=group,
        kafka_session_timeout_ms=6000,
        batch_max_latency_ms=50,
        **kw,
    )


@contextlib.asynccontextmanager
async def running_ingestor(
    settings: Settings, registry: RegistryClient | None = None, **options: Any
) -> AsyncIterator[Ingestor]:
    """The real consumer, in this process, until the block ends (then stopped cleanly).

    `options` go to `Ingestor` (e.g. `registry_backoff`, `max_poll_interval_ms`).
    """
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    decoder = Decoder(SchemaCatalog(settings.schema_dirs), registry)
    ingestor = Ingestor(
        settings,
        pool,
        decoder,
        Metrics(),
        # What the runner's checks would say of this test's migrated, reachable database, so
        # that readiness shows the consumer's own parts (subscribed, writes, registry).
        Health(database_ok=True, migrations_ok=True),
        backoff=Backoff(first=0.05, cap=0.5),
        **options,
    )
    task = asyncio.create_task(ingestor.run())
    try:
        yield ingestor
    finally:
        ingestor.stop()
        try:
            await within(task, 30, "the in-process consumer to stop")
        finally:
            await pool.close()


async def fetchval(db_url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def fetch(db_url: str, sql: str, *args: Any) -> Sequence[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def count_events(db_url: str) -> int:
    return int(await fetchval(db_url, "SELECT count(*) FROM events"))


async def count_dead(db_url: str) -> int:
    return int(await fetchval(db_url, "SELECT count(*) FROM dead_letters"))


async def replay_dead_letters(db_url: str, *args: str, **env: str) -> str:
    """Run `course-audit dlq replay ARGS` against `db_url` (plus `env`); its stdout.

    The command must exit 0."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "course-audit"),
        "dlq",
        "replay",
        *args,
        env={**os.environ, "AUDIT_DATABASE_URL": db_url, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await within(proc.communicate(), 60, "`course-audit dlq replay` to exit")
    assert proc.returncode == 0, err.decode()
    return out.decode()
