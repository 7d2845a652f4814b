"""Each subcommand with its own database role (docs/operations.md#database-roles), end to end:
`consume` as a member of course_audit_writer, `serve` as a member of course_audit_reader,
neither given the owner's URL; and maintenance run by the consumer only."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from test_api_support import make_event

from course_audit.retention import add_months, month_of
from course_audit.store.tokens import create_token
from db_roles import as_role, login_roles
from pipeline import encode, produce
from service_process import ServiceProcess, service_env
from waits import eventually, within

pytestmark = pytest.mark.e2e

#: Where no PostgreSQL listens: the owner's URL a restricted process must never need.
NO_OWNER = "postgresql://owner@127.0.0.1:1/nowhere"


async def test_consume_as_writer_and_serve_as_reader(
    server_url: str,
    migrated_db_url: str,
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
    tmp_path: Path,
) -> None:
    async with login_roles(server_url) as (writer, reader):
        owner = await asyncpg.connect(migrated_db_url)
        try:
            await _roles_at_work(
                owner, migrated_db_url, writer, reader, kafka_bootstrap, topic, group_id, tmp_path
            )
        finally:
            await owner.close()


async def _roles_at_work(
    owner: asyncpg.Connection[Any],
    migrated_db_url: str,
    writer: str,
    reader: str,
    kafka_bootstrap: str,
    topic: str,
    group_id: str,
    tmp_path: Path,
) -> None:
    serve = consume = None
    try:
        now: datetime = await owner.fetchval("SELECT now()")
        expired = add_months(month_of(now), -20)
        expired_name = f"events_y{expired.year:04d}m{expired.month:02d}"
        await owner.fetchval("SELECT course_audit_create_partitions(ARRAY[$1::date])", expired)

        # The API replica first, with a 1 s maintenance interval it must not act on.
        serve = ServiceProcess(
            "serve",
            {
                "AUDIT_DATABASE_URL": NO_OWNER,
                "AUDIT_API_DATABASE_URL": as_role(migrated_db_url, reader),
                "AUDIT_MIGRATE_ON_START": "false",
                "AUDIT_MAINTENANCE_INTERVAL_S": "1",
            },
            tmp_path / "serve.log",
        ).start()
        await serve.wait_ready()

        consume = ServiceProcess(
            "consume",
            service_env(
                NO_OWNER,
                kafka_bootstrap,
                topic,
                group_id,
                AUDIT_CONSUMER_DATABASE_URL=as_role(migrated_db_url, writer),
                AUDIT_MIGRATE_ON_START="false",
                AUDIT_MAINTENANCE_INTERVAL_S="1",
                AUDIT_BATCH_MAX_LATENCY_MS="50",
            ),
            tmp_path / "consume.log",
        ).start()
        await consume.wait_ready()

        course = {"id": 77, "account_id": 7, "root_account_id": 1, "name": "Roles"}
        older = add_months(month_of(now), -2)  # a month with no partition yet
        events = [
            make_event("updated", now.astimezone(UTC), course),
            make_event("updated", datetime(older.year, older.month, 3, tzinfo=UTC), course),
        ]
        await produce(kafka_bootstrap, topic, [encode(e) for e in events] + [b"not avro"])
        await eventually(
            lambda: owner.fetchrow(
                "SELECT (SELECT count(*) FROM events) AS events,"
                " (SELECT count(*) FROM dead_letters) AS dead"
            ),
            lambda row: (row["events"], row["dead"]) == (2, 1),
            60,
            "two events and one dead letter stored by the writer role",
        )

        token = (await create_token(owner, "roles", [1])).token
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{serve.base_url}/api/v1/audit/course/courses/77",
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
        assert sorted(e["id"] for e in body["events"]) == sorted(e["event_id"] for e in events)
        await _live_tail_across_roles(serve, token, events, kafka_bootstrap, topic, course)

        # Maintenance is the consumer's: it drops the expired month (by the database's
        # clock); the API replica, given the same 1 s interval and started first, never ran
        # a pass (its role could not have, and it does not try).
        await consume.wait_log(expired_name, 60)
        partitions = await owner.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'events'::regclass"
        )
        assert expired_name not in {r["relname"] for r in partitions}
        await consume.wait_log('"msg":"maintenance"', 60)
        assert "maintenance" not in serve.log_text()
        assert "permission denied" not in serve.log_text() + consume.log_text()
    finally:
        for proc in (consume, serve):
            if proc is not None:
                proc.stop()


async def _live_tail_across_roles(
    serve: ServiceProcess,
    token: str,
    stored: list[dict[str, Any]],
    kafka_bootstrap: str,
    topic: str,
    course: dict[str, Any],
) -> None:
    """The reader's live tail: resumed after the older event it gets the newer one, then an
    event the writer's process stores arrives through LISTEN/NOTIFY across the processes."""
    url = f"{serve.base_url}/api/v1/audit/course/courses/{course['id']}/stream"
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": stored[1]["event_id"]}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        ids = []

        async def next_id() -> None:
            while True:
                line = (await resp.content.readline()).decode()
                if line.startswith("id: "):
                    ids.append(line[4:].strip())
                    return

        await within(next_id(), 30, "the resumed event on the reader's stream")
        assert ids == [stored[0]["event_id"]]
        live = make_event("updated", datetime.now(UTC), course)
        await produce(kafka_bootstrap, topic, [encode(live)])
        await within(next_id(), 60, "a new event on the reader's stream")
        assert ids == [stored[0]["event_id"], live["event_id"]]
