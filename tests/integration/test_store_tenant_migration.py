"""Migration 0003 on a store the previous release wrote (docs/store.md#tenant-scope): the
snapshots a course claimed by two root accounts, a user acting in both and a page view left
behind are re-keyed per root account without giving one tenant's data to the other."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from course_audit.store.migrate import load_migrations, migrate

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)

HIJACKED = {"id": 950, "account_id": 100, "root_account_id": 2, "name": "Hijacked"}
USER_AS_ROOT_2 = {"id": 7, "name": "Ann Lee", "login_id": "ann@two", "sis_user_id": "two-7"}


async def at_0002(conn: asyncpg.Connection[Any]) -> None:
    """Build the schema of migrations 0001 and 0002, as the previous release left it."""
    shipped = load_migrations()
    async with conn.transaction():
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in shipped[:2]:
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )


async def old_event(
    conn: asyncpg.Connection[Any], at: datetime, root: int, user: int | None, pv: str | None
) -> None:
    await conn.execute(
        "INSERT INTO events (event_id, created_at, event_type, event_source, course_id,"
        " account_id, root_account_id, user_id, page_view_id, event_data)"
        " VALUES (gen_random_uuid(), $1, 'updated', 'api', 950, 100, $2, $3, $4, '{}')",
        at,
        root,
        user,
        pv,
    )


async def test_migration_0003_rekeys_snapshots_per_root_account(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await at_0002(conn)
        # (A partition by hand: the functions that create them arrive with a later migration.)
        await conn.execute(
            "CREATE TABLE events_y2026m11 PARTITION OF events FOR VALUES"
            " FROM ('2026-11-01T00:00:00Z') TO ('2026-12-01T00:00:00Z')"
        )
        # Root 1's event, then root 2's newer claim of course 950: the previous release kept
        # one snapshot per id, root 2's, for the course and the user alike.
        await old_event(conn, T0, 1, 7, "pv-1")
        await old_event(conn, T1, 2, 7, None)
        await conn.execute(
            "INSERT INTO courses (id, root_account_id, account_id, sis_course_id, data, as_of)"
            " VALUES (950, 2, 100, NULL, $1, $2)",
            json.dumps(HIJACKED),
            T1,
        )
        await conn.execute(
            "INSERT INTO users (id, data, as_of) VALUES (7, $1, $2), (8, '{\"id\": 8}', $3)",
            json.dumps(USER_AS_ROOT_2),
            T1,
            T0 - timedelta(days=400),  # user 8: no stored event refers to it any more
        )
        await conn.execute(
            "INSERT INTO page_views (id, data, as_of) VALUES ('pv-1', '{\"id\": \"pv-1\"}', $1),"
            " ('pv-gone', '{\"id\": \"pv-gone\"}', $1)",
            T0,
        )

        assert await migrate(conn) == [m.version for m in load_migrations()][2:]

        courses = {
            (r["id"], r["root_account_id"]): (json.loads(r["data"]), r["as_of"])
            for r in await conn.fetch("SELECT * FROM courses")
        }
        assert courses == {
            (950, 2): (HIJACKED, T1),
            # Root 1 gets the ids its own newest event recorded, nothing of root 2's.
            (950, 1): ({"id": 950, "account_id": 100, "root_account_id": 1}, T0),
        }
        users = {
            (r["id"], r["root_account_id"]): (json.loads(r["data"]), r["as_of"])
            for r in await conn.fetch("SELECT * FROM users")
        }
        assert users == {
            (7, 2): (USER_AS_ROOT_2, T1),
            (7, 1): ({"id": 7, "name": "Ann Lee"}, T0),  # no login of another root account
        }
        views = [
            (r["id"], r["root_account_id"]) for r in await conn.fetch("SELECT * FROM page_views")
        ]
        assert views == [("pv-1", 1)]
        accounts = {
            (r["id"], r["root_account_id"]): r["as_of"]
            for r in await conn.fetch("SELECT * FROM accounts")
        }
        assert accounts == {(100, 1): T0, (100, 2): T1}
    finally:
        await conn.close()
