"""Connection types and small SQL helpers shared by the store modules."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

#: A single connection, plain or borrowed from a pool. (A string: asyncpg's classes are
#: generic only in its type stubs.)
Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

#: Advisory lock names (hashed server-side to the lock key).
MIGRATION_LOCK = "course_audit:migrate"
PARTITION_LOCK = "course_audit:partitions"


async def advisory_xact_lock(conn: Conn, name: str) -> None:
    """Wait for the transaction-scoped advisory lock `name` (released at commit/rollback)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", name)


def affected_rows(status: str) -> int:
    """Row count of a command status tag such as ``INSERT 0 5`` or ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])
