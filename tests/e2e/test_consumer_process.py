"""`course-audit consume` as a process: kill -9, a database outage and SIGTERM mid-stream."""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from course_audit.produce.sample import World, sample_stream
from harness import load_local_services
from pipeline import count_dead, count_events, encode, eventually, fetch, produce
from service_process import ServiceProcess

STREAM = 30_000


@pytest.fixture(scope="module")
def stream() -> list[tuple[bytes, bytes]]:
    """Tens of thousands of realistic messages (value, key), encoded once for the module."""
    world = World.build(seed=21, courses=200, accounts=6, users=40)
    start = datetime.now(UTC) - timedelta(days=20)
    return [
        (encode(e), str(e["course"]["id"]).encode())
        for e in sample_stream(world, STREAM, start=start, spacing_ms=50)
    ]


async def _produce_all(bootstrap: str, topic: str, stream: list[tuple[bytes, bytes]]) -> None:
    await produce(bootstrap, topic, (v for v, _ in stream), (k for _, k in stream))


def _env(db_url: str, bootstrap: str, topic: str, group: str) -> dict[str, str]:
    return {
        "AUDIT_DATABASE_URL": db_url,
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "AUDIT_KAFKA_TOPICS": topic,
        "AUDIT_KAFKA_GROUP_ID": group,
        "AUDIT_BATCH_MAX_RECORDS": "1000",
    }


async def _assert_all_stored_once(db_url: str, stream: list[tuple[bytes, bytes]]) -> None:
    rows = await fetch(
        db_url, "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM course_audit_events"
    )
    assert (rows[0]["n"], rows[0]["d"]) == (len(stream), len(stream))
    assert await count_dead(db_url) == 0


async def _restart_and_finish(
    env: dict[str, str], db_url: str, stream: list[tuple[bytes, bytes]], log: Path
) -> None:
    """Start the consumer again and check the whole stream ends up stored exactly once."""
    proc = ServiceProcess("consume", env, log).start()
    try:
        await eventually(lambda: count_events(db_url), lambda n: n >= len(stream), 180)
    finally:
        proc.stop()
    await _assert_all_stored_once(db_url, stream)


async def test_kill_9_mid_stream_then_restart_stores_everything_once(
    migrated_db_url: str,
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
    tmp_path: Path,
    stream: list[tuple[bytes, bytes]],
) -> None:
    await _produce_all(kafka_bootstrap, topic, stream)
    env = _env(migrated_db_url, kafka_bootstrap, topic, group_id)
    first = ServiceProcess("consume", env, tmp_path / "first.log").start()
    try:
        await eventually(lambda: count_events(migrated_db_url), lambda n: n >= STREAM // 4, 120)
        first.kill()
    finally:
        first.stop()
    stored_at_kill = await count_events(migrated_db_url)
    assert stored_at_kill < STREAM, "the kill should land mid-stream"

    await _restart_and_finish(env, migrated_db_url, stream, tmp_path / "second.log")


async def test_sigterm_mid_stream_exits_cleanly_and_loses_nothing(
    migrated_db_url: str,
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
    tmp_path: Path,
    stream: list[tuple[bytes, bytes]],
) -> None:
    await _produce_all(kafka_bootstrap, topic, stream)
    env = _env(migrated_db_url, kafka_bootstrap, topic, group_id)
    proc = ServiceProcess("consume", env, tmp_path / "first.log").start()
    await eventually(lambda: count_events(migrated_db_url), lambda n: n >= STREAM // 4, 120)
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert "stopping" in proc.log_text()

    await _restart_and_finish(env, migrated_db_url, stream, tmp_path / "second.log")


@pytest.fixture
def own_postgres() -> Iterator[tuple[object, Path, str]]:
    """A PostgreSQL server of this test's own, so stopping it disturbs no other test."""
    services = load_local_services()
    # Not tmp_path: the postgres user must reach it, and pytest prunes old tmp_path trees.
    state = Path(tempfile.mkdtemp(prefix="course-audit-pg-"))
    url = services.start_postgres(state)
    try:
        yield services, state, url
    finally:
        services.down(state)
        shutil.rmtree(state, ignore_errors=True)


async def test_database_outage_pauses_then_resumes_without_loss(
    own_postgres: tuple[object, Path, str],
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
    tmp_path: Path,
    stream: list[tuple[bytes, bytes]],
) -> None:
    services, state, db_url = own_postgres
    env = _env(db_url, kafka_bootstrap, topic, group_id)
    # Keep the stream flowing slowly enough that the outage lands in the middle of it.
    proc = ServiceProcess("consume", env, tmp_path / "consume.log").start()
    try:
        await proc.wait_ready()
        half = len(stream) // 2
        await _produce_all(kafka_bootstrap, topic, stream[:half])
        await eventually(lambda: count_events(db_url), lambda n: n >= 1000, 120)

        services.stop_postgres(state)  # type: ignore[attr-defined]
        await proc.wait_health(
            lambda h: h is not None and h[0] == 503 and h[1]["database"] is False, 30, "unready"
        )
        # Messages keep arriving during the outage; the consumer must stay up for all of it.
        await _produce_all(kafka_bootstrap, topic, stream[half:])
        outage_end = time.monotonic() + 20
        while time.monotonic() < outage_end:
            assert proc.proc is not None and proc.proc.poll() is None, proc.log_text()[-3000:]
            health = await proc.health()
            assert health is not None and health[0] == 503
            await asyncio.sleep(1)  # holding the outage open, not waiting for a result

        services.start_postgres(state)  # type: ignore[attr-defined]
        await proc.wait_ready(60)
        await eventually(lambda: count_events(db_url), lambda n: n >= len(stream), 180)
    finally:
        proc.stop()
    await _assert_all_stored_once(db_url, stream)
    assert "database unavailable, retrying" in proc.log_text()
