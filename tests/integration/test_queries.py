"""The API's read queries against a real PostgreSQL: resolution, keyset pages, plans."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from course_audit.api import handlers
from course_audit.api.errors import ApiError
from course_audit.api.params import parse_query
from course_audit.api.snapshots import SnapshotTexts
from course_audit.model import Event
from course_audit.retention import month_of
from course_audit.store.partitions import PartitionCache, ensure_partition_for
from course_audit.store.queries import (
    Cursor,
    EventRow,
    Refs,
    Window,
    account_known,
    account_page_rows,
    course_known,
    course_page_rows,
    page_args,
    page_sql,
    referenced,
    resolve_sis_course,
    snapshot_rows,
)
from course_audit.store.writer import write_batch

T0 = datetime(2026, 10, 10, 12, 0, tzinfo=UTC)


async def course_page(*args: Any, **kwargs: Any) -> list[EventRow]:
    """The events of the course endpoint's page query."""
    return (await course_page_rows(*args, **kwargs)).events


async def account_page(*args: Any, **kwargs: Any) -> list[EventRow]:
    """The events of the account endpoint's page query."""
    return (await account_page_rows(*args, **kwargs)).events


def course(cid: int, account: int = 100, root: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "account_id": account,
        "root_account_id": root,
        "sis_course_id": f"SIS-{cid}",
        "name": f"Course {cid}",
    } | fields


def event(at: datetime, crs: dict[str, Any], event_type: str = "updated", **kw: Any) -> Event:
    return Event(
        event_id=uuid.uuid4(),
        created_at=at,
        event_type=event_type,
        event_source="api",
        course=crs,
        user=kw.get("user"),
        page_view=kw.get("page_view"),
        sis_batch_id=None,
        event_data={"name": ["A", "B"]} if event_type == "updated" else {},
        related_course=kw.get("related"),
    )


async def store(conn: asyncpg.Connection[Any], events: list[Event]) -> None:
    await write_batch(conn, events, cache=PartitionCache())


async def test_courses_are_known_within_their_roots_and_sis_ids_too(
    conn: asyncpg.Connection[Any],
) -> None:
    await store(conn, [event(T0, course(1)), event(T0, course(2, account=200, root=2))])
    assert await course_known(conn, 1, [1])
    assert await course_known(conn, 2, [2])
    assert await course_known(conn, 2, [1, 2])
    assert not await course_known(conn, 2, [1])  # another tenant's: as if unknown
    assert not await course_known(conn, 3, [1, 2])
    assert not await course_known(conn, 2**63, [1])  # beyond bigint
    assert await course_page(conn, 2**63, [1], Window(), None, 10) == []
    assert await resolve_sis_course(conn, "SIS-2", [2]) == 2
    assert await resolve_sis_course(conn, "SIS-2", [1]) is None  # another tenant's: unknown
    assert await resolve_sis_course(conn, "nope", [1, 2]) is None
    assert await resolve_sis_course(conn, "SIS\x002", [1, 2]) is None  # NUL: no such text


async def test_a_copy_target_of_the_same_root_is_known_with_no_events(
    conn: asyncpg.Connection[Any],
) -> None:
    await store(conn, [event(T0, course(1), "copied_to", related=course(9))])
    assert await course_known(conn, 9, [1])
    assert await course_page(conn, 9, [1], Window(), None, 10) == []


async def test_a_copy_target_of_another_root_is_linked_by_id_only(
    conn: asyncpg.Connection[Any],
) -> None:
    await store(conn, [event(T0, course(1), "copied_to", related=course(9, root=2))])
    # Root 1's producer may not say what root 2's course is: no snapshot under either root.
    assert not await course_known(conn, 9, [1])
    assert not await course_known(conn, 9, [2])
    rows = await course_page(conn, 1, [1], Window(), None, 10)
    assert [r.related_course_id for r in rows] == [9]  # the link itself stays
    refs = referenced(rows)
    kept = {(r.kind, r.num_id) for r in await snapshot_rows(conn, refs, [1, 2])}
    assert kept == {("course", 1)}


async def test_a_course_claimed_under_two_roots_shows_each_root_its_own_events(
    conn: asyncpg.Connection[Any],
) -> None:
    mine = event(T0, course(950, name="Mine"))
    claim = event(T0 + timedelta(hours=1), course(950, account=300, root=2, name="Theirs"))
    await store(conn, [mine])
    await store(conn, [claim])
    ids = [str(mine.event_id)], [str(claim.event_id)]
    assert [r.event_id for r in await course_page(conn, 950, [1], Window(), None, 10)] == ids[0]
    assert [r.event_id for r in await course_page(conn, 950, [2], Window(), None, 10)] == ids[1]
    both = await course_page(conn, 950, [1, 2], Window(), None, 10)
    assert [r.event_id for r in both] == ids[1] + ids[0]  # newest first across roots
    assert await course_known(conn, 950, [1]) and await course_known(conn, 950, [2])
    # Each root keeps its own snapshot: root 1 still sees the name it sent.
    refs = Refs([950])
    names = {
        r.root: orjson.loads(r.data or "null")["name"]
        for roots in ([1], [2])
        for r in await snapshot_rows(conn, refs, roots)
    }
    assert names == {1: "Mine", 2: "Theirs"}
    # The account the claim named is root 2's; root 1's account 100 stays root 1's only.
    assert await account_known(conn, 300, [2]) and not await account_known(conn, 300, [1])
    assert await account_known(conn, 100, [1]) and not await account_known(conn, 100, [2])
    assert [r.event_id for r in await account_page(conn, 100, [2], Window(), None, 10)] == []


async def test_users_and_page_views_are_kept_per_root(conn: asyncpg.Connection[Any]) -> None:
    one = {"id": 7, "name": "Ann", "login_id": "ann@one", "sis_user_id": "one-7"}
    two = {"id": 7, "name": "Ann", "login_id": "ann@two", "sis_user_id": "two-7"}
    await store(conn, [event(T0, course(1), user=one, page_view={"id": "pv", "url": "/one"})])
    await store(
        conn,
        [
            event(
                T0 + timedelta(hours=1),
                course(2, root=2),
                user=two,
                page_view={"id": "pv", "url": "/two"},
            )
        ],
    )
    refs = Refs([], [7], ["pv"])
    seen = {
        (r.kind, r.root): orjson.loads(r.data or "null")
        for roots in ([1], [2])
        for r in await snapshot_rows(conn, refs, roots)
    }
    assert seen == {
        ("user", 1): one,
        ("user", 2): two,
        ("page_view", 1): {"id": "pv", "url": "/one"},
        ("page_view", 2): {"id": "pv", "url": "/two"},
    }
    # A token for both roots gets one object per id: the newest.
    both = {r.kind: r.root for r in await snapshot_rows(conn, refs, [1, 2])}
    assert both == {"user": 2, "page_view": 2}


async def test_accounts_by_events_including_a_moved_course(
    conn: asyncpg.Connection[Any],
) -> None:
    await store(conn, [event(T0, course(1, account=100))])
    await store(conn, [event(T0 + timedelta(hours=1), course(1, account=101))])
    assert await account_known(conn, 100, [1])  # only its events remember it
    assert await account_known(conn, 101, [1])
    assert not await account_known(conn, 102, [1])
    assert not await account_known(conn, 2**63, [1])
    old = await account_page(conn, 100, [1], Window(), None, 10)
    new = await account_page(conn, 101, [1], Window(), None, 10)
    assert [e.created_at for e in old] == [T0]
    assert [e.created_at for e in new] == [T0 + timedelta(hours=1)]


async def test_pages_walk_ties_exactly_once_newest_first(conn: asyncpg.Connection[Any]) -> None:
    # 25 events in 5 distinct instants: ties broken by arrival (seq), newest first.
    events = [event(T0 + timedelta(seconds=i // 5), course(1)) for i in range(25)]
    await store(conn, events)
    seen: list[str] = []
    cursor: Cursor | None = None
    while True:
        rows = await course_page(conn, 1, [1], Window(), cursor, 4)
        page = rows[:3]
        seen.extend(r.event_id for r in page)
        if len(rows) <= 3:
            break
        cursor = page[-1].cursor
    expected = [
        str(e.event_id)
        for e in sorted(events, key=lambda e: (e.created_at, events.index(e)), reverse=True)
    ]
    assert seen == expected


async def test_window_bounds(conn: asyncpg.Connection[Any]) -> None:
    events = [event(T0 + timedelta(seconds=i), course(1)) for i in range(10)]
    await store(conn, events)
    window = Window(T0 + timedelta(seconds=2), T0 + timedelta(seconds=5))
    rows = await course_page(conn, 1, [1], window, None, 100)
    assert [r.created_at for r in rows] == [T0 + timedelta(seconds=s) for s in (4, 3, 2)]


async def test_linked_snapshots_in_one_query(conn: asyncpg.Connection[Any]) -> None:
    user = {"id": 7, "name": "Ann"}
    pv = {"id": "pv-1", "url": "https://lms/x"}
    await store(
        conn,
        [
            event(
                T0, course(1, name="Old"), "copied_from", related=course(2), user=user, page_view=pv
            ),
            event(T0 + timedelta(seconds=1), course(1, name="New")),
        ],
    )
    rows = await course_page(conn, 1, [1], Window(), None, 10)
    refs = referenced(rows)
    assert refs == Refs([1, 2], [7], ["pv-1"])
    snapshots = {
        (r.kind, r.num_id if r.text_id is None else r.text_id): orjson.loads(r.data or "null")
        for r in await snapshot_rows(conn, refs, [1])
    }
    assert snapshots[("course", 1)]["name"] == "New"  # the latest snapshot
    assert snapshots[("course", 2)]["id"] == 2
    assert snapshots[("user", 7)] == user
    assert snapshots[("page_view", "pv-1")] == pv
    assert len(snapshots) == 4
    assert rows[1].related_course_id == 2 and rows[1].event_data == "{}"


class Counting:
    """A connection that counts the queries sent through it."""

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self.conn = conn
        self.queries = 0

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.queries += 1
        return await self.conn.fetch(sql, *args)


async def test_snapshot_texts_are_reused_only_while_the_row_is_unchanged(
    conn: asyncpg.Connection[Any],
) -> None:
    user = {"id": 7, "name": "Ann"}
    await store(conn, [event(T0, course(1, name="Old"), user=user)])
    now = [100.0]
    texts = SnapshotTexts(ttl_s=60, clock=lambda: now[0])
    counting = Counting(conn)

    async def names() -> tuple[str, str]:
        refs = Refs([1, 404], [7], ["pv-none"])
        linked = await texts.linked(counting, refs, [1])  # type: ignore[arg-type]
        assert list(linked.courses) == [1] and not linked.page_views  # no snapshot: left out
        return orjson.loads(linked.courses[1])["name"], orjson.loads(linked.users[7])["name"]

    assert await names() == ("Old", "Ann")
    assert counting.queries == 2  # versions, then the texts this process lacked
    assert await names() == ("Old", "Ann")
    assert counting.queries == 3  # versions only
    await store(conn, [event(T0 + timedelta(seconds=1), course(1, name="New"), user=user)])
    assert await names() == ("New", "Ann")  # never an older snapshot than the store's
    assert counting.queries == 5
    now[0] += 61  # past the TTL: read in full again
    assert await names() == ("New", "Ann")
    assert counting.queries == 7
    assert len(texts) == 2


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out.extend(_nodes(child))
    return out


async def _fill(conn: asyncpg.Connection[Any], course_id: int, n: int) -> None:
    """`n` events of one course (plus noise of others) over three months, 20 per instant."""
    start = datetime(2026, 8, 1, tzinfo=UTC)
    months = {month_of(start + timedelta(days=d)) for d in range(0, 100, 10)}
    await ensure_partition_for(conn, months, cache=PartitionCache())
    await conn.execute(
        """
        INSERT INTO events (event_id, created_at, event_type, event_source, course_id,
                            account_id, root_account_id, event_data)
        SELECT gen_random_uuid(), $2::timestamptz + (g / 20) * interval '16 minutes',
               'updated', 'api', CASE WHEN g % 4 = 0 THEN $1 + 1 ELSE $1 END, 100, 1,
               '{"name": ["A", "B"]}'
          FROM generate_series(1, $3) g
        """,
        course_id,
        start,
        n,
    )
    await conn.execute("ANALYZE events")


async def _explain(
    conn: asyncpg.Connection[Any], window: Window, cursor: Cursor | None, limit: int
) -> dict[str, Any]:
    sql, _ = page_sql("course_id", window, cursor)
    # A prepared statement, as asyncpg runs it; EXPLAIN EXECUTE shows the plan it gets.
    await conn.execute(f"PREPARE page AS {sql}")
    try:
        args = ", ".join(_literal(a) for a in page_args(42, [1], window, cursor, limit))
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE page({args})")
    finally:
        await conn.execute("DEALLOCATE page")
    plan: dict[str, Any] = orjson.loads(raw)[0]["Plan"]
    return plan


def _literal(value: Any) -> str:
    if isinstance(value, list):
        return f"'{{{','.join(str(int(v)) for v in value)}}}'::bigint[]"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    return str(int(value))


@pytest.mark.parametrize("with_window", [False, True])
async def test_a_deep_page_is_an_index_range_scan_like_the_first(
    conn: asyncpg.Connection[Any], with_window: bool
) -> None:
    await _fill(conn, 42, 160_000)  # 120,000 events of course 42: 1,200 pages of 100
    window = (
        Window(datetime(2026, 8, 2, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
        if with_window
        else Window()
    )
    # The cursor 1,000 pages in, found the slow way only to set the test up.
    row = await conn.fetchrow(
        "SELECT created_at, seq FROM events WHERE course_id = 42"
        + (" AND created_at >= $1 AND created_at < $2" if with_window else "")
        + " ORDER BY created_at DESC, seq DESC OFFSET 99999 LIMIT 1",
        *([window.since, window.until] if with_window else []),
    )
    assert row is not None
    deep = Cursor(row["created_at"], row["seq"])

    first_plan = await _explain(conn, window, None, 101)
    deep_plan = await _explain(conn, window, deep, 101)
    for plan in (first_plan, deep_plan):
        nodes = _nodes(plan)
        kinds = {n["Node Type"] for n in nodes}
        assert "Sort" not in kinds and "Seq Scan" not in kinds, kinds
        scans = [n for n in nodes if n["Node Type"] in ("Index Scan", "Index Only Scan")]
        assert scans and all(
            n["Index Name"].endswith("course_id_root_account_id_created_at_seq_idx") for n in scans
        )
        # The scans stop after the page: no more rows read than the page needs.
        assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) == 101
        assert plan["Actual Rows"] == 101
    # Several monthly partitions, read in order: an ordered Append, no merge or sort.
    appends = [n for n in _nodes(first_plan) if n["Node Type"] == "Append"]
    assert appends and len(appends[0]["Plans"]) >= 3
    deep_scans = [n for n in _nodes(deep_plan) if n["Node Type"] == "Index Scan"]
    assert any("ROW(created_at, seq) <" in n.get("Index Cond", "") for n in deep_scans)
    # Page 1,000 touches about as many buffers as page 1 (no OFFSET: nothing skipped).
    buffers = [p["Shared Hit Blocks"] + p["Shared Read Blocks"] for p in (first_plan, deep_plan)]
    assert buffers[1] <= 2 * buffers[0] + 20, buffers


class Recording:
    """A connection that records the statements sent through it, in order."""

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self.conn = conn
        self.sent: list[str] = []

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.sent.append(sql)
        return await self.conn.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.sent.append(sql)
        return await self.conn.fetchval(sql, *args)


@pytest.mark.parametrize("target", ["course", "account"])
async def test_a_foreign_id_takes_the_path_of_an_unknown_one(
    conn: asyncpg.Connection[Any], target: str
) -> None:
    # Root 2's course 2000 in account 200, with events: for a root 1 token, it must be
    # answered by the same statements as an id nobody holds.
    await store(
        conn, [event(T0 + timedelta(seconds=i), course(2000, 200, root=2)) for i in range(5)]
    )
    await store(conn, [event(T0, course(1, 100))])
    chosen = handlers.COURSE if target == "course" else handlers.ACCOUNT
    foreign, unknown = (2000, 200)[target == "account"], 987_654
    query = parse_query({}, UTC)
    paths = []
    for key in (foreign, unknown):
        recording = Recording(conn)
        with pytest.raises(ApiError) as raised:
            await handlers._page(recording, chosen, key, [1], query, SnapshotTexts())  # type: ignore[arg-type]
        assert raised.value.status == 404
        paths.append(recording.sent)
    assert paths[0] == paths[1] and len(paths[0]) == 2  # an empty page, then one probe
    # And the owner reads its events in one statement: no probe when the page has events.
    owner = Recording(conn)
    page = await handlers._page(owner, chosen, foreign, [2], query, SnapshotTexts())  # type: ignore[arg-type]
    assert len(page.events) == 5 and owner.sent[0] == paths[0][0]
    assert not any("EXISTS" in sql for sql in owner.sent)
