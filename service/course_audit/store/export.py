"""Read queries of an export (docs/api.md#export): every event of a course or account in a
window, oldest first, read as keyset chunks.

The order is (created_at, seq) ascending: the page queries' index,
(column, root_account_id, created_at DESC, seq DESC), scanned backward. Each chunk is one
statement with a constant LIMIT that continues strictly after the last row of the chunk
before (the keyset condition of a page bookmark, mirrored), so every chunk is planned as the
short index range it reads, whatever share of the table the course holds; a statement
without a limit would be planned for reading everything, where a sequential scan and a sort
can look cheaper. A resumed export starts after the (created_at, seq) of the event it names
in the same way. Chunks are read inside one REPEATABLE READ transaction (the caller's): the
export shows the store as it was when it began.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from course_audit.store.db import Conn
from course_audit.store.queries import (
    _EVENT_COLUMNS,
    MAX_ID,
    Cursor,
    EventRow,
    Filters,
    Window,
    filter_clauses,
)

#: Marks the export's statement, so that operators (and tests) can find it in
#: pg_stat_activity.
EXPORT_MARK = "/* course-audit export */"
_COLUMNS = ("course_id", "account_id")
#: Rows one chunk statement reads: large enough that the per-statement cost vanishes, small
#: enough that a chunk (rows and their rendering) stays around a megabyte.
EXPORT_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Clause:
    """One more condition of an export: SQL with one `{}` per argument, in order (each is
    replaced by its `$n` placeholder). How later filters join the query without it knowing
    them."""

    sql: str
    args: tuple[Any, ...] = ()


_PLACEHOLDER = re.compile(r"\$[0-9]+")


def filter_extra(filters: Filters) -> list[Clause]:
    """The export's clauses for the endpoints' filters: the clauses `filter_clauses` writes
    (one argument each), with their placeholders left for `export_query` to number."""
    written = filter_clauses(filters, 1)
    return [
        Clause(_PLACEHOLDER.sub("{}", sql), (arg,))
        for sql, arg in zip(written.clauses, written.args, strict=True)
    ]


def _check(column: str, roots: Collection[int]) -> list[int]:
    if column not in _COLUMNS:
        raise ValueError(f"no export query on {column}")
    distinct = sorted(set(roots))
    if not distinct:
        raise ValueError("an export reads one or more root accounts")
    return distinct


def export_query(
    column: str,
    key: int,
    roots: Collection[int],
    window: Window,
    after: Cursor | None = None,
    extra: Sequence[Clause] = (),
    *,
    descending: bool = False,
    limit: int = EXPORT_CHUNK,
) -> tuple[str, list[Any]]:
    """The export's statement on `column` (course_id or account_id) and its arguments.

    Events of `key` stored under `roots`, inside `window`, after `after` (strictly, in the
    statement's order), matching every `extra` clause; oldest first, or newest first with
    `descending` (the command line's `--limit`: the latest events); at most `limit` rows, a
    constant of the statement so that it is planned for that many. Each root account is one
    range of the (column, root_account_id, created_at DESC, seq DESC) index. With several
    (rare: most tokens have one), as in the page query, each root account's range gives up
    to `limit` rows and the chunk is the first `limit` of their merge (a sort of at most
    `limit` rows per root account): PostgreSQL, asked to merge the ranges of a UNION ALL in
    order, preferred sequential scans and a sort of everything. Only the clauses in use are
    written out.
    """
    distinct = _check(column, roots)
    args: list[Any] = [key]

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    shared = []
    if window.since is not None:
        shared.append(f"created_at >= {param(window.since)}")
    if window.until is not None:
        shared.append(f"created_at < {param(window.until)}")
    if after is not None:
        at, seq = param(after.created_at), param(after.seq)
        # The plain bound lets PostgreSQL skip whole partitions; the row comparison is the
        # exact keyset condition and an index condition.
        if descending:
            shared += [f"created_at <= {at}", f"(created_at, seq) < ({at}, {seq})"]
        else:
            shared += [f"created_at >= {at}", f"(created_at, seq) > ({at}, {seq})"]
    for clause in extra:
        shared.append("(" + clause.sql.format(*(param(v) for v in clause.args)) + ")")
    if not 0 < limit <= 1_000_000:
        raise ValueError(f"an export statement reads 1 to 1,000,000 rows, not {limit}")
    direction = " DESC" if descending else ""

    def order(table: str) -> str:
        return f" ORDER BY {table}created_at{direction}, {table}seq{direction} LIMIT {limit:d}"

    several = len(distinct) > 1
    roots_param = param(distinct if several else distinct[0])
    clauses = [
        f"{column} = $1",
        "root_account_id = r.root" if several else f"root_account_id = {roots_param}",
        *shared,
    ]
    inner = f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)}{order('')}"
    if not several:
        return f"{EXPORT_MARK} {inner}", args
    sql = (
        f"{EXPORT_MARK} SELECT chunk.* FROM unnest({roots_param}::bigint[]) AS r(root)"
        f" CROSS JOIN LATERAL ({inner}) chunk{order('chunk.')}"
    )
    return sql, args


async def _fetch(conn: Conn, sql: str, args: list[Any], timeout: float | None) -> list[EventRow]:
    rows = await conn.fetch(sql, *args, timeout=timeout)
    # The SELECT list is _EVENT_COLUMNS, in EventRow's field order.
    return list(map(EventRow._make, rows))


async def export_chunks(
    conn: Conn,
    column: str,
    key: int,
    roots: Collection[int],
    window: Window,
    after: Cursor | None = None,
    extra: Sequence[Clause] = (),
    *,
    chunk: int = EXPORT_CHUNK,
    timeout: float | None = None,
) -> AsyncGenerator[list[EventRow], None]:
    """The export's events, oldest first, in chunks of up to `chunk` rows (never an empty
    one). Use it with `contextlib.aclosing`.

    The next chunk is read while the caller handles the current one (PostgreSQL works while
    this process renders); a caller that stops early has that read cancelled before the
    generator closes, so the connection is free again when it returns. `timeout` bounds each
    statement.
    """
    if not 0 < key <= MAX_ID:
        return

    def read(position: Cursor | None) -> asyncio.Task[list[EventRow]]:
        sql, args = export_query(column, key, roots, window, position, extra, limit=chunk)
        return asyncio.ensure_future(_fetch(conn, sql, args, timeout))

    pending: asyncio.Task[list[EventRow]] | None = read(after)
    try:
        while pending is not None:
            rows = await pending
            pending = read(rows[-1].cursor) if len(rows) == chunk else None
            if rows:
                yield rows
    finally:
        if pending is not None:
            pending.cancel()  # nothing when it is done; its outcome is collected either way
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending


_POSITION = """
SELECT created_at, seq FROM events
 WHERE event_id = $1 AND {column} = $2 AND root_account_id = ANY($3::bigint[])
"""


async def event_position(
    conn: Conn, column: str, key: int, roots: Collection[int], event_id: str
) -> Cursor | None:
    """Where the event `event_id` is in the export of `key` within `roots`: its (created_at,
    seq); None when it is not one of that export's events (unknown, of another course or
    account, or another tenant's)."""
    distinct = _check(column, roots)
    if not 0 < key <= MAX_ID:
        return None
    row = await conn.fetchrow(_POSITION.format(column=column), event_id, key, distinct)
    return None if row is None else Cursor(row["created_at"], row["seq"])


async def known_roots(conn: Conn, column: str, key: int) -> list[int]:
    """Every root account the store holds the course or account under (the command line,
    which reads all tenants unless told which)."""
    _check(column, [0])
    if not 0 < key <= MAX_ID:
        return []
    table = "courses" if column == "course_id" else "accounts"
    rows = await conn.fetch(
        f"SELECT DISTINCT root_account_id FROM {table} WHERE id = $1 ORDER BY 1", key
    )
    return [int(r[0]) for r in rows]


async def sis_course_roots(conn: Conn, sis_course_id: str) -> list[int]:
    """The root accounts holding a course with this SIS id."""
    if "\x00" in sis_course_id:
        return []
    rows = await conn.fetch(
        "SELECT DISTINCT root_account_id FROM courses WHERE sis_course_id = $1 ORDER BY 1",
        sis_course_id,
    )
    return [int(r[0]) for r in rows]
