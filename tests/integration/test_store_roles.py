"""Least privilege in the store (docs/operations.md#database-roles): what the writer and the
reader roles can and cannot do, against a real PostgreSQL with login roles made here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest

from course_audit.model import DeadLetter, ErrorCode, Event, Source
from course_audit.retention import add_months, month_of
from course_audit.store.partitions import PartitionCache, drop_expired, list_partitions
from course_audit.store.writer import write_batch, write_dead_letters
from db_roles import as_role, login_roles

INSUFFICIENT_PRIVILEGE = "42501"


@dataclass
class Roles:
    owner: asyncpg.Connection[Any]
    writer: asyncpg.Connection[Any]
    reader: asyncpg.Connection[Any]


@pytest.fixture
async def roles(server_url: str, migrated_db_url: str) -> AsyncIterator[Roles]:
    """The owner (the test's own role) and one login role in each group."""
    async with login_roles(server_url) as (writer, reader):
        conns: list[asyncpg.Connection[Any]] = []
        try:
            for url in (
                migrated_db_url,
                as_role(migrated_db_url, writer),
                as_role(migrated_db_url, reader),
            ):
                conns.append(await asyncpg.connect(url))
            yield Roles(*conns)
        finally:
            for conn in conns:
                await conn.close()


def event(at: datetime, root: int = 1) -> Event:
    return Event(
        event_id=uuid.uuid4(),
        created_at=at,
        event_type="updated",
        event_source="api",
        course={"id": 42, "account_id": 7, "root_account_id": root, "name": "C"},
        user={"id": 5, "name": "Ann", "login_id": "ann"},
        page_view={"id": "pv-1", "url": "/x"},
        sis_batch_id=None,
        event_data={"name": ["A", "B"]},
    )


async def refused(action: Callable[[], Awaitable[Any]]) -> str:
    """The SQLSTATE `action` fails with."""
    with pytest.raises(asyncpg.PostgresError) as raised:
        await action()
    return str(raised.value.sqlstate)


async def test_the_writer_stores_events_snapshots_and_dead_letters(roles: Roles) -> None:
    # An event of a month with no partition yet: created through the owner's function.
    long_ago = datetime(2021, 3, 4, tzinfo=UTC)
    result = await write_batch(
        roles.writer, [event(datetime.now(UTC)), event(long_ago)], cache=PartitionCache()
    )
    assert result.inserted == 2
    assert date(2021, 3, 1) in await list_partitions(roles.owner)
    source = Source("t", 0, 1, b"k", b"v", ())
    letter = DeadLetter(source, ErrorCode.INVALID_SCHEMA, "bad", datetime.now(UTC))
    assert await write_dead_letters(roles.writer, [letter]) == 1
    assert await roles.owner.fetchval("SELECT count(*) FROM users") == 1


async def test_the_writer_cannot_change_the_schema_or_read_tokens(roles: Roles) -> None:
    w = roles.writer
    for sql in (
        "DROP TABLE events",
        "CREATE TABLE mine (x int)",
        "ALTER TABLE events ADD COLUMN x int",
        "TRUNCATE events",
        "SELECT * FROM api_tokens",
        "UPDATE events SET event_type = 'x'",
        "DELETE FROM events",
        "INSERT INTO api_tokens (name, token_hash, root_account_ids) VALUES ('x', 'x', '{1}')",
    ):
        assert await refused(lambda sql=sql: w.execute(sql)) == INSUFFICIENT_PRIVILEGE, sql


async def test_the_writer_cannot_drop_a_current_month(roles: Roles) -> None:
    now: datetime = await roles.owner.fetchval("SELECT now()")
    current = month_of(now)
    old = add_months(current, -30)
    await write_batch(
        roles.writer,
        [event(now), event(datetime(old.year, old.month, 2, tzinfo=UTC))],
        cache=PartitionCache(),
    )
    # Even asked for the shortest retention the function takes, by the database's clock,
    # this month stays and only the old one goes; no retention at all drops nothing.
    assert await roles.writer.fetchval("SELECT course_audit_drop_expired_partitions(0)") == []
    dropped = await drop_expired(roles.writer, 1, cache=PartitionCache())
    assert dropped == [f"events_y{old.year:04d}m{old.month:02d}"]
    assert current in await list_partitions(roles.owner)
    assert await roles.owner.fetchval("SELECT count(*) FROM events") == 1


async def test_the_reader_reads_and_cannot_write_anything(roles: Roles) -> None:
    await write_batch(roles.owner, [event(datetime.now(UTC))], cache=PartitionCache())
    r = roles.reader
    for table in ("events", "courses", "users", "page_views", "accounts", "api_tokens"):
        await r.fetch(f"SELECT * FROM {table}")
    assert await r.fetchval("SELECT count(*) FROM course_audit_events") == 1
    for sql in (
        "INSERT INTO events (event_id, created_at, event_type, event_source, course_id,"
        " account_id, root_account_id, event_data)"
        " VALUES (gen_random_uuid(), now(), 'x', 'api', 1, 1, 1, '{}')",
        "UPDATE courses SET data = '{}'",
        "DELETE FROM users",
        "DELETE FROM event_ids",
        "UPDATE api_tokens SET revoked_at = now()",
        'INSERT INTO dead_letters (topic, partition, "offset", error_code, error_message)'
        " VALUES ('t', 0, 0, 'x', 'x')",
        "SELECT * FROM dead_letters",
        "CREATE TABLE mine (x int)",
        "DROP TABLE events",
        "TRUNCATE events",
        "SELECT course_audit_create_partitions(ARRAY[date '2020-01-01'])",
        "SELECT course_audit_drop_expired_partitions(1)",
    ):
        assert await refused(lambda sql=sql: r.execute(sql)) == INSUFFICIENT_PRIVILEGE, sql


async def test_the_partition_function_checks_its_argument(roles: Roles) -> None:
    for month in ("2026-11-15", "0001-01-01"):
        state = await refused(
            lambda month=month: roles.writer.fetchval(
                "SELECT course_audit_create_partitions(ARRAY[$1::date])", date.fromisoformat(month)
            )
        )
        assert state == "22023", month  # invalid_parameter_value
