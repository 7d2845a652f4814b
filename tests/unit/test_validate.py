"""Semantic validation and normalisation of decoded events (docs/messages.md#validation)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from course_audit.ingest.validate import is_blank, to_event, truncate
from course_audit.model import (
    EVENT_RECORDS,
    RELATED_COURSE_TYPES,
    Decoded,
    ErrorCode,
    Event,
    Rejection,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
EVENT_ID = "e2b76430-27a5-4131-9ca1-48e0eb13f29b"
MS_2000 = 946684800000


def course(**overrides: Any) -> dict[str, Any]:
    return {"id": 101, "account_id": 7, "root_account_id": 1, "name": "Biology", **overrides}


def decoded(event_type: str, **overrides: Any) -> Decoded:
    datum: dict[str, Any] = {
        "event_id": EVENT_ID,
        "created_at": 1714564800123,  # 2024-05-01T12:00:00.123Z
        "event_source": "sis",
        "course": course(),
        "user": {"id": 42, "name": "Jane Doe"},
        "page_view": {"id": "3f1c7a52-8a3e-4b5e-9d1e-1f2a3b4c5d6e"},
        "sis_batch_id": 9,
    }
    if event_type in ("created", "updated"):
        datum["changes"] = {"name": {"old": "Bio", "new": "Biology"}}
    if event_type == "created":
        datum["created_source"] = None
    if event_type in RELATED_COURSE_TYPES:
        datum[event_type] = course(id=202, name="Copy")
    datum.update(overrides)
    return Decoded(EVENT_RECORDS[event_type], datum)


def ok(result: Event | Rejection) -> Event:
    assert isinstance(result, Event), result
    return result


def rejected(result: Event | Rejection, code: ErrorCode, *words: str) -> Rejection:
    assert isinstance(result, Rejection), result
    assert result.code is code, result
    for word in words:
        assert word in result.message, result.message
    return result


@pytest.mark.parametrize("event_type", list(EVENT_RECORDS))
def test_a_valid_event_of_every_type(event_type: str) -> None:
    event = ok(to_event(decoded(event_type), now=NOW))
    assert event.event_id == uuid.UUID(EVENT_ID)
    assert event.created_at == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert event.created_at.utcoffset() == timedelta(0)
    assert event.event_type == event_type
    assert event.event_source == "sis"
    assert event.course_id == 101 and event.course["name"] == "Biology"
    assert event.user == {"id": 42, "name": "Jane Doe"}
    assert event.page_view == {"id": "3f1c7a52-8a3e-4b5e-9d1e-1f2a3b4c5d6e"}
    assert event.sis_batch_id == 9
    if event_type in ("created", "updated"):
        assert event.event_data == {"name": ["Bio", "Biology"]}
    else:
        assert event.event_data == {}
    if event_type in RELATED_COURSE_TYPES:
        assert event.related_course_id == 202
    else:
        assert event.related_course is None


def test_created_source_joins_event_data_only_for_created_and_when_present() -> None:
    created = ok(to_event(decoded("created", created_source="api"), now=NOW))
    assert created.event_data == {"name": ["Bio", "Biology"], "created_source": "api"}
    assert "created_source" not in ok(to_event(decoded("created"), now=NOW)).event_data
    updated = ok(to_event(decoded("updated", created_source="api"), now=NOW))
    assert updated.event_data == {"name": ["Bio", "Biology"]}


def test_optional_parts_may_be_null() -> None:
    event = ok(to_event(decoded("published", user=None, page_view=None, sis_batch_id=None)))
    assert event.user is None and event.page_view is None and event.sis_batch_id is None


@pytest.mark.parametrize(
    "value",
    [
        "not-a-uuid",
        "",
        None,
        42,
        "e2b7643027a541319ca148e0eb13f29b",  # no dashes
        "{e2b76430-27a5-4131-9ca1-48e0eb13f29b}",
        "e2b76430-27a5-4131-9ca1-48e0eb13f29b ",
        "00000000-0000-0000-0000-000000000000",
    ],
)
def test_invalid_event_id(value: Any) -> None:
    rejected(
        to_event(decoded("updated", event_id=value), now=NOW),
        ErrorCode.INVALID_EVENT_ID,
        "event_id",
    )


def test_event_id_is_case_insensitive_and_may_already_be_a_uuid() -> None:
    upper = ok(to_event(decoded("deleted", event_id=EVENT_ID.upper()), now=NOW))
    assert upper.event_id == uuid.UUID(EVENT_ID)
    as_uuid = ok(to_event(decoded("deleted", event_id=uuid.UUID(EVENT_ID)), now=NOW))
    assert as_uuid.event_id == uuid.UUID(EVENT_ID)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"id": 0}, "course.id"),
        ({"id": -5}, "course.id"),
        ({"account_id": 0}, "course.account_id"),
        ({"root_account_id": -1}, "course.root_account_id"),
        ({"root_account_id": None}, "course.root_account_id is missing"),
        ({"id": True}, "course.id"),
        ({"id": 1.5}, "course.id"),
        ({"account_id": "7"}, "course.account_id"),
    ],
)
def test_invalid_course(overrides: dict[str, Any], field: str) -> None:
    result = to_event(decoded("concluded", course=course(**overrides)), now=NOW)
    rejected(result, ErrorCode.INVALID_COURSE, field)


def test_missing_course() -> None:
    rejected(
        to_event(decoded("concluded", course=None), now=NOW),
        ErrorCode.INVALID_COURSE,
        "course is missing",
    )


def test_created_at_bounds() -> None:
    def at(ms: int) -> Event | Rejection:
        return to_event(decoded("restored", created_at=ms), now=NOW)

    assert ok(at(MS_2000)).created_at == datetime(2000, 1, 1, tzinfo=UTC)
    rejected(
        at(MS_2000 - 1),
        ErrorCode.INVALID_CREATED_AT,
        "created_at",
        "1999-12-31T23:59:59.999Z",
        "2000-01-01",
    )
    limit = int((NOW + timedelta(days=1)).timestamp() * 1000)
    assert ok(at(limit)).created_at == NOW + timedelta(days=1)
    rejected(at(limit + 1), ErrorCode.INVALID_CREATED_AT, "one day")
    rejected(at(2**62), ErrorCode.INVALID_CREATED_AT, str(2**62))  # no overflow
    rejected(at(-(2**62)), ErrorCode.INVALID_CREATED_AT)


def test_created_at_keeps_its_milliseconds_and_each_now_gets_its_own_bound() -> None:
    assert ok(to_event(decoded("restored"), now=NOW)).created_at == datetime(
        2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC
    )
    # The upper bound is computed once per `now` (a batch shares one): another `now`, earlier
    # or later, must not be judged by the bound of the last.
    limit = int((NOW + timedelta(days=1)).timestamp() * 1000)
    ok(to_event(decoded("restored", created_at=limit), now=NOW))
    earlier = NOW - timedelta(hours=1)
    rejected(
        to_event(decoded("restored", created_at=limit), now=earlier),
        ErrorCode.INVALID_CREATED_AT,
        "one day",
    )
    ok(to_event(decoded("restored", created_at=limit), now=NOW))


def test_created_at_may_already_be_a_datetime() -> None:
    when = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)
    assert ok(to_event(decoded("claimed", created_at=when), now=NOW)).created_at == when
    rejected(
        to_event(decoded("claimed", created_at=datetime(1999, 1, 1, tzinfo=UTC)), now=NOW),
        ErrorCode.INVALID_CREATED_AT,
    )
    rejected(
        to_event(decoded("claimed", created_at="2024-05-01"), now=NOW), ErrorCode.INVALID_CREATED_AT
    )


def test_now_defaults_to_the_clock() -> None:
    soon = int((datetime.now(UTC) + timedelta(hours=23)).timestamp() * 1000)
    ok(to_event(decoded("claimed", created_at=soon)))
    later = int((datetime.now(UTC) + timedelta(hours=25)).timestamp() * 1000)
    rejected(to_event(decoded("claimed", created_at=later)), ErrorCode.INVALID_CREATED_AT)


@pytest.mark.parametrize("event_type", ["created", "updated"])
def test_empty_changes(event_type: str) -> None:
    rejected(
        to_event(decoded(event_type, changes={}), now=NOW), ErrorCode.EMPTY_CHANGES, event_type
    )
    blank = {
        "a": {"old": None, "new": None},
        "b": {"old": "", "new": None},
        "c": {"old": False, "new": None},
        "d": {"old": False, "new": ""},
        "e": {"old": "  ", "new": "\n"},
    }
    rejected(to_event(decoded(event_type, changes=blank), now=NOW), ErrorCode.EMPTY_CHANGES)


def test_blank_pairs_are_dropped_and_the_rest_kept_in_order() -> None:
    changes = {
        "name": {"old": "Bio", "new": "Biology"},
        "sis_course_id": {"old": None, "new": ""},
        "is_public": {"old": False, "new": True},
        "hide_final_grades": {"old": None, "new": False},
        "grade_weight": {"old": 0, "new": None},
        "end_at": {"old": None, "new": "2024-12-20T00:00:00Z"},
    }
    event = ok(to_event(decoded("updated", changes=changes), now=NOW))
    assert event.event_data == {
        "name": ["Bio", "Biology"],
        "is_public": [False, True],
        "grade_weight": [0, None],  # 0 is not blank
        "end_at": [None, "2024-12-20T00:00:00Z"],
    }
    assert list(event.event_data) == ["name", "is_public", "grade_weight", "end_at"]


def test_long_strings_in_change_pairs_are_truncated() -> None:
    long = "x" * 1500
    changes = {
        "syllabus_body": {"old": long, "new": "y" * 1000},
        "public_description": {"old": None, "new": "z" * 1001},
    }
    event = ok(to_event(decoded("updated", changes=changes), now=NOW))
    old, new = event.event_data["syllabus_body"]
    assert len(old) == 1000 and old == "x" * 997 + "..."
    assert new == "y" * 1000  # exactly 1000: kept whole
    assert event.event_data["public_description"] == [None, "z" * 997 + "..."]


def test_truncate_and_blank_helpers() -> None:
    assert truncate("é" * 2000) == "é" * 997 + "..."
    assert truncate(12345) == 12345 and truncate(None) is None
    assert all(is_blank(v) for v in (None, False, "", " ", "\t\n"))
    assert not any(is_blank(v) for v in (0, 0.0, True, "a", "0", "false"))


@pytest.mark.parametrize("event_type", sorted(RELATED_COURSE_TYPES))
def test_missing_related_course(event_type: str) -> None:
    rejected(
        to_event(decoded(event_type, **{event_type: None}), now=NOW),
        ErrorCode.MISSING_RELATED_COURSE,
        f"{event_type} is missing",
    )
    rejected(
        to_event(decoded(event_type, **{event_type: course(id=0)}), now=NOW),
        ErrorCode.MISSING_RELATED_COURSE,
        f"{event_type}.id",
    )
    rejected(
        to_event(decoded(event_type, **{event_type: course(account_id=-2)}), now=NOW),
        ErrorCode.MISSING_RELATED_COURSE,
        f"{event_type}.account_id",
    )


def test_a_record_that_is_not_an_event() -> None:
    rejected(
        to_event(Decoded("course_audit.Course", {"id": 1}), now=NOW), ErrorCode.NOT_AN_EVENT_TYPE
    )


# ---------------------------------------------------------------- field sizes

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "service" / "course_audit" / "schemas"
#: The documented limits (docs/messages.md#field-sizes), written out, not read from the code.
LIMITS: dict[tuple[str, str], int] = {("page_view", "url"): 8192, ("page_view", "user_agent"): 8192}


def _text_fields(record: str) -> list[str]:
    """The string fields of a built-in record schema (nullable or not)."""
    schema = json.loads((SCHEMA_DIR / f"course_audit.{record}.avsc").read_text())
    return [
        f["name"]
        for f in schema["fields"]
        if f["type"] == "string" or (isinstance(f["type"], list) and "string" in f["type"])
    ]


TEXT_FIELDS = [
    (kind, name)
    for kind, record in (("course", "Course"), ("user", "User"), ("page_view", "PageView"))
    for name in _text_fields(record)
]


def test_every_text_field_of_the_records_is_checked() -> None:
    # A string field added to a schema gets the default limit; this list is what the docs
    # table names, so a new field shows up here first.
    assert len(TEXT_FIELDS) == 12 + 7 + 10


def _with(kind: str, name: str, value: str, event_type: str = "updated") -> Decoded:
    base = decoded(event_type)
    record = dict(base.datum[kind]) | {name: value}
    return Decoded(base.record_name, base.datum | {kind: record})


@pytest.mark.parametrize(("kind", "name"), TEXT_FIELDS)
def test_each_text_field_has_its_limit(kind: str, name: str) -> None:
    limit = LIMITS.get((kind, name), 255)
    ok(to_event(_with(kind, name, "x" * limit), now=NOW))
    rejected(
        to_event(_with(kind, name, "é" * (limit + 1)), now=NOW),  # characters, not bytes
        ErrorCode.FIELD_TOO_LARGE,
    )
    outcome = to_event(_with(kind, name, "x" * (limit + 1)), now=NOW)
    assert outcome == Rejection(
        ErrorCode.FIELD_TOO_LARGE, f"{kind}.{name} is {limit + 1} characters; the limit is {limit}"
    )


def test_a_10_kb_sis_course_id() -> None:
    outcome = to_event(_with("course", "sis_course_id", "S" * 10240), now=NOW)
    assert outcome == Rejection(
        ErrorCode.FIELD_TOO_LARGE, "course.sis_course_id is 10240 characters; the limit is 255"
    )


@pytest.mark.parametrize("event_type", sorted(RELATED_COURSE_TYPES))
def test_the_related_course_is_named_by_its_field(event_type: str) -> None:
    outcome = to_event(_with(event_type, "name", "n" * 300, event_type), now=NOW)
    assert outcome == Rejection(
        ErrorCode.FIELD_TOO_LARGE, f"{event_type}.name is 300 characters; the limit is 255"
    )


def test_envelope_text_and_change_names_have_limits() -> None:
    ok(to_event(decoded("updated", event_source="s" * 255), now=NOW))
    assert to_event(decoded("updated", event_source="s" * 256), now=NOW) == Rejection(
        ErrorCode.FIELD_TOO_LARGE, "event_source is 256 characters; the limit is 255"
    )
    assert to_event(decoded("created", created_source="c" * 300), now=NOW) == Rejection(
        ErrorCode.FIELD_TOO_LARGE, "created_source is 300 characters; the limit is 255"
    )
    long_name = "a" * 256
    rejected(
        to_event(decoded("updated", changes={long_name: {"old": 1, "new": 2}}), now=NOW),
        ErrorCode.FIELD_TOO_LARGE,
        "changes has an attribute name of 256 characters",
        "the limit is 255",
    )
    # Change values are not limited: long strings are cut to 1,000 characters instead.
    long_value = ok(
        to_event(decoded("updated", changes={"n": {"old": None, "new": "v" * 5000}}), now=NOW)
    )
    assert len(long_value.event_data["n"][1]) == 1000


def test_null_text_fields_and_missing_user_are_fine() -> None:
    ok(to_event(decoded("updated", user=None, page_view=None), now=NOW))
    ok(to_event(_with("course", "sis_course_id", None), now=NOW))  # type: ignore[arg-type]
