"""Monthly partitions of `events`: create ahead and on demand, drop past retention.

Partition DDL takes an ACCESS EXCLUSIVE lock on `events`, so it runs in its own short
transaction, before the write transaction that needs it (never inside one: two writers holding
row locks on `events` while each waits to create a partition would deadlock), serialised
between replicas by an advisory lock and bounded by a lock timeout so it cannot queue up
readers behind a long query. The DDL itself is done by two functions of the store (migration
0004) that run as the schema's owner, so the consumer's database role needs no DDL right;
what has expired is decided there too, by the database's clock (docs/store.md#retention).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime

import asyncpg

from course_audit.retention import add_months, month_of
from course_audit.store.db import Conn, affected_rows

#: How long partition DDL waits for its lock on `events` before giving up (retried later).
DDL_LOCK_TIMEOUT = "10s"

_NAME = re.compile(r"^events_y(\d{4})m(\d{2})$")
_CREATE_ATTEMPTS = 3


def partition_name(month: date) -> str:
    """Table name of the partition holding `month`, e.g. ``events_y2026m11``."""
    return f"events_y{month.year:04d}m{month.month:02d}"


def _normalise(months: Iterable[date]) -> set[date]:
    return {month_of(m) if isinstance(m, datetime) else m.replace(day=1) for m in months}


class PartitionCache:
    """Months known to have a partition, so that steady-state batches issue no DDL.

    One per database (the process-wide default suits a process with one database). A stale
    entry is harmless: the writer re-checks the catalog when an insert finds no partition.
    """

    def __init__(self) -> None:
        self._months: set[date] = set()

    def missing(self, months: Iterable[date]) -> set[date]:
        """The months of `months` not known to have a partition."""
        return _normalise(months) - self._months

    def add(self, months: Iterable[date]) -> None:
        self._months |= _normalise(months)

    def discard(self, months: Iterable[date]) -> None:
        self._months -= _normalise(months)


DEFAULT_CACHE = PartitionCache()


async def list_partitions(conn: Conn) -> dict[date, str]:
    """The monthly partitions attached to `events`, by month."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass"
    )
    found: dict[date, str] = {}
    for row in rows:
        match = _NAME.match(row["relname"])
        if match:  # a partition named otherwise is someone else's; leave it alone
            found[date(int(match[1]), int(match[2]), 1)] = row["relname"]
    return found


async def ensure_partition_for(
    conn: Conn, months: Iterable[date], *, cache: PartitionCache | None = None
) -> list[str]:
    """Make sure every month in `months` has a partition; return the names created.

    Months already in the cache cost nothing. Safe to run concurrently from many replicas.
    """
    cache = DEFAULT_CACHE if cache is None else cache
    wanted = cache.missing(months)
    if not wanted:
        return []
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            created = await _create(conn, wanted)
        except (asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
            # Someone created the same table without taking our advisory lock (by hand, an
            # older version): the catalog check on the next attempt sees it.
            if attempt == _CREATE_ATTEMPTS - 1:
                raise
            continue
        cache.add(wanted)
        return created
    raise AssertionError("unreachable")


async def _create(conn: Conn, months: set[date]) -> list[str]:
    # Months the catalog already lists cost no call (and no lock); the function checks again
    # under its lock.
    existing = await list_partitions(conn)
    wanted = sorted(months - existing.keys())
    if not wanted:
        return []
    created = await conn.fetchval("SELECT course_audit_create_partitions($1::date[])", wanted)
    return list(created)


async def ensure_partitions(
    conn: Conn,
    months_ahead: int = 3,
    *,
    now: datetime | None = None,
    cache: PartitionCache | None = None,
) -> list[str]:
    """Create the partitions of the current month and the next `months_ahead` months."""
    current = month_of(now or datetime.now(UTC))
    months = {add_months(current, n) for n in range(months_ahead + 1)}
    return await ensure_partition_for(conn, months, cache=cache)


async def drop_expired(
    conn: Conn, retention_months: int, *, cache: PartitionCache | None = None
) -> list[str]:
    """Drop partitions holding only events past retention; return their names.

    The cutoff is the database's: the first instant of the oldest month kept, `now()` in
    PostgreSQL less `retention_months` whole UTC months (course_audit_retention_cutoff), so a
    replica whose clock runs ahead drops nothing early. 0 (or less) keeps everything.
    """
    if retention_months <= 0:
        return []
    cache = DEFAULT_CACHE if cache is None else cache
    # The ids of those events first, in a statement of its own that locks no table: an id
    # kept past its event would make a later event with that id a conflict with nothing.
    # Dropping the partitions first, a crash in between would leave such ids behind; this
    # way round it leaves events without ids for a moment, which nothing can re-send (they
    # are past retention on arrival), and the next pass finishes the job.
    await delete_expired_ids(conn, retention_months)
    dropped = list(
        await conn.fetchval("SELECT course_audit_drop_expired_partitions($1)", retention_months)
    )
    for name in dropped:
        match = _NAME.match(name)
        if match:
            cache.discard([date(int(match[1]), int(match[2]), 1)])
    return dropped


async def delete_expired_ids(conn: Conn, retention_months: int) -> int:
    """Delete the event_ids entries of events past retention (by the database's clock)."""
    status = await conn.execute(
        "DELETE FROM event_ids WHERE created_at < course_audit_retention_cutoff($1)",
        retention_months,
    )
    return affected_rows(status)
