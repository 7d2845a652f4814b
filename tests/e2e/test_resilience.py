"""A process keeps serving while what it depends on is away: Kafka at start, the database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from course_audit.produce.sample import World, sample_event
from pipeline import count_events, encode, produce
from service_process import ServiceProcess, service_env
from tcp_proxy import Proxy
from waits import eventually


async def test_run_serves_the_api_while_kafka_is_unreachable_then_consumes(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, tmp_path: Path
) -> None:
    host, port = kafka_bootstrap.rsplit(":", 1)
    broker = await Proxy(host, int(port)).start()
    broker.cut()  # the bootstrap address refuses every connection
    world = World.build(seed=5)
    await produce(
        kafka_bootstrap, topic, [encode(sample_event(world, "published", datetime.now(UTC)))]
    )
    env = service_env(migrated_db_url, f"127.0.0.1:{broker.port}", topic, group_id)
    proc = ServiceProcess("run", env, tmp_path / "run.log").start()
    try:
        # One line saying why (here: the connection is reset), with the kind of failure.
        await proc.wait_log('"kafka_error":"connection"', 60)
        health = await proc.wait_health(
            lambda h: h is not None and h[0] == 503 and bool(h[1]["consumer_error"]),
            30,
            "readiness naming the consumer's failure",
        )
        assert health is not None
        assert health[1]["subscribed"] is False and health[1]["database"] is True
        # The API answers meanwhile (a request without a token: 401, not a dead process).
        async with aiohttp.ClientSession() as http:
            url = f"{proc.base_url}/api/v1/audit/course/courses/1"
            async with http.get(url) as resp:
                assert resp.status == 401
        assert proc.proc is not None and proc.proc.poll() is None

        broker.mend()
        await proc.wait_ready(90)
        health = await proc.health()
        assert health is not None and health[1]["consumer_error"] is None
        await eventually(
            lambda: count_events(migrated_db_url), lambda n: n == 1, 60, "the event stored"
        )
    finally:
        proc.stop()
        await broker.close()


async def test_a_quiet_consumer_is_ready_again_once_the_database_is_back(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, tmp_path: Path
) -> None:
    # Nothing to consume: no batch is written after the outage, so readiness must come back
    # from the database answering, not from a stored batch.
    db = aiohttp.client.URL(migrated_db_url)
    database = await Proxy(db.host or "127.0.0.1", db.port or 5432).start()
    env = service_env(
        str(db.with_host("127.0.0.1").with_port(database.port)), kafka_bootstrap, topic, group_id
    )
    proc = ServiceProcess("consume", env, tmp_path / "consume.log").start()
    try:
        await proc.wait_ready(60)
        database.cut()
        await proc.wait_health(
            lambda h: h is not None and h[0] == 503 and h[1]["database"] is False,
            30,
            "readiness saying the database is away",
        )
        database.mend()
        await proc.wait_ready(30)
    finally:
        proc.stop()
        await database.close()
