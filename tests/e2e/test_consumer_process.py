"""`course-audit consume` as a process: kill -9, a database outage and SIGTERM mid-stream.

"Mid-stream" is made sure of, not hoped for: the test holds a lock that the consumer's writes
wait for, produces more, sees a write waiting (a batch in hand, not stored), and only then
kills or stops the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from course_audit.produce.sample import World, sample_stream
from harness import load_local_services
from pipeline import count_dead, count_events, encode, fetch, produce
from service_process import ServiceProcess
from tcp_proxy import Proxy
from waits import Deadline, eventually

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


async def _stored_at_least(db_url: str, n: int, timeout: float) -> None:
    await eventually(lambda: count_events(db_url), lambda got: got >= n, timeout, f"{n} events")


@contextlib.asynccontextmanager
async def writes_held(db_url: str) -> AsyncIterator[None]:
    """Until the block ends, no write to `events` gets through (reads still do)."""
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def write_waiting(db_url: str) -> None:
    """Wait until a write is seen waiting for a lock: the consumer has a batch in hand."""
    conn = await asyncpg.connect(db_url)
    try:
        await eventually(
            lambda: conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ),
            lambda waiting: waiting >= 1,
            60,
            "the consumer's next write to wait for the test's lock on events",
        )
    finally:
        await conn.close()


async def _restart_and_finish(
    env: dict[str, str], db_url: str, stream: list[tuple[bytes, bytes]], log: Path
) -> None:
    """Start the consumer again and check the whole stream ends up stored exactly once."""
    proc = ServiceProcess("consume", env, log).start()
    try:
        await _stored_at_least(db_url, len(stream), 180)
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
    half = len(stream) // 2
    await _produce_all(kafka_bootstrap, topic, stream[:half])
    env = _env(migrated_db_url, kafka_bootstrap, topic, group_id)
    first = ServiceProcess("consume", env, tmp_path / "first.log").start()
    try:
        await _stored_at_least(migrated_db_url, STREAM // 4, 120)
        async with writes_held(migrated_db_url):
            # More arrives while writes are held, so there is a write to see waiting even if
            # the first half is all stored by now.
            await _produce_all(kafka_bootstrap, topic, stream[half:])
            await write_waiting(migrated_db_url)
            first.kill()  # mid-stream: a batch in hand, not stored, its offsets uncommitted
    finally:
        first.stop()

    await _restart_and_finish(env, migrated_db_url, stream, tmp_path / "second.log")


async def test_sigterm_mid_stream_exits_cleanly_and_loses_nothing(
    migrated_db_url: str,
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
    tmp_path: Path,
    stream: list[tuple[bytes, bytes]],
) -> None:
    half = len(stream) // 2
    await _produce_all(kafka_bootstrap, topic, stream[:half])
    env = _env(migrated_db_url, kafka_bootstrap, topic, group_id)
    proc = ServiceProcess("consume", env, tmp_path / "first.log").start()
    try:
        await _stored_at_least(migrated_db_url, STREAM // 4, 120)
        async with writes_held(migrated_db_url):
            await _produce_all(kafka_bootstrap, topic, stream[half:])
            await write_waiting(migrated_db_url)
            seen = len(proc.log_lines())
            proc.signal(signal.SIGTERM)  # mid-stream: a batch in hand, not stored
            await proc.wait_log("stopping: finishing the batch in hand", 30, after=seen)
            # It does finish that batch: it cannot exit while its write waits for the lock.
            assert proc.proc is not None and proc.proc.poll() is None
        assert proc.wait(60) == 0
    finally:
        proc.stop()

    await _restart_and_finish(env, migrated_db_url, stream, tmp_path / "second.log")


@pytest.fixture
def own_postgres() -> Iterator[tuple[Any, Path, str]]:
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


def _via(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, ""))


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


async def test_database_outage_pauses_then_resumes_without_loss(
    own_postgres: tuple[Any, Path, str],
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
    tmp_path: Path,
    stream: list[tuple[bytes, bytes]],
) -> None:
    services, state, db_url = own_postgres
    # The consumer reaches the server through a proxy whose port stays the test's for the
    # whole test: the server may come back on another port if its own was taken meanwhile.
    proxy = await Proxy(*_address(db_url)).start()
    env = _env(_via(db_url, proxy.port), kafka_bootstrap, topic, group_id)
    proc = ServiceProcess("consume", env, tmp_path / "consume.log").start()
    try:
        await proc.wait_ready()
        half = len(stream) // 2
        await _produce_all(kafka_bootstrap, topic, stream[:half])
        await _stored_at_least(db_url, 1000, 120)

        await asyncio.to_thread(services.stop_postgres, state)
        await proc.wait_health(
            lambda h: h is not None and h[0] == 503 and h[1]["database"] is False,
            30,
            "unready for want of its database",
        )
        seen = len(proc.log_lines())
        # Messages keep arriving during the outage; the consumer must stay up for all of it.
        await _produce_all(kafka_bootstrap, topic, stream[half:])
        # The outage lasts until the consumer has failed to write (and backed off, for longer
        # each time) six times; it stays up and unready throughout.
        failures = 6
        deadline = Deadline(60, f"{failures} failed writes logged during the outage")
        while True:
            assert proc.proc is not None and proc.proc.poll() is None, proc.log_text()[-3000:]
            found = [
                line
                for line in proc.log_lines()[seen:]
                if '"msg":"database unavailable, retrying"' in line
            ]
            if len(found) >= failures:
                break
            health = await proc.health()
            assert health is not None and health[0] == 503, health
            if deadline.passed():
                raise deadline.failure(f"found {len(found)}:\n{proc.log_text()[-3000:]}")
            await asyncio.sleep(min(0.2, deadline.left()))

        db_url = await asyncio.to_thread(services.start_postgres, state)
        proxy.target = _address(db_url)
        await proc.wait_ready(60)
        await _stored_at_least(db_url, len(stream), 180)
        await proc.wait_log("database reachable again; resuming", 30, after=seen)
    finally:
        # In a thread: the proxy runs on this loop, and the service closes its pool through it.
        await asyncio.to_thread(proc.stop)
        await proxy.close()
    await _assert_all_stored_once(db_url, stream)
