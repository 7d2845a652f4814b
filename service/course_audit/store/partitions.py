"""Monthly partitions of `events`: create ahead and on demand, drop past retention.

Partition DDL takes an ACCESS EXCLUSIVE lock on `events`, so it runs in its own short
transaction, before the write transaction that needs it (never inside one: two writers holding
row locks on `events` while each waits to create a partition would deadlock), serialised
between replicas by an advisory lock and bounded by a lock timeout so it cannot queue up
readers behind a long query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime

import asyncpg

from course_audit.retention import add_months, month_of, retention_cutoff
from course_audit.store.db import PARTITION_LOCK, Conn, advisory_xact_lock, affected_rows

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
    created: list[str] = []
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        await advisory_xact_lock(conn, PARTITION_LOCK)
        existing = await list_partitions(conn)
        for month in sorted(months - existing.keys()):
            name = partition_name(month)
            # Bounds carry an explicit UTC offset so the session time zone cannot shift them.
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF events FOR VALUES"
                f" FROM ('{month.isoformat()} 00:00:00+00')"
                f" TO ('{add_months(month, 1).isoformat()} 00:00:00+00')"
            )
            created.append(name)
    return created


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
    conn: Conn,
    retention_months: int,
    now: datetime | None = None,
    *,
    cache: PartitionCache | None = None,
) -> list[str]:
    """Drop partitions holding only events before the retention cutoff; return their names.

    The cutoff is `retention_cutoff`'s, the one the consumer applies to arriving events. 0 (or
    less) keeps everything.
    """
    if retention_months <= 0:
        return []
    cache = DEFAULT_CACHE if cache is None else cache
    cutoff = month_of(retention_cutoff(now or datetime.now(UTC), retention_months))
    # The ids of those events first, in a transaction of its own that locks no table: an id
    # kept past its event would make a later event with that id a conflict with nothing.
    # Dropping the partitions first, a crash in between would leave such ids behind; this
    # way round it leaves events without ids for a moment, which nothing can re-send (they
    # are past retention on arrival), and the next pass finishes the job.
    await delete_expired_ids(conn, cutoff)
    dropped: list[str] = []
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        await advisory_xact_lock(conn, PARTITION_LOCK)
        for month, name in sorted((await list_partitions(conn)).items()):
            if add_months(month, 1) <= cutoff:
                await conn.execute(f"DROP TABLE IF EXISTS {name}")
                dropped.append(name)
                cache.discard([month])
    return dropped


async def delete_expired_ids(conn: Conn, cutoff: date) -> int:
    """Delete the event_ids entries of events before `cutoff` (a month's first day, UTC)."""
    status = await conn.execute(
        "DELETE FROM event_ids WHERE created_at < $1",
        datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC),
    )
    return affected_rows(status)
