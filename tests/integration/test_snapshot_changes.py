"""Snapshot changes are counted and announced by every writer (docs/store.md#snapshot-changes),
and the API's snapshot texts stay exact with them (docs/design.md#snapshot-caches)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from course_audit.api.announcements import SNAPSHOTS_CHANNEL, parse
from course_audit.api.snapshots import SnapshotTexts
from course_audit.model import Event
from course_audit.retention import add_months, month_of
from course_audit.store.expiry import expire_snapshots
from course_audit.store.partitions import PartitionCache, drop_expired
from course_audit.store.queries import Refs, Window, course_page_rows, referenced
from course_audit.store.writer import write_batch
from db_roles import as_role, login_roles
from waits import eventually

T0 = datetime(2026, 10, 10, 12, 0, tzinfo=UTC)


def event(
    at: datetime, course: int = 1, user: int | None = 7, name: str = "Ann", **kw: Any
) -> Event:
    return Event(
        event_id=uuid.uuid4(),
        created_at=at,
        event_type="updated",
        event_source="api",
        course={"id": course, "account_id": 100, "root_account_id": 1, "name": f"C{course}"},
        user=None if user is None else {"id": user, "name": name},
        page_view=kw.get("page_view"),
        sis_batch_id=None,
        event_data={"name": ["A", "B"]},
    )


class Heard:
    """A connection LISTENing on the snapshot channel, and what it heard, parsed."""

    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []

    def __call__(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        self.notes.append(orjson.loads(str(payload)))

    async def count(self, n: int, what: str) -> list[dict[str, Any]]:
        async def probe() -> int:
            return len(self.notes)

        await eventually(probe, lambda k: k >= n, 10, what)
        return self.notes


@pytest.fixture
async def heard(migrated_db_url: str) -> AsyncIterator[Heard]:
    listener = Heard()
    conn = await asyncpg.connect(migrated_db_url)
    await conn.add_listener(SNAPSHOTS_CHANNEL, listener)
    try:
        yield listener
    finally:
        await conn.close()


async def counter(conn: asyncpg.Connection[Any]) -> int:
    return int(await conn.fetchval("SELECT n FROM snapshot_changes"))


async def quiet(conn: asyncpg.Connection[Any], heard: Heard) -> None:
    """A marker after everything sent so far: a transaction of its own that changes a row, so
    that a test can tell 'nothing more came' from 'not delivered yet'."""
    before = len(heard.notes)
    await conn.execute(
        "INSERT INTO page_views (id, root_account_id, data, as_of)"
        " VALUES ('marker-' || gen_random_uuid(), 1, '{}', now())"
    )
    await heard.count(before + 1, "the marker's announcement")


async def test_the_batch_statement_announces_the_ids_it_changed_and_a_no_op_nothing(
    conn: asyncpg.Connection[Any], heard: Heard
) -> None:
    assert await counter(conn) == 0
    first = [event(T0, course=1, user=7), event(T0, course=2, user=8, page_view={"id": "pv-1"})]
    await write_batch(conn, first, cache=PartitionCache())
    notes = await heard.count(3, "inserts of courses, users, page views")
    # One bump per table changed (statement-level triggers), in order, each naming its ids.
    assert [n["n"] for n in notes] == [1, 2, 3]
    ids = {k: sorted(v) for note in notes for k, v in note.items() if k != "n"}
    assert ids == {"c": [1, 2], "u": [7, 8], "p": ["pv-1"]}
    assert await counter(conn) == 3
    # The same events again: duplicates, no snapshot row changes, no bump.
    await write_batch(conn, first, cache=PartitionCache())
    # A newer event renaming user 7: one update of users. Course 1's row is updated too (its
    # as_of moves forward) but its snapshot is the same: not announced (migration 0007).
    await write_batch(conn, [event(T0 + timedelta(1), course=1, user=7, name="Bo")], cache=None)
    notes = await heard.count(4, "the update's announcement")
    assert notes[3] == {"n": 4, "u": [7]}
    assert await conn.fetchval("SELECT as_of FROM courses WHERE id = 1") == T0 + timedelta(1)
    await quiet(conn, heard)
    assert len(heard.notes) == 5 and heard.notes[4]["n"] == 5
    assert heard.notes[4]["p"][0].startswith("marker-")  # nothing came before the marker


async def test_an_update_that_changes_no_shown_snapshot_is_not_announced(
    conn: asyncpg.Connection[Any], heard: Heard
) -> None:
    await write_batch(conn, [event(T0, course=1, user=7)], cache=PartitionCache())
    await heard.count(2, "the batch's announcements")
    # Newer events, the same snapshots: every row's as_of moves, no bump, no notification.
    later = [event(T0 + timedelta(hours=h), course=1, user=7) for h in (1, 2)]
    await write_batch(conn, later, cache=None)
    assert await conn.fetchval("SELECT as_of FROM users WHERE id = 7") == T0 + timedelta(hours=2)
    assert await counter(conn) == 2
    # An operator moving a row to another root account changes its key: announced.
    await conn.execute("UPDATE courses SET root_account_id = 2 WHERE id = 1")
    notes = await heard.count(3, "the key change")
    assert notes[2] == {"n": 3, "c": [1]}
    # Another statement of the same data with a newer as_of: nothing.
    await conn.execute("UPDATE users SET as_of = as_of + interval '1 day'")
    await quiet(conn, heard)
    assert [n["n"] for n in heard.notes] == [1, 2, 3, 4]
    assert heard.notes[3]["p"][0].startswith("marker-")  # nothing came before the marker


async def test_manual_sql_is_announced_and_a_rolled_back_change_is_not(
    conn: asyncpg.Connection[Any], heard: Heard
) -> None:
    await write_batch(conn, [event(T0, course=1, user=7)], cache=PartitionCache())
    await heard.count(2, "the batch's announcements")
    await conn.execute("""UPDATE users SET data = '{"id": 7, "name": "Manual"}' WHERE id = 7""")
    notes = await heard.count(3, "the manual update")
    assert notes[2] == {"n": 3, "u": [7]}
    async with conn.transaction():
        await conn.execute("DELETE FROM courses WHERE id = 1")
        await conn.execute("DELETE FROM users WHERE id = 7")
    notes = await heard.count(5, "the manual deletes")
    assert notes[3:5] == [{"n": 4, "c": [1]}, {"n": 5, "u": [7]}]  # once per statement
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await conn.execute("UPDATE page_views SET data = '{}'")  # no rows: no bump
            await conn.execute(
                "INSERT INTO users (id, root_account_id, data, as_of) VALUES (9, 1, '{}', now())"
            )
            raise RuntimeError("roll back")
    assert await counter(conn) == 5
    await conn.execute("TRUNCATE page_views")
    notes = await heard.count(6, "the truncate")
    assert notes[5] == {"n": 6, "all": True}  # not the rolled-back insert's n
    await quiet(conn, heard)
    assert [n["n"] for n in heard.notes] == [1, 2, 3, 4, 5, 6, 7]


async def test_expiry_announces_the_snapshots_it_deletes(
    conn: asyncpg.Connection[Any], heard: Heard
) -> None:
    now: datetime = (await conn.fetchval("SELECT now()")).astimezone(UTC)
    old_month = add_months(month_of(now), -20)
    old = datetime(old_month.year, old_month.month, 5, tzinfo=UTC)
    await write_batch(
        conn,
        [event(old, course=1, user=5), event(now, course=2, user=6)],
        cache=PartitionCache(),
    )
    await heard.count(2, "the batch's announcements")
    assert await drop_expired(conn, 14, cache=PartitionCache()) != []
    counts = await expire_snapshots(conn, 14)
    assert counts["courses"] == 1 and counts["users"] == 1
    notes = await heard.count(4, "the expiry's announcements")
    assert notes[2:] == [{"n": 3, "c": [1]}, {"n": 4, "u": [5]}]


async def test_a_long_list_is_announced_in_pieces(
    conn: asyncpg.Connection[Any], heard: Heard
) -> None:
    """2,001 ids of 10 digits (22 KB of JSON) in one statement: consecutive bumps, each
    notification under 8,000 bytes, every id once; only a TRUNCATE is "all"."""
    await conn.execute(
        "INSERT INTO users (id, root_account_id, data, as_of)"
        " SELECT g, 1, '{}', now() FROM generate_series(1000000000, 1000002000) g"
    )
    notes = await heard.count(4, "the big insert's pieces")
    assert [note["n"] for note in notes] == [1, 2, 3, 4]
    assert [set(note) for note in notes] == [{"n", "u"}] * 4
    ids = [i for note in notes for i in note["u"]]
    assert ids == list(range(1_000_000_000, 1_000_002_001))
    assert all(len(orjson.dumps(note)) < 7800 for note in notes)
    await conn.execute("TRUNCATE users")
    assert (await heard.count(5, "the truncate"))[4] == {"n": 5, "all": True}


async def test_one_id_too_long_for_a_notification_is_announced_as_all(
    conn: asyncpg.Connection[Any], heard: Heard
) -> None:
    huge = "v" * 8000
    await conn.execute(
        "INSERT INTO page_views (id, root_account_id, data, as_of)"
        " VALUES ('short', 1, '{}', now()), ($1, 1, '{}', now())",
        huge,
    )
    notes = await heard.count(2, "the two pieces")
    assert notes == [{"n": 1, "p": ["short"]}, {"n": 2, "all": True}]


async def test_concurrent_writers_count_in_commit_order(
    migrated_db_url: str, conn: asyncpg.Connection[Any], heard: Heard
) -> None:
    await write_batch(
        conn, [event(T0, course=1, user=7), event(T0, course=2, user=8)], cache=PartitionCache()
    )
    await heard.count(2, "the batch's announcements")
    other = await asyncpg.connect(migrated_db_url)
    try:
        first = conn.transaction()
        await first.start()
        await conn.execute("UPDATE users SET data = '{}' WHERE id = 7")  # n = 3, lock held
        second = asyncio.create_task(
            other.execute("UPDATE courses SET data = '{}' WHERE id = 2")  # waits for the lock
        )

        async def waiting() -> bool:
            # That writer's own backend (pg_stat_activity is the whole server's).
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1"
                    " AND wait_event_type = 'Lock')",
                    other.get_server_pid(),
                )
            )

        await eventually(waiting, bool, 10, "the second writer waiting for the counter")
        assert not second.done()
        await conn.execute("UPDATE courses SET data = '{}' WHERE id = 1")  # n = 4, same txn
        await first.commit()
        await second
    finally:
        await other.close()
    notes = await heard.count(5, "both writers' announcements")
    assert notes[2:] == [{"n": 3, "u": [7]}, {"n": 4, "c": [1]}, {"n": 5, "c": [2]}]


async def test_the_writer_role_bumps_through_the_trigger_and_the_reader_reads_the_counter(
    server_url: str, migrated_db_url: str, heard: Heard
) -> None:
    async with login_roles(server_url) as (writer, reader):
        wconn = await asyncpg.connect(as_role(migrated_db_url, writer))
        rconn = await asyncpg.connect(as_role(migrated_db_url, reader))
        try:
            await write_batch(wconn, [event(T0, course=1, user=7)], cache=PartitionCache())
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await wconn.execute("UPDATE snapshot_changes SET n = 0")
            assert await counter(rconn) == 2
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await rconn.execute("UPDATE snapshot_changes SET n = 0")
        finally:
            await wconn.close()
            await rconn.close()
    assert [n["n"] for n in await heard.count(2, "the writer's announcements")] == [1, 2]


# ---------------------------------------------------------------------- SnapshotTexts


class Counting:
    """A connection that counts the statements sent through it."""

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self.conn = conn
        self.sent: list[str] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.sent.append(sql)
        return await self.conn.fetch(sql, *args)


async def page_names(
    conn: asyncpg.Connection[Any], texts: SnapshotTexts, counting: Counting
) -> list[str]:
    """The user names on course 1's first page, as the API reads them."""
    rows, changes = await course_page_rows(conn, 1, [1], Window(), None, 10)
    linked = await texts.linked(counting, referenced(rows), [1], changes)  # type: ignore[arg-type]
    return [orjson.loads(linked.users[u])["name"] for u in sorted(linked.users)]


async def apply_all(texts: SnapshotTexts, heard: Heard, upto: int) -> None:
    """Apply the announcements heard, in order, up to counter `upto` (the listener would)."""
    notes = await heard.count(upto, f"announcements up to {upto}")
    for note in notes:
        parsed = parse(orjson.dumps(note).decode())
        assert parsed is not None
        if note["n"] > texts.received:
            texts.announced(*parsed)


async def test_a_page_read_after_an_unapplied_change_checks_versions_and_shows_it(
    conn: asyncpg.Connection[Any], heard: Heard
) -> None:
    await write_batch(conn, [event(T0, course=1, user=7, name="Ann")], cache=PartitionCache())
    texts = SnapshotTexts()
    texts.started(await counter(conn))  # listening from here, as the API's listener would
    counting = Counting(conn)
    assert await page_names(conn, texts, counting) == ["Ann"]
    assert (texts.trusted, len(counting.sent)) == (1, 1)  # the texts only, no version check
    assert await page_names(conn, texts, counting) == ["Ann"]
    assert (texts.trusted, len(counting.sent)) == (2, 1)  # all kept: no snapshot statement
    # A writer commits; its announcement is delivered here but NOT applied yet (the listener
    # is held): the page sees the new counter, so it must not trust the kept text.
    await write_batch(conn, [event(T0 + timedelta(1), course=1, user=7, name="Bo")], cache=None)
    await heard.count(3, "the update's announcement (users only: the course is the same)")
    assert await page_names(conn, texts, counting) == ["Bo"]
    assert texts.checked == 1 and "xmin AS version FROM" in counting.sent[1]
    # Applied: trusted again, and the new name is what is kept.
    await apply_all(texts, heard, await counter(conn))
    assert await page_names(conn, texts, counting) == ["Bo"]
    assert texts.trusted == 3
    # Listening lost: every page checks, whatever was applied.
    texts.stopped()
    assert await page_names(conn, texts, counting) == ["Bo"]
    assert texts.checked == 2


async def test_a_read_older_than_the_applied_announcements_is_not_kept(
    conn: asyncpg.Connection[Any], heard: Heard
) -> None:
    await write_batch(conn, [event(T0, course=1, user=7, name="Ann")], cache=PartitionCache())
    n = await counter(conn)
    texts = SnapshotTexts()
    # As on a replica that lags the primary's announcements: this process has applied changes
    # the store it reads from does not hold yet.
    texts.started(n + 5)
    counting = Counting(conn)
    rows, changes = await course_page_rows(conn, 1, [1], Window(), None, 10)
    assert changes == n and texts.trusts(changes)
    linked = await texts.linked(counting, referenced(rows), [1], changes)  # type: ignore[arg-type]
    assert orjson.loads(linked.users[7])["name"] == "Ann"
    assert len(texts) == 0  # read at n < n + 5: nothing kept
    # Once the store's counter is not behind: kept.
    texts.stopped()
    texts.started(n)
    await texts.linked(counting, Refs([1], [7]), [1], n)  # type: ignore[arg-type]
    assert len(texts) == 2


async def test_an_announced_id_is_read_again_and_a_gap_forgets_everything(
    conn: asyncpg.Connection[Any],
) -> None:
    await write_batch(
        conn, [event(T0, course=1, user=7), event(T0, course=1, user=8)], cache=PartitionCache()
    )
    n = await counter(conn)
    texts = SnapshotTexts()
    texts.started(n)
    counting = Counting(conn)
    await texts.linked(counting, Refs([1], [7, 8]), [1], n)  # type: ignore[arg-type]
    assert len(texts) == 3
    texts.announced(n + 1, {"u": [7]})
    assert len(texts) == 2 and texts.received == n + 1
    texts.announced(n + 1, {"u": [8]})  # the same n again: its ids still go
    assert len(texts) == 1
    texts.announced(n + 3, {"u": []})  # n + 2 never came: nothing is vouched for
    assert len(texts) == 0 and texts.received == n + 3
