"""Reading from a streaming replica (docs/operations.md#read-replicas), end to end.

A local PostgreSQL primary and a hot standby made from it with `pg_basebackup -R`
(tests/harness.py `provide_replicated`), Kafka from the session, and `course-audit run` with
AUDIT_DATABASE_READ_URL at the standby. Replay on the standby is paused
(`pg_wal_replay_pause()`) to show which server answers: the API serves the standby's older view
and reports its lag, while tokens are read on the primary; the live tail still sends what is
stored; a second API process allowed less lag reads the primary instead and is unready; the
standby stopped, the API answers from the primary and readiness says why.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from test_api_support import Api, course_path, create_topic, delete_topic, make_event, produce

from course_audit.store.migrate import migrate
from course_audit.store.tokens import create_token
from harness import Replicated, provide_replicated
from service_process import ServiceProcess
from waits import Deadline, eventually

pytestmark = pytest.mark.e2e

COURSE = {"id": 8101, "account_id": 810, "root_account_id": 1, "name": "Replica course"}


def events_of(n: int, start: datetime) -> list[dict[str, Any]]:
    return [make_event("updated", start + timedelta(milliseconds=i), COURSE) for i in range(n)]


async def page_ids(api: Api, token: str) -> list[str]:
    """The course's events through the API (none while the course is unknown: a 404)."""
    reply = await api.get(course_path(COURSE["id"]), token=token, params={"per_page": "100"})
    if reply.status == 404:
        return []
    assert reply.status == 200, reply.body
    return [e["id"] for e in reply.json()["events"]]


async def metric(base: str, name: str) -> float | None:
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def stored_on(url: str, ids: list[str]) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM events WHERE event_id = ANY($1::uuid[])", ids)
        )
    finally:
        await conn.close()


async def replay(url: str, paused: bool) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()"
        )
    finally:
        await conn.close()


async def reads_here(url: str) -> int:
    """API connections to this server other than the LISTEN one (by application_name)."""
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                " AND application_name <> 'course-audit live tail'"
            )
        )
    finally:
        await conn.close()


async def sent_live(
    base: str, token: str, kafka: str, topic: str, events: list[dict[str, Any]]
) -> None:
    """Open the course's live tail, produce `events`, and read until each was sent."""
    async with aiohttp.ClientSession() as session:
        resp = await session.get(
            base + course_path(COURSE["id"]) + "/stream",
            headers={"Authorization": f"Bearer {token}"},
        )
        try:
            assert resp.status == 200
            await produce(kafka, topic, events)
            deadline = Deadline(30, "the produced events on the live tail")
            seen = ""
            while not all(e["event_id"] in seen for e in events):
                async with asyncio.timeout(deadline.left()):
                    line = await resp.content.readline()
                assert line, "the stream ended"
                seen += line.decode()
        finally:
            resp.close()


@pytest.fixture(scope="module")
def replicated() -> Any:
    with provide_replicated() as pair:
        yield pair


@pytest.fixture
async def running(
    replicated: Replicated, kafka_bootstrap: str, tmp_path: Path
) -> AsyncIterator[tuple[ServiceProcess, Api, str]]:
    conn = await asyncpg.connect(replicated.primary_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    topic = await create_topic(kafka_bootstrap)
    service = ServiceProcess(
        "run",
        {
            "AUDIT_DATABASE_URL": replicated.primary_url,
            "AUDIT_DATABASE_READ_URL": replicated.standby_url,
            "AUDIT_DATABASE_READ_MAX_LAG_S": "3600",
            "AUDIT_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "AUDIT_KAFKA_TOPICS": topic,
            "AUDIT_KAFKA_GROUP_ID": f"g-{uuid.uuid4().hex[:12]}",
            "AUDIT_BATCH_MAX_LATENCY_MS": "50",
        },
        tmp_path / "run.log",
    )
    api: Api | None = None
    try:
        service.start()
        await service.wait_ready()
        api = Api(service.base_url)
        await api.load_document()
        yield service, api, topic
    finally:
        if api is not None:
            await api.close()
        await asyncio.to_thread(service.stop)
        await replay(replicated.standby_url, paused=False)
        await delete_topic(kafka_bootstrap, topic)


async def test_reads_come_from_the_replica_tokens_and_writes_from_the_primary(
    replicated: Replicated,
    running: tuple[ServiceProcess, Api, str],
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    service, api, topic = running
    primary, standby = replicated.primary_url, replicated.standby_url
    conn = await asyncpg.connect(primary)
    try:
        token = (await create_token(conn, "replica", [1])).token
    finally:
        await conn.close()

    # Ready with the replica caught up; events produced to Kafka show through the API.
    status, body = await service.wait_health(
        lambda h: h is not None and h[0] == 200 and h[1].get("replica", {}).get("ok") is True,
        30,
        "ready with its replica",
    )
    assert body["replica"]["error"] is None and body["replica"]["lag_s"] < 30
    first = events_of(5, datetime.now(UTC) - timedelta(minutes=2))
    await produce(kafka_bootstrap, topic, first)
    first_ids = sorted(e["event_id"] for e in first)
    await eventually(
        lambda: page_ids(api, token), lambda ids: sorted(ids) == first_ids, 60, "the first events"
    )
    assert await metric(service.base_url, "course_audit_replica_up") == 1.0
    # The live tail: a notified batch is read on the replica once replayed there (no read
    # went to the primary instead).
    tailed = events_of(3, datetime.now(UTC))
    await sent_live(service.base_url, token, kafka_bootstrap, topic, tailed)
    assert await metric(service.base_url, "course_audit_replica_fallback_total") == 0.0
    first_ids = sorted(first_ids + [e["event_id"] for e in tailed])
    await eventually(
        lambda: page_ids(api, token), lambda ids: sorted(ids) == first_ids, 30, "tailed events"
    )
    # The API's pooled connections include some on the standby (besides the primary's).
    assert await reads_here(standby) >= 1

    # Replay paused: what the consumer stores next reaches the primary, not the standby.
    await replay(standby, paused=True)
    second = events_of(4, datetime.now(UTC) - timedelta(minutes=1))
    await produce(kafka_bootstrap, topic, second)
    second_ids = [e["event_id"] for e in second]
    await eventually(lambda: stored_on(primary, second_ids), lambda n: n == 4, 60, "stored")
    assert await stored_on(standby, second_ids) == 0
    # The API serves the standby's older view (pages and exports), and says how far behind
    # it is.
    assert sorted(await page_ids(api, token)) == first_ids
    export = await api.get(course_path(COURSE["id"]) + "/export", token=token)
    assert export.status == 200
    lines = [json.loads(line) for line in export.body.decode().splitlines() if line]
    assert sorted(e["id"] for e in lines) == first_ids
    status, body = await service.wait_health(
        lambda h: h is not None and (h[1].get("replica", {}).get("lag_s") or 0) >= 1.0,
        30,
        "reporting the paused replica's lag",
    )
    assert status == 200 and body["replica"]["ok"] is True  # within 3600 s
    lag = await metric(service.base_url, "course_audit_replica_lag_seconds")
    assert lag is not None and lag >= 1.0
    # A token created now (not on the standby) works at once: tokens are read on the primary.
    conn = await asyncpg.connect(primary)
    try:
        fresh_token = (await create_token(conn, "while-paused", [1])).token
    finally:
        await conn.close()
    assert sorted(await page_ids(api, fresh_token)) == first_ids

    # An API allowed 1 s of lag reads the primary meanwhile, and is not ready.
    strict = ServiceProcess(
        "serve",
        {
            "AUDIT_DATABASE_URL": primary,
            "AUDIT_DATABASE_READ_URL": standby,
            "AUDIT_DATABASE_READ_MAX_LAG_S": "1",
        },
        tmp_path / "strict.log",
    )
    strict_api: Api | None = None
    try:
        strict.start()
        status, body = await strict.wait_health(
            lambda h: (
                h is not None
                and h[0] == 503
                and h[1]["migrations"]
                and "lag" in (h[1].get("replica", {}).get("error") or "")
            ),
            60,
            "unready for its replica's lag",
        )
        assert body["replica"]["ok"] is False and body["database"] is True
        strict_api = Api(strict.base_url)
        assert sorted(await page_ids(strict_api, token)) == sorted(first_ids + second_ids)
        fallbacks = await metric(strict.base_url, "course_audit_replica_fallback_total")
        assert fallbacks is not None and fallbacks >= 1
        assert "replica not used; reading from the primary" in strict.log_text()
    finally:
        if strict_api is not None:
            await strict_api.close()
        await asyncio.to_thread(strict.stop)

    # The live tail LISTENs on the primary: a batch stored while the standby is paused is
    # still sent (read from the primary once the standby does not catch up).
    live = events_of(1, datetime.now(UTC))
    await sent_live(service.base_url, token, kafka_bootstrap, topic, live)

    # Replay resumed: the standby catches up, and so does what the API shows.
    await replay(standby, paused=False)
    everything = sorted(first_ids + second_ids + [live[0]["event_id"]])
    await eventually(
        lambda: page_ids(api, token), lambda ids: sorted(ids) == everything, 30, "caught up"
    )
    await service.wait_health(
        lambda h: h is not None and h[0] == 200 and h[1]["replica"]["lag_s"] < 1.0,
        30,
        "reporting the replica caught up",
    )

    # The standby stopped: the API answers from the primary; readiness says why.
    replicated.stop_standby()
    try:
        status, body = await service.wait_health(
            lambda h: h is not None and h[0] == 503 and h[1]["replica"]["ok"] is False,
            30,
            "unready without its replica",
        )
        assert body["database"] is True and body["replica"]["error"]
        before = await metric(service.base_url, "course_audit_replica_fallback_total") or 0.0
        more = events_of(2, datetime.now(UTC))
        await produce(kafka_bootstrap, topic, more)
        everything = sorted(everything + [e["event_id"] for e in more])
        await eventually(
            lambda: page_ids(api, token), lambda ids: sorted(ids) == everything, 60, "from primary"
        )
        after = await metric(service.base_url, "course_audit_replica_fallback_total")
        assert after is not None and after > before
    finally:
        replicated.start_standby()
    # Back: the replica is read again and readiness is true.
    await service.wait_health(
        lambda h: h is not None and h[0] == 200 and h[1]["replica"]["ok"] is True,
        60,
        "ready with its replica again",
    )
    assert sorted(await page_ids(api, token)) == everything
