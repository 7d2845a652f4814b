"""Read queries behind the live tail (docs/design.md#live-tail): a group's new events, oldest
first, and the notification payload the batch statement sends (store/writer.py).

One query serves every subscriber of a (course or account, token root accounts, filters)
group. Each is a range of the (column, root_account_id, created_at DESC, seq DESC) index (or,
with filters, of the filter indexes: docs/store.md#filter-indexes) read backwards, from a
lower created_at bound; `TailSpec` says which further conditions apply, and the endpoints'
filters are ANDed as `filter_clauses` writes them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from course_audit.store.db import Conn
from course_audit.store.queries import (
    _EVENT_COLUMNS,
    MAX_ID,
    NO_FILTERS,
    Cursor,
    EventRow,
    Filters,
    filter_clauses,
)
from course_audit.store.writer import EVENTS_CHANNEL

__all__ = [
    "EVENTS_CHANNEL",
    "Announcement",
    "TailSpec",
    "event_position",
    "latest_position",
    "parse_announcement",
    "tail_page",
    "tail_sql",
]

#: Rows one tail query reads; more are read by the next query, from the last one's key.
TAIL_PAGE_ROWS = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLUMNS = ("course_id", "account_id")


@dataclass(frozen=True, slots=True)
class Announcement:
    """What one notification says was stored: the oldest created_at (a lower bound), the seq
    range, and the courses and accounts (None: too many to list, look everywhere)."""

    since: datetime
    lo: int
    hi: int
    courses: frozenset[int] | None
    accounts: frozenset[int] | None


def parse_announcement(payload: str) -> Announcement | None:
    """The announcement in a notification's payload; None for one this version cannot read."""
    try:
        doc = orjson.loads(payload)
        since = _EPOCH + timedelta(seconds=int(doc["from"]))
        lo, hi = int(doc["lo"]), int(doc["hi"])
        if doc.get("all"):
            return Announcement(since, lo, hi, None, None)
        return Announcement(
            since, lo, hi, frozenset(map(int, doc["c"])), frozenset(map(int, doc["a"]))
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class TailSpec:
    """Which conditions a tail query has besides the group's id and root accounts:

    - `since`: created_at at or after it (always: the bound that keeps it a short range);
    - `seq_range`: seq between two values (the events of notified batches);
    - `after`: strictly after a key, in (created_at, seq) order; with `late` also any event
      stored after it (greater seq) since `since` — events with an earlier created_at that
      arrived later;
    - `page`: strictly after the last key of the previous page.
    """

    seq_range: bool = False
    after: bool = False
    late: bool = False
    page: bool = False


def tail_sql(
    column: str, spec: TailSpec, extra: Collection[str] = (), filters: Filters = NO_FILTERS
) -> tuple[str, int]:
    """The tail query on `column` and its number of parameters: $1 the id, $2 the root
    accounts, $3 since, then the seq range, the `after` key, the `page` key, the filters'
    values (`filter_clauses`, as the endpoints and the export), the limit.

    `extra` are more WHERE clauses (on the columns of events, without parameters), ANDed to
    the rest.
    """
    if column not in _COLUMNS:
        raise ValueError(f"no tail query on {column}")
    clauses = [f"{column} = $1", "root_account_id = ANY($2::bigint[])", "created_at >= $3"]
    n = 3
    if spec.seq_range:
        clauses.append(f"seq BETWEEN ${n + 1} AND ${n + 2}")
        n += 2
    if spec.after:
        keyset = f"(created_at, seq) > (${n + 1}, ${n + 2})"
        clauses.append(f"({keyset} OR seq > ${n + 3})" if spec.late else keyset)
        n += 3 if spec.late else 2
    if spec.page:
        clauses.append(f"(created_at, seq) > (${n + 1}, ${n + 2})")
        n += 2
    filtered = filter_clauses(filters, n + 1)
    clauses.extend(filtered.clauses)
    n += len(filtered.args)
    clauses.extend(extra)
    n += 1
    sql = (
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)}"
        f" ORDER BY created_at, seq LIMIT ${n}"
    )
    return sql, n


async def tail_page(
    conn: Conn,
    column: str,
    key: int,
    roots: Collection[int],
    since: datetime,
    *,
    seq_range: tuple[int, int] | None = None,
    after: Cursor | None = None,
    late_seq: int | None = None,
    page: Cursor | None = None,
    limit: int = TAIL_PAGE_ROWS,
    filters: Filters = NO_FILTERS,
) -> list[EventRow]:
    """Up to `limit` matching events (of those, the ones `filters` keep), oldest first; the
    next page starts after the last one's key (`page`)."""
    if not 0 < key <= MAX_ID:
        return []
    spec = TailSpec(
        seq_range is not None, after is not None, late_seq is not None, page is not None
    )
    args: list[Any] = [key, sorted(set(roots)), since]
    if seq_range is not None:
        args.extend(seq_range)
    if after is not None:
        args.extend((after.created_at, after.seq))
        if late_seq is not None:
            args.append(late_seq)
    if page is not None:
        args.extend((page.created_at, page.seq))
    args.extend(filter_clauses(filters, 0).args)
    args.append(limit)
    sql, _ = tail_sql(column, spec, filters=filters)
    return list(map(EventRow._make, await conn.fetch(sql, *args)))


_LATEST = """
WITH top AS (
    SELECT created_at, seq FROM events
     WHERE {column} = $1 AND root_account_id = ANY($2::bigint[])
     ORDER BY created_at DESC, seq DESC LIMIT 1
)
SELECT t.created_at, t.seq,
       (SELECT max(e.seq) FROM events e
         WHERE e.{column} = $1 AND e.root_account_id = ANY($2::bigint[])
           AND e.created_at >= t.created_at - $3::interval) AS top_seq
  FROM top t
"""

# By the primary key (event_id, created_at): one index probe per monthly partition. (Not via
# event_ids: the API's role may read events but not the consumer's id claims.)
_POSITION = """
SELECT created_at, seq FROM events
 WHERE event_id = $1 AND {column} = $2 AND root_account_id = ANY($3::bigint[])
"""


async def latest_position(
    conn: Conn, column: str, key: int, roots: Collection[int], slack: timedelta
) -> tuple[Cursor, int] | None:
    """The key of the group's newest event and the highest seq among its events within
    `slack` of it; None when the group has no events."""
    if column not in _COLUMNS:
        raise ValueError(f"no tail query on {column}")
    if not 0 < key <= MAX_ID:
        return None
    row = await conn.fetchrow(_LATEST.format(column=column), key, sorted(set(roots)), slack)
    if row is None:
        return None
    return Cursor(row["created_at"], row["seq"]), int(row["top_seq"])


async def event_position(
    conn: Conn, column: str, key: int, roots: Collection[int], event_id: str
) -> Cursor | None:
    """The key of event `event_id` if it is one of the group's, else None."""
    if column not in _COLUMNS:
        raise ValueError(f"no tail query on {column}")
    row = await conn.fetchrow(_POSITION.format(column=column), event_id, key, sorted(set(roots)))
    return None if row is None else Cursor(row["created_at"], row["seq"])
