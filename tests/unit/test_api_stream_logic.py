"""Pure pieces of the live tail: the notification payload, the tail query's shape, a
subscriber's bounded queue and its duplicate check, merging notifications."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from multidict import MultiDict

from course_audit.api.listen import Listener
from course_audit.api.params import parse_filters
from course_audit.api.stream import QUEUE_MAX, Group, Pending, StreamHub, Subscriber
from course_audit.config import Settings
from course_audit.runtime.metrics import Metrics
from course_audit.store.queries import Cursor, Filters
from course_audit.store.tail import Announcement, TailSpec, parse_announcement, tail_sql

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def test_announcement_with_ids() -> None:
    note = parse_announcement('{"from": 1772359200, "lo": 5, "hi": 9, "c": [1, 2], "a": [7]}')
    assert note == Announcement(T0, 5, 9, frozenset({1, 2}), frozenset({7}))


def test_announcement_too_long_for_ids_names_everything() -> None:
    note = parse_announcement('{"from": 1772359200, "lo": 5, "hi": 9, "all": true}')
    assert note == Announcement(T0, 5, 9, None, None)


@pytest.mark.parametrize("payload", ["", "[]", "{}", '{"from": "x", "lo": 1, "hi": 2}', "nope"])
def test_unreadable_announcements(payload: str) -> None:
    assert parse_announcement(payload) is None


def test_tail_sql_numbers_its_parameters_in_order() -> None:
    sql, n = tail_sql("course_id", TailSpec(seq_range=True, after=True, late=True, page=True))
    assert n == 11
    assert "seq BETWEEN $4 AND $5" in sql
    assert "((created_at, seq) > ($6, $7) OR seq > $8)" in sql
    assert "(created_at, seq) > ($9, $10)" in sql
    assert sql.endswith("ORDER BY created_at, seq LIMIT $11")
    plain, n = tail_sql("account_id", TailSpec())
    assert n == 4
    assert "account_id = $1 AND root_account_id = ANY($2::bigint[]) AND created_at >= $3" in plain


def test_tail_sql_numbers_the_filters_after_the_keys_and_before_the_limit() -> None:
    filters = Filters.of(["updated", "created"], 7, "sis")
    sql, n = tail_sql("course_id", TailSpec(after=True, page=True), filters=filters)
    assert n == 11
    assert (
        "(created_at, seq) > ($4, $5) AND (created_at, seq) > ($6, $7)"
        " AND event_type = ANY($8::text[]) AND user_id = $9 AND event_source = $10"
        " ORDER BY created_at, seq LIMIT $11"
    ) in sql
    one, n = tail_sql("account_id", TailSpec(seq_range=True), filters=Filters(("updated",)))
    assert n == 7
    assert one.endswith(
        "seq BETWEEN $4 AND $5 AND event_type = $6 ORDER BY created_at, seq LIMIT $7"
    )
    assert tail_sql("course_id", TailSpec(), filters=Filters()) == tail_sql("course_id", TailSpec())


def test_tail_sql_takes_extra_clauses_and_refuses_other_columns() -> None:
    sql, _ = tail_sql("course_id", TailSpec(), ["event_type = 'updated'"])
    assert "created_at >= $3 AND event_type = 'updated' ORDER BY" in sql
    with pytest.raises(ValueError):
        tail_sql("user_id", TailSpec())


def _subscriber() -> Subscriber:
    group = Group("course_id", 1, (1,), Cursor(T0, 10), 10)
    request: Any = object()
    return Subscriber(group, b"digest", request)


def _items(n: int, first_seq: int) -> list[tuple[datetime, int, bytes]]:
    return [(T0 + timedelta(seconds=i), first_seq + i, b"m") for i in range(n)]


async def test_a_full_queue_is_dropped_and_flagged_for_catch_up() -> None:
    sub = _subscriber()
    assert sub.offer(_items(QUEUE_MAX - 1, 100))
    assert len(sub.queue) == QUEUE_MAX - 1 and sub.wake.is_set()
    assert not sub.offer(_items(2, 5000))
    assert sub.overflowed and len(sub.queue) == 0
    # Flagged already: more is not queued until the stream has caught up.
    assert sub.offer(_items(1, 6000))
    assert len(sub.queue) == 0
    await asyncio.sleep(0)


def test_fresh_skips_what_was_sent_and_keeps_the_newest_key() -> None:
    sub = _subscriber()
    assert sub.last == Cursor(T0, 10)
    assert sub.fresh(T0 + timedelta(seconds=5), 20)
    assert not sub.fresh(T0 + timedelta(seconds=5), 20)
    assert sub.fresh(T0 - timedelta(hours=1), 21)  # late: sent, but not the newest key
    assert sub.last == Cursor(T0 + timedelta(seconds=5), 20)


def test_pending_merges_notifications() -> None:
    pending = Pending()
    assert not pending
    pending.add(Announcement(T0, 5, 9, frozenset({1}), frozenset({7})), 2.0)
    pending.add(Announcement(T0 - timedelta(seconds=3), 12, 15, frozenset({2}), frozenset()), 1.0)
    assert (pending.since, pending.lo, pending.hi) == (T0 - timedelta(seconds=3), 5, 15)
    assert pending.received == 1.0
    course_2 = Group("course_id", 2, (1,), None, 0)
    account_7 = Group("account_id", 7, (1,), None, 0)
    account_8 = Group("account_id", 8, (1,), None, 0)
    assert pending.names(course_2) and pending.names(account_7)
    assert not pending.names(account_8)
    pending.add(Announcement(T0, 20, 21, None, None), 3.0)
    assert pending.names(account_8)


def test_streams_with_the_same_filters_share_a_group_and_others_do_not() -> None:
    hub = StreamHub(Settings(), Metrics(), UTC, True, Listener("postgresql://unused"))
    request: Any = object()
    one = parse_filters(MultiDict([("event_type", "published"), ("event_type", "concluded")]))
    same = parse_filters(MultiDict([("event_type", "concluded"), ("event_type", "published")]))
    user = parse_filters(MultiDict([("user_id", "0042"), ("event_source", "sis")]))
    a = hub.join("course_id", 5, [2, 1], None, b"d", request, one)
    b = hub.join("course_id", 5, [1, 2], None, b"d", request, same)
    c = hub.join("course_id", 5, [1, 2], None, b"d", request, user)
    d = hub.join("course_id", 5, [1, 2], None, b"d", request)
    assert a.group is b.group
    assert len({id(a.group), id(c.group), id(d.group)}) == 3
    assert c.group.filters == Filters(user_id=42, event_source="sis")
    assert d.group.filters == Filters()
    assert hub.group_of("course_id", 5, [1, 2], Filters(("concluded", "published"))) is a.group
    assert hub.group_of("course_id", 5, [1, 2]) is d.group
    for sub in (a, b, c, d):
        hub.leave(sub)
    assert hub.groups == {} and hub.count == 0
