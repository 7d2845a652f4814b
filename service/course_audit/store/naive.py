"""Benchmark baseline ONLY: one statement per event. The service writes with `write_batch`."""

from __future__ import annotations

from collections.abc import Sequence

from course_audit.model import Event
from course_audit.store.db import Conn, affected_rows
from course_audit.store.partitions import PartitionCache, ensure_partition_for, month_of
from course_audit.store.writer import WriteResult, collect_snapshots, event_row, upsert_snapshots

_INSERT_ONE = (
    "INSERT INTO events (event_id, created_at, event_type, event_source, course_id, account_id,"
    " root_account_id, user_id, page_view_id, sis_batch_id, related_course_id, event_data,"
    ' topic, "partition", "offset")'
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    " ON CONFLICT DO NOTHING"
)


async def naive_write_batch_per_row(
    conn: Conn, events: Sequence[Event], *, cache: PartitionCache | None = None
) -> WriteResult:
    """Same outcome as `write_batch`, but an INSERT and snapshot upserts per event."""
    await ensure_partition_for(conn, {month_of(e.created_at) for e in events}, cache=cache)
    inserted = 0
    async with conn.transaction():
        for i, event in enumerate(events):
            status = await conn.execute(_INSERT_ONE, *event_row(i, event)[1:])
            inserted += affected_rows(status)
            await upsert_snapshots(conn, collect_snapshots([event]))
    return WriteResult(inserted, len(events) - inserted)
