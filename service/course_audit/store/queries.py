"""Read queries behind the audit API: id resolution, keyset pages, linked snapshots.

Pages are keyset pages in the API's order (`created_at DESC, seq DESC`), served by the
`events_course_order_idx` / `events_account_order_idx` range scans; never OFFSET, so a deep
page costs what the first one does.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from course_audit.store.db import Conn

#: Largest value of a PostgreSQL bigint; larger ids cannot exist in the store.
MAX_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position after the last event of a page: the next page starts strictly below it."""

    created_at: datetime
    seq: int


@dataclass(frozen=True, slots=True)
class Window:
    """Time filter: `since <= created_at < until` (either bound may be open)."""

    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventRow:
    """One stored event as the API needs it (`event_data` already shaped for the API)."""

    event_id: str
    created_at: datetime
    seq: int
    event_type: str
    event_source: str
    course_id: int
    user_id: int | None
    page_view_id: str | None
    sis_batch_id: int | None
    related_course_id: int | None
    event_data: dict[str, Any]

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.created_at, self.seq)


@dataclass(slots=True)
class Linked:
    """Latest snapshots by id (jsonb `data` as dicts)."""

    courses: dict[int, dict[str, Any]] = field(default_factory=dict)
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    page_views: dict[str, dict[str, Any]] = field(default_factory=dict)


# The snapshot answers for almost every course; the events only for one whose snapshot is
# gone (a course is "known" by either). LIMIT 1 stops the Append at the first row.
_COURSE_ROOT = """
SELECT root_account_id FROM courses WHERE id = $1
UNION ALL
(SELECT root_account_id FROM events WHERE course_id = $1
  ORDER BY created_at DESC, seq DESC LIMIT 1)
LIMIT 1
"""

# SIS ids are unique within a root account, not across them: with a token for several root
# accounts the most recently changed course wins (deterministically, by id after that).
_COURSE_BY_SIS_ID = """
SELECT id FROM courses
 WHERE sis_course_id = $1 AND root_account_id = ANY($2::bigint[])
 ORDER BY as_of DESC, id
 LIMIT 1
"""

# An account is known through a course whose snapshot has it, or through events recorded
# while a course was in it (a course may have moved away since).
_ACCOUNT_ROOT = """
(SELECT root_account_id FROM courses WHERE account_id = $1 LIMIT 1)
UNION ALL
(SELECT root_account_id FROM events WHERE account_id = $1
  ORDER BY created_at DESC, seq DESC LIMIT 1)
LIMIT 1
"""

_EVENT_COLUMNS = (
    "event_id::text AS event_id, created_at, seq, event_type, event_source, course_id,"
    " user_id, page_view_id, sis_batch_id, related_course_id, event_data::text AS event_data"
)

# One round trip for all three snapshot kinds of a page.
_LINKED = """
SELECT 'c' AS kind, id::text AS id, data::text AS data FROM courses WHERE id = ANY($1::bigint[])
UNION ALL
SELECT 'u', id::text, data::text FROM users WHERE id = ANY($2::bigint[])
UNION ALL
SELECT 'p', id, data::text FROM page_views WHERE id = ANY($3::text[])
"""


def page_sql(column: str, window: Window, cursor: Cursor | None) -> tuple[str, int]:
    """The page query on `column` (course_id or account_id) and its number of parameters.

    Only the clauses in use are written out, so every variant gets a plan of its own with
    partition pruning. The redundant `created_at <= cursor time` lets PostgreSQL prune the
    partitions newer than the cursor; the row comparison is the exact keyset condition and
    an index condition of the (…, created_at DESC, seq DESC) index.
    """
    if column not in ("course_id", "account_id"):
        raise ValueError(f"no page query on {column}")
    clauses = [f"{column} = $1"]
    n = 1
    if window.since is not None:
        n += 1
        clauses.append(f"created_at >= ${n}")
    if window.until is not None:
        n += 1
        clauses.append(f"created_at < ${n}")
    if cursor is not None:
        clauses.append(f"created_at <= ${n + 1}")
        clauses.append(f"(created_at, seq) < (${n + 1}, ${n + 2})")
        n += 2
    n += 1
    sql = (
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)}"
        f" ORDER BY created_at DESC, seq DESC LIMIT ${n}"
    )
    return sql, n


def page_args(key: int, window: Window, cursor: Cursor | None, limit: int) -> list[Any]:
    """The arguments of `page_sql` for the same window and cursor, in order."""
    args: list[Any] = [key]
    if window.since is not None:
        args.append(window.since)
    if window.until is not None:
        args.append(window.until)
    if cursor is not None:
        args.extend((cursor.created_at, cursor.seq))
    args.append(limit)
    return args


async def course_root_account(conn: Conn, course_id: int) -> int | None:
    """Root account of a known course, or None when the store knows nothing of it."""
    if not 0 < course_id <= MAX_ID:
        return None
    root = await conn.fetchval(_COURSE_ROOT, course_id)
    return None if root is None else int(root)


async def resolve_course(
    conn: Conn, course_id: int | None, sis_course_id: str | None, roots: Collection[int]
) -> int | None:
    """The numeric id of a course known within `roots` (by id or SIS id), else None."""
    if sis_course_id is not None:
        if "\x00" in sis_course_id:  # PostgreSQL text cannot hold NUL: no course has it
            return None
        found = await conn.fetchval(_COURSE_BY_SIS_ID, sis_course_id, list(roots))
        return None if found is None else int(found)
    if course_id is None:
        return None
    root = await course_root_account(conn, course_id)
    return course_id if root is not None and root in roots else None


async def account_known(conn: Conn, account_id: int, roots: Collection[int]) -> bool:
    """True when some known course has (or had) `account_id` as its account within `roots`."""
    if not 0 < account_id <= MAX_ID:
        return False
    root = await conn.fetchval(_ACCOUNT_ROOT, account_id)
    return root is not None and int(root) in roots


def _event(row: Any) -> EventRow:
    return EventRow(
        event_id=row["event_id"],
        created_at=row["created_at"],
        seq=row["seq"],
        event_type=row["event_type"],
        event_source=row["event_source"],
        course_id=row["course_id"],
        user_id=row["user_id"],
        page_view_id=row["page_view_id"],
        sis_batch_id=row["sis_batch_id"],
        related_course_id=row["related_course_id"],
        event_data=orjson.loads(row["event_data"]),
    )


async def _page(
    conn: Conn, column: str, key: int, window: Window, cursor: Cursor | None, limit: int
) -> list[EventRow]:
    sql, _ = page_sql(column, window, cursor)
    rows = await conn.fetch(sql, *page_args(key, window, cursor, limit))
    return [_event(r) for r in rows]


async def course_page(
    conn: Conn, course_id: int, window: Window, cursor: Cursor | None, limit: int
) -> list[EventRow]:
    """Up to `limit` events of a course after `cursor`, newest first."""
    return await _page(conn, "course_id", course_id, window, cursor, limit)


async def account_page(
    conn: Conn, account_id: int, window: Window, cursor: Cursor | None, limit: int
) -> list[EventRow]:
    """Up to `limit` events whose direct account was `account_id`, newest first."""
    return await _page(conn, "account_id", account_id, window, cursor, limit)


def referenced(events: Sequence[EventRow]) -> tuple[list[int], list[int], list[str]]:
    """Course, user and page view ids the events refer to, each once, in order of appearance."""
    courses: dict[int, None] = {}
    users: dict[int, None] = {}
    page_views: dict[str, None] = {}
    for e in events:
        courses[e.course_id] = None
        if e.related_course_id is not None:
            courses[e.related_course_id] = None
        if e.user_id is not None:
            users[e.user_id] = None
        if e.page_view_id is not None:
            page_views[e.page_view_id] = None
    return list(courses), list(users), list(page_views)


async def linked_snapshots(
    conn: Conn, course_ids: Sequence[int], user_ids: Sequence[int], page_view_ids: Sequence[str]
) -> Linked:
    """Latest snapshots of the given ids, in one round trip (none when there are no ids)."""
    linked = Linked()
    if not (course_ids or user_ids or page_view_ids):
        return linked
    rows = await conn.fetch(_LINKED, list(course_ids), list(user_ids), list(page_view_ids))
    for row in rows:
        data = orjson.loads(row["data"])
        kind = row["kind"]
        if kind == "c":
            linked.courses[int(row["id"])] = data
        elif kind == "u":
            linked.users[int(row["id"])] = data
        else:
            linked.page_views[row["id"]] = data
    return linked
