"""Start-up with the schema owned by a separate migration job (AUDIT_MIGRATE_ON_START=false)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from course_audit.produce.sample import World, sample_event
from pipeline import count_events, encode, produce
from service_process import ServiceProcess, service_env
from waits import eventually, within


async def test_waits_unready_for_migrations_then_consumes(
    db_url: str, kafka_bootstrap: str, topic: str, group_id: str, tmp_path: Path
) -> None:
    world = World.build(seed=2)
    await produce(
        kafka_bootstrap, topic, [encode(sample_event(world, "published", datetime.now(UTC)))]
    )
    env = service_env(db_url, kafka_bootstrap, topic, group_id, AUDIT_MIGRATE_ON_START="false")
    proc = ServiceProcess("consume", env, tmp_path / "consume.log").start()
    try:
        # The line it logs once it has found the schema behind and started waiting: polled
        # for, not read at the moment readiness happens to say something.
        await proc.wait_log("waiting for `course-audit migrate`", 60)
        # Unready meanwhile, for the migrations alone (it does wait: nothing migrates here).
        await proc.wait_health(
            lambda h: h is not None and h[0] == 503 and h[1]["migrations"] is False, 30, "unready"
        )

        migrate = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "course-audit"),
            "migrate",
            env={**proc.env},
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await within(migrate.communicate(), 60, "`course-audit migrate` to finish")
        assert migrate.returncode == 0, err.decode()
        await proc.wait_ready(30)
        await eventually(lambda: count_events(db_url), lambda n: n == 1, 30, "the event stored")
    finally:
        proc.stop()
