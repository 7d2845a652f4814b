"""Ordered, versioned SQL migrations (``course_audit/store/migrations/NNNN_name.sql``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

from course_audit.store.db import MIGRATION_LOCK, Conn, advisory_xact_lock

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


#: Checksums of earlier texts of a migration that differ from the shipped one in comments
#: only: a database migrated with one of them is current. (0001: a comment once cited a
#: document outside the repository.)
EARLIER_CHECKSUMS: dict[int, frozenset[str]] = {
    1: frozenset({"4851d4c3055de4b0b193b23282ddeda461fa95df44f2a829e7b91e3e8fea9810"}),
}


class MigrationError(RuntimeError):
    """The database's migration history does not match the migrations shipped."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file: applied once, in version order."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def matches(self, applied_checksum: str) -> bool:
        """True when a database that recorded `applied_checksum` has this migration applied."""
        return applied_checksum == self.checksum or applied_checksum in EARLIER_CHECKSUMS.get(
            self.version, frozenset()
        )


def load_migrations() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found: dict[int, Migration] = {}
    for entry in resources.files("course_audit.store").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if not match:
            continue
        version = int(match[1])
        if version in found:
            raise MigrationError(f"two migrations with version {version}")
        found[version] = Migration(version, match[2], entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def _applied(conn: Conn) -> dict[int, str]:
    """Applied versions and their checksums; empty on a database never migrated."""
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


async def pending_migrations(conn: Conn) -> list[Migration]:
    """Shipped migrations not yet applied (empty = the schema is current; for readiness)."""
    applied = await _applied(conn)
    return [m for m in load_migrations() if m.version not in applied]


async def migrate(target: Conn | asyncpg.Pool[Any]) -> list[int]:
    """Apply pending migrations in one transaction; return the versions applied.

    Replicas starting together all call this: the advisory lock lets one apply and the others
    then find nothing pending.
    """
    if isinstance(target, asyncpg.Pool):
        async with target.acquire() as conn:
            return await _migrate(conn)
    return await _migrate(target)


async def _migrate(conn: Conn) -> list[int]:
    migrations = load_migrations()
    # READ COMMITTED whatever the database default: each statement after the lock wait must
    # see what the replica that held the lock before us committed.
    async with conn.transaction(isolation="read_committed"):
        await advisory_xact_lock(conn, MIGRATION_LOCK)
        await conn.execute(_CREATE_TABLE)
        applied = await _applied(conn)
        for m in migrations:
            if m.version in applied and not m.matches(applied[m.version]):
                raise MigrationError(
                    f"migration {m.version:04d}_{m.name} changed after it was applied"
                )
        pending = [m for m in migrations if m.version not in applied]
        for m in pending:
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )
    return [m.version for m in pending]
