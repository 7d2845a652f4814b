"""Read queries behind the audit API: id resolution, keyset pages, linked snapshots.

Pages are keyset pages in the API's order (`created_at DESC, seq DESC`), served by the
`events_course_order_idx` / `events_account_order_idx` range scans; never OFFSET, so a deep
page costs what the first one does.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from operator import itemgetter
from typing import Any, NamedTuple

import asyncpg

from course_audit.model import EVENT_RECORDS, Kind
from course_audit.store.db import Conn

#: Largest value of a PostgreSQL bigint; larger ids cannot exist in the store.
MAX_ID = 2**63 - 1
#: Most rows one page query reads: the API's largest page (100) and the row that tells
#: whether another page follows.
MAX_PAGE_ROWS = 101


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


#: The event types a filter may name: the 13 Canvas course event types, sorted.
EVENT_TYPES: tuple[str, ...] = tuple(sorted(EVENT_RECORDS))


@dataclass(frozen=True, slots=True)
class Filters:
    """What a page is narrowed to besides its time window (docs/api.md#filters).

    `event_types`: any of these types (empty: every type), sorted and each once, so equal
    filters compare, hash and print alike; `user_id`: events by this user; `event_source`:
    events with exactly this source. Build with `Filters.of` to get the canonical form.
    """

    event_types: tuple[str, ...] = ()
    user_id: int | None = None
    event_source: str | None = None

    def __post_init__(self) -> None:
        if tuple(sorted(set(self.event_types))) != self.event_types:
            raise ValueError("event_types must be sorted, each once (use Filters.of)")
        unknown = set(self.event_types).difference(EVENT_TYPES)
        if unknown:
            raise ValueError(f"not event types: {sorted(unknown)}")

    @classmethod
    def of(
        cls,
        event_types: Collection[str] = (),
        user_id: int | None = None,
        event_source: str | None = None,
    ) -> Filters:
        """Filters in canonical form: the event types sorted and deduplicated."""
        return cls(tuple(sorted(set(event_types))), user_id, event_source)

    @property
    def active(self) -> bool:
        """True when any filter is set (False: every event of the window)."""
        return bool(self.event_types) or self.user_id is not None or self.event_source is not None


NO_FILTERS = Filters()


class FilterSql(NamedTuple):
    """The WHERE clauses of some filters, their arguments (in parameter order) and, when the
    event types are read one at a time (`per_type`), the parameter holding their array."""

    clauses: list[str]
    args: list[Any]
    types_param: int | None = None


def filter_clauses(filters: Filters, first: int, *, per_type: str | None = None) -> FilterSql:
    """The clauses that apply `filters` on the `events` table, numbered from `$first`.

    Only the filters in use are written. Several event types become `event_type =
    ANY($k::text[])`; with `per_type` (an SQL expression, e.g. `t.wanted`) they become
    `event_type = <per_type>` instead, and `types_param` is `k`: the caller reads one range
    per type, over `unnest($k::text[])`. One event type is always `event_type = $k`. The
    export and the live tail share these, so every reader filters alike.
    """
    clauses: list[str] = []
    args: list[Any] = []
    types_param = None
    n = first
    if filters.event_types:
        if len(filters.event_types) == 1:
            clauses.append(f"event_type = ${n}")
            args.append(filters.event_types[0])
        elif per_type is not None:
            clauses.append(f"event_type = {per_type}")
            args.append(list(filters.event_types))
            types_param = n
        else:
            clauses.append(f"event_type = ANY(${n}::text[])")
            args.append(list(filters.event_types))
        n += 1
    if filters.user_id is not None:
        clauses.append(f"user_id = ${n}")
        args.append(filters.user_id)
        n += 1
    if filters.event_source is not None:
        clauses.append(f"event_source = ${n}")
        args.append(filters.event_source)
        n += 1
    return FilterSql(clauses, args, types_param)


def _per_type(column: str, filters: Filters) -> bool:
    """Whether a page reads one index range per event type and merges them: an account's page
    with several types and no user (a user's events are one range of the user index; their
    types a filter). A course has no filter indexes (docs/store.md#filter-indexes): its
    filters are checked on the rows of its one order index range."""
    return column == "account_id" and len(filters.event_types) > 1 and filters.user_id is None


class EventRow(NamedTuple):
    """One stored event as the API needs it: the page query's columns, in its order.

    A named tuple built straight from the asyncpg record (`EventRow._make(record)`): a page
    holds up to 101 of these per request, and a frozen dataclass cost several times more.
    `event_data` is the stored jsonb as JSON text, already shaped for the API.
    """

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
    event_data: str

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.created_at, self.seq)


@dataclass(frozen=True, slots=True)
class Refs:
    """The ids a page's events refer to, per kind, each once, in order of first appearance."""

    courses: list[int] = field(default_factory=list)
    users: list[int] = field(default_factory=list)
    page_views: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.courses or self.users or self.page_views)


@dataclass(frozen=True, slots=True)
class Linked:
    """Latest snapshots by kind and id, each the stored jsonb `data` as JSON text.

    Left as text: the API renders (and caches) the Canvas-shaped object per snapshot version,
    so an unchanged snapshot is never parsed again.
    """

    courses: dict[int, str] = field(default_factory=dict)
    users: dict[int, str] = field(default_factory=dict)
    page_views: dict[str, str] = field(default_factory=dict)


# Whether a course or account is known within root accounts: one primary-key probe, the same
# work for an id that is unknown and for one that only another tenant holds
# (docs/api.md#tenancy). Every stored event writes its course's snapshot and its account's
# row under the event's own root account, so these answer for every stored event.
_COURSE_KNOWN = """
SELECT EXISTS (SELECT FROM courses WHERE id = $1 AND root_account_id = ANY($2::bigint[]))
"""
_ACCOUNT_KNOWN = """
SELECT EXISTS (SELECT FROM accounts WHERE id = $1 AND root_account_id = ANY($2::bigint[]))
"""

# SIS ids are unique within a root account, not across them: with a token for several root
# accounts the most recently changed course wins (deterministically, by id after that).
_COURSE_BY_SIS_ID = """
SELECT id FROM courses
 WHERE sis_course_id = $1 AND root_account_id = ANY($2::bigint[])
 ORDER BY as_of DESC, id
 LIMIT 1
"""

_EVENT_COLUMNS = (
    "event_id::text AS event_id, created_at, seq, event_type, event_source, course_id,"
    " user_id, page_view_id, sis_batch_id, related_course_id, event_data::text AS event_data"
)


#: The kind of `fetch_snapshots`' extra row: the snapshot counter, in `num_id`.
CHANGES_KIND = "n"
#: The page query's column with the snapshot counter (`page_sql(changes=True)`).
CHANGES_COLUMN = "(SELECT n FROM snapshot_changes) AS changes"


# One round trip for all three snapshot kinds of a page, within the token's root accounts
# ($4): each root account has its own snapshot of an id, and where the token reaches several
# the newest is shown (docs/api.md#tenancy). Numeric and text ids get columns of their own so
# that neither needs converting on the way out. `xmin` (the transaction that wrote the row
# version) with the root account identifies a snapshot's version: every change to a row gives
# it a new one, so a reader holding the data of (id, root, xmin) holds that snapshot's data.
def _linked_sql(data: bool) -> str:
    extra = ", data::text AS data" if data else ""

    def kind(name: Kind, table: str, num: str, text: str, param: str) -> str:
        return (
            f"(SELECT DISTINCT ON (id) '{name}' AS kind, {num} AS num_id, {text} AS text_id,"
            f" root_account_id AS root, xmin AS version{extra} FROM {table}"
            f" WHERE id = ANY({param}) AND root_account_id = ANY($4::bigint[])"
            " ORDER BY id, as_of DESC, root_account_id)"
        )

    return "\nUNION ALL\n".join(
        (
            kind(Kind.COURSE, "courses", "id", "NULL::text", "$1::bigint[]"),
            kind(Kind.USER, "users", "id", "NULL::text", "$2::bigint[]"),
            kind(Kind.PAGE_VIEW, "page_views", "NULL::bigint", "id", "$3::text[]"),
        )
    )


# The snapshot counter (docs/store.md#snapshot-changes) as of this statement's snapshot, as one
# more row: the API keeps what it read only if no change it may have missed is newer
# (api/snapshots.py). Always there, also when no id has a snapshot.
_CHANGES_ROW = (
    f"SELECT '{CHANGES_KIND}', n, NULL::text, 0::bigint, '0'::xid, NULL::text FROM snapshot_changes"
)
_LINKED = _linked_sql(data=True) + "\nUNION ALL\n" + _CHANGES_ROW
# The same rows without their data: turning jsonb into text and shipping it is most of the
# cost of the snapshot query, and an API process already holds most snapshots it shows.
_LINKED_VERSIONS = _linked_sql(data=False)


class SnapshotRow(NamedTuple):
    """One stored snapshot: its kind (a `Kind` value), id, root account, row version, data.

    `data` is None in the rows of `snapshot_versions`.
    """

    kind: str
    num_id: int | None
    text_id: str | None
    root: int
    version: int
    data: str | None = None


def page_sql(
    column: str,
    window: Window,
    cursor: Cursor | None,
    roots: int = 1,
    filters: Filters = NO_FILTERS,
    *,
    changes: bool = False,
) -> tuple[str, int]:
    """The page query on `column` (course_id or account_id) for a token of `roots` root
    accounts, and its number of parameters.

    With `changes`, every row has one more column, last: the snapshot counter as of the
    statement's own snapshot (docs/design.md#snapshot-caches), which the API compares with
    the snapshot changes it has applied to its cache.

    $1 is the course or account and $2 the token's root account (or, for several, their
    array): each root account's events are one range of the (column, root_account_id,
    created_at DESC, seq DESC) index, read in the API's order; events another tenant's
    producers stored under the same id are never read (docs/api.md#tenancy). With one root
    account, almost every token, that range is the whole query; with several, the query runs
    one range per root account and merges them (a sort of at most 101 rows each), which
    costs about twice as much. Only the clauses in use are written out, so every variant
    gets a plan of its own with partition pruning. The redundant `created_at <= cursor time`
    lets PostgreSQL prune the partitions newer than the cursor; the row comparison is the
    exact keyset condition and an index condition.

    Filters (docs/store.md#filter-indexes) come after the cursor's parameters, before the
    limit; without any, the text is the unfiltered query's. On an account, a user's events
    are one range of the (account_id, root_account_id, user_id, created_at DESC, seq DESC)
    index; one event type's one range of the (account_id, root_account_id, event_type, ...)
    index; several types (and no user) are read one range per type, like several root
    accounts, and merged. On a course, the filters are checked on the rows of the course's
    order index range. Either way the range stops once the page is full.
    """
    if column not in ("course_id", "account_id"):
        raise ValueError(f"no page query on {column}")
    if roots < 1:
        raise ValueError("a page query reads one or more root accounts")
    several = roots > 1
    clauses = [f"{column} = $1", "root_account_id = r.root" if several else "root_account_id = $2"]
    n = 2
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
    per_type = _per_type(column, filters)
    filtered = filter_clauses(filters, n + 1, per_type="t.wanted" if per_type else None)
    clauses.extend(filtered.clauses)
    n += len(filtered.args) + 1
    # The constant inner LIMIT is what lets PostgreSQL reuse one plan: costing `LIMIT $n`
    # without its value, the planner assumes a tenth of the matching rows, which for an
    # account (thousands of events) made every generic plan look dearer than a fresh one,
    # so each request planned the query again (docs/performance.md#generic-plan). Capped at the
    # largest page, the generic plan is costed for what it reads and is kept; the outer
    # LIMIT still stops after the rows asked for.
    inner = (
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)}"
        f" ORDER BY created_at DESC, seq DESC LIMIT {MAX_PAGE_ROWS}"
    )
    extra = f", {CHANGES_COLUMN}" if changes else ""
    if not several and not per_type:
        return f"SELECT *{extra} FROM ({inner}) page LIMIT ${n}", n
    ranges = ["unnest($2::bigint[]) AS r(root)"] if several else []
    if per_type:
        ranges.append(f"unnest(${filtered.types_param}::text[]) AS t(wanted)")
    sql = (
        f"SELECT page.*{extra} FROM {' CROSS JOIN '.join(ranges)}"
        f" CROSS JOIN LATERAL ({inner}) page"
        f" ORDER BY page.created_at DESC, page.seq DESC LIMIT ${n}"
    )
    return sql, n


def page_args(
    key: int,
    roots: Collection[int],
    window: Window,
    cursor: Cursor | None,
    limit: int,
    filters: Filters = NO_FILTERS,
) -> list[Any]:
    """The arguments of `page_sql` for the same window, cursor, number of roots and filters."""
    if not 0 < limit <= MAX_PAGE_ROWS:
        raise ValueError(f"a page query reads 1 to {MAX_PAGE_ROWS} rows, not {limit}")
    distinct = sorted(set(roots))
    args: list[Any] = [key, distinct if len(distinct) > 1 else distinct[0]]
    if window.since is not None:
        args.append(window.since)
    if window.until is not None:
        args.append(window.until)
    if cursor is not None:
        args.extend((cursor.created_at, cursor.seq))
    args.extend(filter_clauses(filters, 0).args)
    args.append(limit)
    return args


async def course_known(conn: Conn, course_id: int, roots: Collection[int]) -> bool:
    """True when the store holds the course under one of `roots`."""
    if not 0 < course_id <= MAX_ID:
        return False
    return bool(await conn.fetchval(_COURSE_KNOWN, course_id, list(roots)))


async def account_known(conn: Conn, account_id: int, roots: Collection[int]) -> bool:
    """True when an event stored under one of `roots` names the account."""
    if not 0 < account_id <= MAX_ID:
        return False
    return bool(await conn.fetchval(_ACCOUNT_KNOWN, account_id, list(roots)))


async def resolve_sis_course(conn: Conn, sis_course_id: str, roots: Collection[int]) -> int | None:
    """The numeric id of the course with this SIS id within `roots`, else None."""
    if "\x00" in sis_course_id:  # PostgreSQL text cannot hold NUL: no course has it
        return None
    found = await conn.fetchval(_COURSE_BY_SIS_ID, sis_course_id, list(roots))
    return None if found is None else int(found)


class PageRows(NamedTuple):
    """A page's events and the snapshot counter as of the page query's snapshot (None when
    the page is empty: no row carried it)."""

    events: list[EventRow]
    changes: int | None


_EVENT_FIELDS = itemgetter(slice(0, len(EventRow._fields)))
#: EventRow from a tuple of exactly its fields (`_EVENT_FIELDS`' slice): `EventRow._make`
#: checks the length again in Python, a third of the cost of a page's rows.
_event_row = partial(tuple.__new__, EventRow)


async def _page_rows(
    conn: Conn,
    column: str,
    key: int,
    roots: Collection[int],
    window: Window,
    cursor: Cursor | None,
    limit: int,
    filters: Filters,
) -> PageRows:
    """The page's events and the snapshot counter it was read at."""
    if not 0 < key <= MAX_ID:
        return PageRows([], None)
    sql, _ = page_sql(column, window, cursor, len(set(roots)), filters, changes=True)
    rows = await conn.fetch(sql, *page_args(key, roots, window, cursor, limit, filters))
    # _EVENT_COLUMNS in EventRow's field order, then the counter.
    return PageRows(list(map(_event_row, map(_EVENT_FIELDS, rows))), rows[0][-1] if rows else None)


async def course_page_rows(
    conn: Conn,
    course_id: int,
    roots: Collection[int],
    window: Window,
    cursor: Cursor | None,
    limit: int,
    filters: Filters = NO_FILTERS,
) -> PageRows:
    """Up to `limit` events of a course stored under `roots`, after `cursor`, newest first,
    and the snapshot counter the page was read at."""
    return await _page_rows(conn, "course_id", course_id, roots, window, cursor, limit, filters)


async def account_page_rows(
    conn: Conn,
    account_id: int,
    roots: Collection[int],
    window: Window,
    cursor: Cursor | None,
    limit: int,
    filters: Filters = NO_FILTERS,
) -> PageRows:
    """Up to `limit` events stored under `roots` whose direct account was `account_id`, and
    the snapshot counter the page was read at."""
    return await _page_rows(conn, "account_id", account_id, roots, window, cursor, limit, filters)


def referenced(events: Sequence[EventRow]) -> Refs:
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
    return Refs(list(courses), list(users), list(page_views))


async def fetch_snapshots(
    conn: Conn, refs: Refs, roots: Collection[int]
) -> tuple[list[SnapshotRow], int]:
    """Latest snapshots of the given ids within `roots`, with their versions, and the snapshot
    counter as of the same statement's snapshot, in one round trip."""
    rows = await conn.fetch(_LINKED, refs.courses, refs.users, refs.page_views, list(roots))
    snapshots = []
    changes = 0
    for r in rows:
        if r[0] == CHANGES_KIND:
            changes = r[1]
        else:
            snapshots.append(SnapshotRow(*r))
    return snapshots, changes


async def snapshot_rows(conn: Conn, refs: Refs, roots: Collection[int]) -> list[SnapshotRow]:
    """Latest snapshots of the given ids within `roots`, with their versions, in one round
    trip."""
    if not refs:
        return []
    return (await fetch_snapshots(conn, refs, roots))[0]


async def snapshot_versions(conn: Conn, refs: Refs, roots: Collection[int]) -> list[asyncpg.Record]:
    """The current version of each given id's snapshot within `roots`, in one round trip:
    records of (kind, num_id, text_id, root, version), left as asyncpg gives them (this runs
    on every page)."""
    if not refs:
        return []
    return await conn.fetch(
        _LINKED_VERSIONS, refs.courses, refs.users, refs.page_views, list(roots)
    )
