"""The harness gives a real PostgreSQL server with a database per test."""

from __future__ import annotations

import asyncpg
import pytest


async def test_transaction_commits_and_rolls_back(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        version = await conn.fetchval("SHOW server_version_num")
        assert int(version) >= 150000
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        async with conn.transaction():
            await conn.execute("INSERT INTO t VALUES (1, 'kept')")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (2, 'lost')")
                await conn.execute("INSERT INTO t VALUES (1, 'dup')")
        rows = await conn.fetch("SELECT id, v FROM t ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "kept")]
    finally:
        await conn.close()


async def test_each_test_gets_its_own_database(db_url: str, server_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    assert name.startswith("t_")
    assert tables == 0
