"""The benchmark's naive baseline: one INSERT and three snapshot upserts per event.

This is what a team writes first; `make bench` compares the service's write path
(`course_audit.store.writer.write_batch`, one statement per batch) against it. It is not part
of the service.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from course_audit.model import Event
from course_audit.retention import month_of
from course_audit.store.db import Conn, affected_rows
from course_audit.store.partitions import PartitionCache, ensure_partition_for
from course_audit.store.writer import WriteResult, json_text

_K = TypeVar("_K", tuple[int, int], tuple[str, int])

_INSERT_ONE = (
    "INSERT INTO events (event_id, created_at, event_type, event_source, course_id, account_id,"
    " root_account_id, user_id, page_view_id, sis_batch_id, related_course_id, event_data,"
    ' topic, "partition", "offset")'
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    " ON CONFLICT DO NOTHING"
)

# Snapshot upserts, one statement per table, by the batch statement's rules: each snapshot
# under the root account of the event that carried it, an older event never overwrites a
# newer snapshot, and an identical redelivery writes no new row version.
_UPSERT_COURSES = """
INSERT INTO courses AS t (id, root_account_id, account_id, sis_course_id, data, as_of)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::jsonb[],
                     $6::timestamptz[])
ON CONFLICT (id, root_account_id) DO UPDATE
   SET account_id = excluded.account_id, sis_course_id = excluded.sis_course_id,
       data = excluded.data, as_of = excluded.as_of
 WHERE excluded.as_of > t.as_of
    OR (excluded.as_of = t.as_of AND excluded.data IS DISTINCT FROM t.data)
"""

_UPSERT_ACCOUNT = """
INSERT INTO accounts AS t (id, root_account_id, as_of) VALUES ($1, $2, $3)
ON CONFLICT (id, root_account_id) DO UPDATE SET as_of = excluded.as_of
 WHERE excluded.as_of > t.as_of
"""

_UPSERT_USERS = """
INSERT INTO users AS t (id, root_account_id, data, as_of)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::jsonb[], $4::timestamptz[])
ON CONFLICT (id, root_account_id) DO UPDATE SET data = excluded.data, as_of = excluded.as_of
 WHERE excluded.as_of > t.as_of
    OR (excluded.as_of = t.as_of AND excluded.data IS DISTINCT FROM t.data)
"""

_UPSERT_PAGE_VIEWS = """
INSERT INTO page_views AS t (id, root_account_id, data, as_of)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::jsonb[], $4::timestamptz[])
ON CONFLICT (id, root_account_id) DO UPDATE SET data = excluded.data, as_of = excluded.as_of
 WHERE excluded.as_of > t.as_of
    OR (excluded.as_of = t.as_of AND excluded.data IS DISTINCT FROM t.data)
"""


def event_row(ord_: int, event: Event) -> tuple[Any, ...]:
    """One row (`ord_`, then the columns); raises (a data error) if it cannot be encoded."""
    course, source = event.course, event.source
    return (
        ord_,
        event.event_id,
        event.created_at,
        event.event_type,
        event.event_source,
        event.course_id,
        int(course["account_id"]),
        int(course["root_account_id"]),
        None if event.user is None else int(event.user["id"]),
        None if event.page_view is None else str(event.page_view["id"]),
        event.sis_batch_id,
        event.related_course_id,
        json_text(event.event_data),
        None if source is None else source.topic,
        None if source is None else source.partition,
        None if source is None else source.offset,
    )


@dataclass(slots=True)
class Snapshots:
    """The newest snapshot per (id, root account) carried by a batch: -> (as_of, record)."""

    courses: dict[tuple[int, int], tuple[datetime, dict[str, Any]]] = field(default_factory=dict)
    users: dict[tuple[int, int], tuple[datetime, dict[str, Any]]] = field(default_factory=dict)
    page_views: dict[tuple[str, int], tuple[datetime, dict[str, Any]]] = field(default_factory=dict)


def _keep_newest(
    best: dict[_K, tuple[datetime, dict[str, Any]]], key: _K, as_of: datetime, data: dict[str, Any]
) -> None:
    # >= so that, at equal times, the later event of the batch wins (as in the table).
    current = best.get(key)
    if current is None or as_of >= current[0]:
        best[key] = (as_of, data)


def collect_snapshots(events: Iterable[Event]) -> Snapshots:
    """Newest snapshot per (id, root account); one row per key, as ON CONFLICT DO UPDATE
    requires. A related course of another root account gets none (linked by id only)."""
    snaps = Snapshots()
    for e in events:
        root = int(e.course["root_account_id"])
        _keep_newest(snaps.courses, (e.course_id, root), e.created_at, e.course)
        related = e.related_course
        if related is not None and int(related["root_account_id"]) == root:
            _keep_newest(snaps.courses, (int(related["id"]), root), e.created_at, related)
        if e.user is not None:
            _keep_newest(snaps.users, (int(e.user["id"]), root), e.created_at, e.user)
        if e.page_view is not None:
            _keep_newest(
                snaps.page_views, (str(e.page_view["id"]), root), e.created_at, e.page_view
            )
    return snaps


async def upsert_snapshots(conn: Conn, snaps: Snapshots) -> None:
    """Store the batch's snapshots, newer-wins, one statement per table."""
    if snaps.courses:
        keys, rows = list(snaps.courses), list(snaps.courses.values())
        await conn.execute(
            _UPSERT_COURSES,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [int(d["account_id"]) for _, d in rows],
            [d.get("sis_course_id") for _, d in rows],
            [json_text(d) for _, d in rows],
            [t for t, _ in rows],
        )
    if snaps.users:
        await _upsert_by_id(conn, _UPSERT_USERS, snaps.users)
    if snaps.page_views:
        await _upsert_by_id(conn, _UPSERT_PAGE_VIEWS, snaps.page_views)


async def _upsert_by_id(
    conn: Conn, sql: str, snaps: dict[_K, tuple[datetime, dict[str, Any]]]
) -> None:
    keys, rows = list(snaps), list(snaps.values())
    await conn.execute(
        sql,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [json_text(d) for _, d in rows],
        [t for t, _ in rows],
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
            course = event.course
            await conn.execute(
                _UPSERT_ACCOUNT,
                int(course["account_id"]),
                int(course["root_account_id"]),
                event.created_at,
            )
    return WriteResult(inserted, len(events) - inserted)
