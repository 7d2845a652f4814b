"""Expiring what retention leaves behind: snapshots no stored event refers to, old dead letters.

Both decided by the database's clock (docs/store.md#retention), in chunks, so one pass never
holds many row locks or writes one huge transaction.
"""

from __future__ import annotations

from course_audit.store.db import Conn, affected_rows

#: Rows deleted per statement.
CHUNK = 10_000

# Every reference an event makes carries its object, and a snapshot's as_of is the
# created_at of the newest event that carried it (newest wins), so a snapshot with an as_of
# before every stored event is referred to by no stored event. The bound is the earlier of
# the retention cutoff and the lower bound of the oldest partition still attached: if a drop
# was refused or has not happened yet, the events it would have dropped keep their snapshots.
_BOUND = r"""
SELECT least(
    course_audit_retention_cutoff($1),
    (SELECT min((regexp_match(pg_get_expr(c.relpartbound, c.oid),
                              'FROM \(''([^'']+)''\)'))[1]::timestamptz)
       FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
      WHERE i.inhparent = 'events'::regclass))
"""

_SNAPSHOT_TABLES = ("courses", "users", "page_views", "accounts")


async def _chunked(conn: Conn, sql: str, *args: object) -> int:
    total = 0
    while True:
        done = affected_rows(await conn.execute(sql, *args))
        total += done
        if done < CHUNK:
            return total


async def expire_snapshots(conn: Conn, retention_months: int) -> dict[str, int]:
    """Delete snapshots (and known accounts) no stored event refers to; counts by table."""
    if retention_months <= 0:
        return {}
    bound = await conn.fetchval(_BOUND, retention_months)
    counts = {}
    for table in _SNAPSHOT_TABLES:
        counts[table] = await _chunked(
            conn,
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
            f"SELECT ctid FROM {table} WHERE as_of < $1 LIMIT {CHUNK}))",
            bound,
        )
    return counts


async def expire_dead_letters(conn: Conn, retention_days: int) -> int:
    """Delete dead letters that failed more than `retention_days` days ago; 0 keeps all."""
    if retention_days <= 0:
        return 0
    return await _chunked(
        conn,
        "DELETE FROM dead_letters WHERE id = ANY(ARRAY("
        "SELECT id FROM dead_letters WHERE failed_at < now() - make_interval(days => $1)"
        f" LIMIT {CHUNK}))",
        retention_days,
    )
