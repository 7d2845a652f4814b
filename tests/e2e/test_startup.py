"""Start-up with the schema owned by a separate migration job (AUDIT_MIGRATE_ON_START=false)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from course_audit.produce.sample import World, sample_event
from pipeline import count_events, encode, eventually, produce
from service_process import ServiceProcess


async def test_waits_unready_for_migrations_then_consumes(
    db_url: str, kafka_bootstrap: str, topic: str, group_id: str, tmp_path: Path
) -> None:
    world = World.build(seed=2)
    await produce(
        kafka_bootstrap, topic, [encode(sample_event(world, "published", datetime.now(UTC)))]
    )
    env = {
        "AUDIT_DATABASE_URL": db_url,
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "AUDIT_KAFKA_TOPICS": topic,
        "AUDIT_KAFKA_GROUP_ID": group_id,
        "AUDIT_MIGRATE_ON_START": "false",
    }
    proc = ServiceProcess("consume", env, tmp_path / "consume.log").start()
    try:
        await proc.wait_health(
            lambda h: h is not None and h[0] == 503 and h[1]["migrations"] is False, 30, "unready"
        )
        assert "waiting for `course-audit migrate`" in proc.log_text()

        migrate = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "course-audit"),
            "migrate",
            env={**proc.env},
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await migrate.communicate()
        assert migrate.returncode == 0, err.decode()
        await proc.wait_ready(30)
        await eventually(lambda: count_events(db_url), lambda n: n == 1, 30)
    finally:
        proc.stop()
