"""The compound document (docs/api.md#response-document), rendered from stored rows; pure logic."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from course_audit.api.render import (
    SnapshotCache,
    canvas_object,
    render_document,
    render_events,
    render_time,
    stringify_ids,
    wants_string_ids,
)
from course_audit.model import EVENT_RECORDS, Kind
from course_audit.store.queries import EventRow, Linked, Refs, referenced

T = datetime(2026, 3, 1, 21, 0, 0, 999000, tzinfo=UTC)


def text(value: dict[str, Any]) -> str:
    """A snapshot as stored JSON text (jsonb's output has spaces after ':' and ',')."""
    return json.dumps(value)


def row(event_type: str = "updated", **fields: Any) -> EventRow:
    values: dict[str, Any] = {
        "event_id": "e2b76430-27a5-0131-3ca1-48e0eb13f29b",
        "created_at": T,
        "seq": 1,
        "event_type": event_type,
        "event_source": "api",
        "course_id": 12345,
        "user_id": 7,
        "page_view_id": "pv-1",
        "sis_batch_id": None,
        "related_course_id": None,
        "event_data": "{}",
    }
    values.update(fields)
    return EventRow(**values)


def test_created_at_is_whole_seconds_with_z_for_utc() -> None:
    assert render_time(T, UTC, utc=True) == "2026-03-01T21:00:00Z"


def test_created_at_in_another_zone_has_its_offset() -> None:
    assert render_time(T, ZoneInfo("America/Denver"), utc=False) == "2026-03-01T14:00:00-07:00"
    # A zone that happens to be at +00:00 is not UTC: it keeps its offset.
    assert render_time(T, ZoneInfo("Europe/London"), utc=False) == "2026-03-01T21:00:00+00:00"


def test_event_keys_and_links_in_order() -> None:
    event = render_events([row(event_data='{"name": ["A", "B"]}', sis_batch_id=77)], UTC, utc=True)[
        0
    ]
    assert list(event) == ["id", "created_at", "event_type", "event_source", "event_data", "links"]
    assert event["links"] == {"course": 12345, "page_view": "pv-1", "user": 7, "sis_batch": 77}
    assert list(event["links"]) == ["course", "page_view", "user", "sis_batch"]
    assert event["event_data"] == {"name": ["A", "B"]}


@pytest.mark.parametrize("event_type", ["copied_from", "copied_to", "reset_from", "reset_to"])
def test_copy_and_reset_links_name_the_related_course_first(event_type: str) -> None:
    event = render_events([row(event_type, related_course_id=456)], UTC, utc=True)[0]
    assert list(event["links"]) == [event_type, "course", "page_view", "user", "sis_batch"]
    assert event["links"][event_type] == 456
    assert orjson.loads(orjson.dumps(event["event_data"])) == {}


@pytest.mark.parametrize(
    "event_type", [t for t in EVENT_RECORDS if not t.startswith(("copied", "reset"))]
)
def test_other_types_have_only_the_four_links(event_type: str) -> None:
    event = render_events([row(event_type, user_id=None, page_view_id=None)], UTC, utc=True)[0]
    assert event["links"] == {"course": 12345, "page_view": None, "user": None, "sis_batch": None}


def test_empty_document_is_complete() -> None:
    body = render_document([], Linked(), Refs(), "https://a.example", UTC, utc=True)
    assert body == (
        b'{"links":{"events.course":"https://a.example/api/v1/courses/{events.course}",'
        b'"events.user":null,"events.sis_batch":null},"events":[],'
        b'"linked":{"page_views":[],"courses":[],"users":[]}}'
    )


def test_linked_each_once_in_order_of_reference_with_canvas_field_order() -> None:
    events = [
        row("copied_from", related_course_id=2, user_id=8, page_view_id="pv-2"),
        row("updated", course_id=12345, user_id=8, page_view_id="pv-1"),
        row("updated", course_id=2, user_id=None, page_view_id=None),
    ]
    refs = referenced(events)
    assert refs == Refs([12345, 2], [8], ["pv-2", "pv-1"])
    course = {"root_account_id": 1, "name": "Bio", "id": 12345, "account_id": 3, "zz_new": 1}
    linked = Linked(
        courses={2: text({"id": 2, "account_id": 3, "root_account_id": 1}), 12345: text(course)},
        users={8: text({"sortable_name": "Doe, Jo", "id": 8, "name": "Jo Doe"})},
        page_views={"pv-1": text({"url": "/x", "id": "pv-1"})},  # pv-2 has no snapshot: left out
    )
    doc = orjson.loads(render_document(events, linked, refs, "http://h", UTC, utc=True))
    assert list(doc) == ["links", "events", "linked"]
    assert list(doc["linked"]) == ["page_views", "courses", "users"]
    assert [c["id"] for c in doc["linked"]["courses"]] == [12345, 2]
    assert list(doc["linked"]["courses"][0]) == [
        "id",
        "name",
        "account_id",
        "root_account_id",
        "zz_new",
    ]
    assert list(doc["linked"]["users"][0]) == ["id", "name", "sortable_name"]
    assert doc["linked"]["page_views"] == [{"id": "pv-1", "url": "/x"}]


def test_nulls_the_store_holds_are_kept() -> None:
    assert canvas_object({"id": 1, "sis_course_id": None}, ("id", "sis_course_id")) == {
        "id": 1,
        "sis_course_id": None,
    }


def test_string_ids() -> None:
    value = {
        "id": 1,
        "account_id": 2,
        "root_account_id": 3,
        "enrollment_term_id": None,
        "sis_course_id": "SIS-1",
        "is_public": True,
        "paid": 5,
        "idx": 4,
        "user_ids": [1, 2],
        "nested": [{"course_id": 9, "id": False}],
    }
    assert stringify_ids(value) == {
        "id": "1",
        "account_id": "2",
        "root_account_id": "3",
        "enrollment_term_id": None,
        "sis_course_id": "SIS-1",
        "is_public": True,
        "paid": 5,
        "idx": 4,
        "user_ids": ["1", "2"],
        "nested": [{"course_id": "9", "id": False}],
    }


def test_string_ids_touch_only_linked() -> None:
    events = [row("copied_to", related_course_id=2)]
    linked = Linked(
        courses={12345: text({"id": 12345, "account_id": 3})}, users={7: text({"id": 7})}
    )
    body = render_document(events, linked, referenced(events), "h", UTC, utc=True, string_ids=True)
    doc = orjson.loads(body)
    assert doc["events"][0]["links"]["course"] == 12345
    assert doc["events"][0]["links"]["copied_to"] == 2
    assert doc["linked"]["courses"] == [{"id": "12345", "account_id": "3"}]
    assert doc["linked"]["users"] == [{"id": "7"}]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("application/json", False),
        ("application/json+canvas-string-ids", True),
        ("application/json+canvas-string-ids, application/json;q=0.9", True),
    ],
)
def test_wants_string_ids(accept: str | None, expected: bool) -> None:
    assert wants_string_ids(accept) is expected


def test_document_created_at_in_utc_is_whole_seconds_with_z() -> None:
    events = [row(created_at=T), row(created_at=datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC))]
    body = render_document(events, Linked(), referenced(events), "h", UTC, utc=True)
    assert [e["created_at"] for e in orjson.loads(body)["events"]] == [
        "2026-03-01T21:00:00Z",
        "0001-01-01T00:00:00Z",
    ]


@pytest.mark.parametrize(
    ("zone", "when", "expected"),
    [
        ("America/Denver", T, "2026-03-01T14:00:00-07:00"),
        ("Europe/London", T, "2026-03-01T21:00:00+00:00"),
        # Local mean time before 1883: an offset with seconds, written as isoformat does.
        ("America/Denver", datetime(1850, 1, 1, tzinfo=UTC), "1849-12-31T17:00:04-06:59:56"),
    ],
)
def test_document_created_at_in_another_zone_keeps_its_offset(
    zone: str, when: datetime, expected: str
) -> None:
    events = [row(created_at=when)]
    body = render_document(events, Linked(), referenced(events), "h", ZoneInfo(zone), utc=False)
    assert orjson.loads(body)["events"][0]["created_at"] == expected


def test_document_is_compact_and_event_data_is_the_stored_json() -> None:
    data = '{"name": ["A: 1", "B, 2"], "is_public": [false, true], "n": [1.5, null]}'
    events = [row(event_data=data)]
    linked = Linked(users={7: text({"name": "Jo", "id": 7})})
    body = render_document(events, linked, referenced(events), "h", UTC, utc=True)
    assert b'"event_data":{"name":["A: 1","B, 2"],"is_public":[false,true],"n":[1.5,null]}' in body
    assert b'"users":[{"id":7,"name":"Jo"}]' in body


def test_snapshot_cache_renders_again_when_the_snapshot_changes() -> None:
    cache = SnapshotCache()
    events = [row(user_id=7)]
    refs = referenced(events)

    def users(snapshot: dict[str, Any], string_ids: bool = False) -> Any:
        linked = Linked(users={7: text(snapshot)})
        body = render_document(events, linked, refs, "h", UTC, True, string_ids, cache)
        return orjson.loads(body)["linked"]["users"]

    assert users({"name": "Jo", "id": 7}) == [{"id": 7, "name": "Jo"}]
    assert users({"name": "Jo", "id": 7}) == [{"id": 7, "name": "Jo"}]
    assert len(cache) == 1  # the same text (another string object) is rendered once
    assert users({"name": "Joan", "id": 7}) == [{"id": 7, "name": "Joan"}]  # never stale
    assert users({"name": "Joan", "id": 7}, string_ids=True) == [{"id": "7", "name": "Joan"}]
    assert users({"name": "Joan", "id": 7}) == [{"id": 7, "name": "Joan"}]
    # "Jo" and "Joan" as plain ids, "Joan" with string ids: the old text is never looked up
    # again and goes when its kind is full.
    assert len(cache) == 3


def test_snapshot_cache_keeps_kinds_apart_and_is_bounded() -> None:
    cache = SnapshotCache(size=3)
    courses = cache.pick(Kind.COURSE, [1], {1: text({"id": 1, "name": "C"})}, False)
    users = cache.pick(Kind.USER, [1], {1: text({"id": 1, "name": "U"})}, False)
    assert orjson.dumps(courses + users) == b'[{"id":1,"name":"C"},{"id":1,"name":"U"}]'
    texts = {1: text({"id": 1, "name": "C"}), 2: text({"id": 2}), 3: text({"id": 3})}
    picked = cache.pick(Kind.COURSE, [1, 2, 3], texts, False)
    assert orjson.dumps(picked) == b'[{"id":1,"name":"C"},{"id":2},{"id":3}]'
    assert picked[0] is courses[0]  # the same text: not rendered again
    # Four objects for room for three: the oldest course went (courses held the most).
    assert len(cache) == 3
    assert cache.pick(Kind.USER, [1], {1: text({"id": 1, "name": "U"})}, False)[0] is users[0]
    assert cache.pick(Kind.COURSE, [3], texts, False)[0] is picked[2]
    again = cache.pick(Kind.COURSE, [1], texts, False)
    assert again[0] is not picked[0]  # rendered anew: it had gone
    assert len(cache) == 3
