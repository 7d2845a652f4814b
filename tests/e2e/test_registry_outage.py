"""`course-audit consume` with a schema registry that goes away: unready, SIGTERM still exits.

The registry stand-in runs in the test's event loop behind a TCP proxy that the test cuts; the
service is a process of its own. Blocking waits on the process run in a thread, so that the
proxy keeps answering (by resetting connections) meanwhile.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from course_audit.produce.sample import World, sample_event
from pipeline import ENCODER, count_dead, count_events, produce
from registry_stub import RegistryStub
from service_process import ServiceProcess, service_env
from tcp_proxy import Proxy
from waits import eventually

#: What a termination grace period can rely on (docs/operations.md#signals).
SIGTERM_EXIT_S = 10


def _values(world: World, event_type: str, schema_id: int, count: int) -> list[bytes]:
    now = datetime.now(UTC)
    values = []
    for i in range(count):
        event = sample_event(world, event_type, now - timedelta(minutes=count - i))
        name, datum = ENCODER.event_from_json(event)
        values.append(ENCODER.encode_confluent(schema_id, name, datum))
    return values


async def test_sigterm_during_a_registry_outage_exits_promptly_and_loses_nothing(
    migrated_db_url: str, kafka_bootstrap: str, topic: str, group_id: str, tmp_path: Path
) -> None:
    world = World.build(seed=41, courses=5)
    before = _values(world, "updated", 1, 10)
    during = _values(world, "published", 2, 20)
    async with RegistryStub() as stub:
        stub.register(1, ENCODER.schema_json("updated"))
        stub.register(2, ENCODER.schema_json("published"))
        proxy = await Proxy("127.0.0.1", stub.port).start()
        env = service_env(
            migrated_db_url,
            kafka_bootstrap,
            topic,
            group_id,
            AUDIT_SCHEMA_REGISTRY_URL=f"http://127.0.0.1:{proxy.port}",
        )
        first = ServiceProcess("consume", env, tmp_path / "first.log").start()
        try:
            await first.wait_health(
                lambda h: h is not None and h[0] == 200 and h[1]["registry"] is True,
                60,
                "ready, with the registry reachable",
            )
            await produce(kafka_bootstrap, topic, before)
            await eventually(
                lambda: count_events(migrated_db_url), lambda n: n == 10, 60, "10 events"
            )

            proxy.cut()
            # Messages with a schema id the consumer has not fetched yet.
            await produce(kafka_bootstrap, topic, during)
            await first.wait_health(
                lambda h: h is not None and h[0] == 503 and h[1]["registry"] is False,
                60,
                "unready for want of its registry",
            )
            await first.wait_log('"msg":"schema registry unavailable, retrying"', 30, count=2)
            assert await count_events(migrated_db_url) == 10

            seen = len(first.log_lines())
            first.signal(signal.SIGTERM)
            status = await asyncio.to_thread(first.wait, SIGTERM_EXIT_S)
            assert status == 0, first.log_text()[-3000:]
            await first.wait_log("consumer stopped", 1, after=seen)
        finally:
            await asyncio.to_thread(first.stop)

        # Nothing of the outage was stored or committed: a restart stores all of it.
        proxy.mend()
        second = ServiceProcess("consume", env, tmp_path / "second.log").start()
        try:
            await eventually(
                lambda: count_events(migrated_db_url), lambda n: n == 30, 120, "30 events"
            )
            await second.wait_ready(30)
        finally:
            await asyncio.to_thread(second.stop)
            await proxy.close()
    assert await count_dead(migrated_db_url) == 0
    assert stub.requests.count(2) >= 1
