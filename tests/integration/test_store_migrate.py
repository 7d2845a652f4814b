"""Migration history checks: an edited migration is refused, a comment-only revision is not."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import pytest

from course_audit.store.migrate import MigrationError, load_migrations, migrate


async def record_checksum(conn: asyncpg.Connection[Any], version: int, checksum: str) -> None:
    await conn.execute(
        "UPDATE schema_migrations SET checksum = $2 WHERE version = $1", version, checksum
    )


async def test_a_migration_changed_after_it_was_applied_is_refused(
    conn: asyncpg.Connection[Any],
) -> None:
    other_text = "-- some other text\n" + load_migrations()[0].sql
    await record_checksum(conn, 1, hashlib.sha256(other_text.encode()).hexdigest())
    with pytest.raises(MigrationError, match="0001_initial changed after it was applied"):
        await migrate(conn)


async def test_a_database_migrated_before_the_comment_revision_is_current(
    conn: asyncpg.Connection[Any],
) -> None:
    # The checksum 0001_initial.sql had before one of its comments was reworded (the file as
    # of commit 4b2201b), as databases migrated by earlier releases recorded it.
    before = "4851d4c3055de4b0b193b23282ddeda461fa95df44f2a829e7b91e3e8fea9810"
    assert load_migrations()[0].checksum != before
    await record_checksum(conn, 1, before)
    assert await migrate(conn) == []
