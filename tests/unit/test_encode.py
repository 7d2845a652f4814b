"""Producer-side encoding: JSON -> datum -> framed bytes, and the errors producers see."""

from __future__ import annotations

import json
from typing import Any

import pytest

from course_audit.ingest.decode import Decoder
from course_audit.ingest.validate import to_event
from course_audit.model import EVENT_RECORDS, RELATED_COURSE_TYPES, Decoded, Event
from course_audit.produce.encode import (
    Encoder,
    EventJsonError,
    avro_binary,
    event_from_json,
    record_name_of,
)
from course_audit.wire.framing import ConfluentHeader, SingleObjectHeader, parse_header
from course_audit.wire.schemas import builtin_catalog

EVENT_ID = "e2b76430-27a5-4131-9ca1-48e0eb13f29b"


def sample(event_type: str, **overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "event_type": event_type,
        "event_id": EVENT_ID,
        "created_at": "2024-05-01T12:00:00Z",
        "event_source": "manual",
        "course": {"id": 101, "account_id": 7, "root_account_id": 1},
    }
    if event_type in ("created", "updated"):
        obj["changes"] = {"name": [None, "Biology"]}
    if event_type in RELATED_COURSE_TYPES:
        obj[event_type] = {"id": 202, "account_id": 7, "root_account_id": 1}
    obj.update(overrides)
    return obj


def error_of(obj: Any) -> str:
    with pytest.raises(EventJsonError) as info:
        event_from_json(obj)
    assert isinstance(info.value, ValueError)
    return str(info.value)


@pytest.mark.parametrize("event_type", list(EVENT_RECORDS))
def test_every_event_type_from_json_to_bytes_and_back(event_type: str) -> None:
    name, datum = event_from_json(sample(event_type))
    assert name == EVENT_RECORDS[event_type]
    assert datum["created_at"] == 1714564800000
    assert datum["user"] is None and datum["page_view"] is None and datum["sis_batch_id"] is None
    assert datum["course"]["name"] is None  # absent nullable fields become null
    encoder = Encoder()
    value = encoder.encode_single_object(event_type, datum)
    header = parse_header(value, confluent=False)
    reader = builtin_catalog().reader(name)
    assert reader is not None and header == SingleObjectHeader(reader.fingerprint)
    decoded = Decoder(builtin_catalog()).decode_sync(value)
    assert isinstance(decoded, Decoded) and decoded.datum == datum
    event = to_event(decoded)
    assert isinstance(event, Event) and event.event_type == event_type


def test_record_name_and_event_type_are_both_accepted() -> None:
    encoder = Encoder()
    _, datum = event_from_json(sample("deleted"))
    assert encoder.encode_single_object("deleted", datum) == encoder.encode_single_object(
        "course_audit.CourseDeleted", datum
    )
    assert record_name_of("reset_to") == "course_audit.CourseResetTo"
    with pytest.raises(EventJsonError, match="unknown event type 'nope'"):
        encoder.encode_single_object("nope", datum)


def test_confluent_encoding() -> None:
    _, datum = event_from_json(sample("updated"))
    value = Encoder().encode_confluent(77, "updated", datum)
    assert value[:5] == b"\x00\x00\x00\x00\x4d"
    assert parse_header(value, confluent=True) == ConfluentHeader(77)
    assert value[5:] == avro_binary(builtin_catalog().schema("course_audit.CourseUpdated"), datum)


def test_schema_json_is_self_contained_and_documented() -> None:
    schema = json.loads(Encoder().schema_json("copied_from"))
    assert schema["name"] == "course_audit.CourseCopiedFrom"
    course_field = next(f for f in schema["fields"] if f["name"] == "course")
    assert course_field["type"]["type"] == "record"  # the named type is inlined
    assert not any(k.startswith("__") for k in schema)


@pytest.mark.parametrize(
    "created_at",
    ["2024-05-01T12:00:00Z", "2024-05-01T14:00:00+02:00", "2024-05-01T12:00:00", 1714564800000],
)
def test_created_at_forms(created_at: Any) -> None:
    _, datum = event_from_json(sample("published", created_at=created_at))
    assert datum["created_at"] == 1714564800000


def test_change_pairs_in_both_shapes_and_json_values() -> None:
    changes = {
        "name": ["Bio", "Biology"],
        "is_public": {"old": False, "new": True},
        "tab_configuration": [[], [{"id": 0}, {"id": 1, "hidden": True}]],
        "grade_weight": [1, 2.5],
    }
    _, datum = event_from_json(sample("updated", changes=changes))
    assert datum["changes"] == {
        "name": {"old": "Bio", "new": "Biology"},
        "is_public": {"old": False, "new": True},
        "tab_configuration": {"old": "[]", "new": '[{"id":0},{"id":1,"hidden":true}]'},
        "grade_weight": {"old": 1, "new": 2.5},
    }


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ([1, 2], "expected a JSON object, got an array"),
        ({k: v for k, v in sample("updated").items() if k != "event_type"}, "event_type: missing"),
        (
            {**sample("updated"), "event_type": "renamed"},
            "event_type: unknown event type 'renamed'",
        ),
        (sample("updated", event_id="nope"), "event_id: 'nope' is not a UUID"),
        (sample("updated", created_at="yesterday"), "created_at: 'yesterday' is neither"),
        (sample("updated", created_at=True), "created_at: True is neither"),
        (sample("deleted", course=None), "course: expected a course_audit.Course object, got null"),
        (
            sample("deleted", course={"id": "12x", "account_id": 7, "root_account_id": 1}),
            "course.id: expected an integer, got a string ('12x')",
        ),
        (
            sample("deleted", course={"id": 1, "account_id": 7}),
            "course.root_account_id: missing (required, an integer)",
        ),
        (
            sample("deleted", course={"id": 1, "account_id": 7, "root_account_id": 1, "nmae": "x"}),
            "course.nmae: unknown field of course_audit.Course (did you mean 'name'?)",
        ),
        (sample("deleted", user={"name": "Jane"}), "user.id: missing"),
        (sample("deleted", user="jane"), "user: expected null or a course_audit.User object"),
        (
            sample("deleted", sis_batch_id=1.5),
            "sis_batch_id: expected null or an integer, got a number (1.5)",
        ),
        (sample("deleted", colour="red"), "colour: unknown field of course_audit.CourseDeleted"),
        (
            {**sample("copied_from"), "copied_from": None},
            "copied_from: expected a course_audit.Course",
        ),
        ({k: v for k, v in sample("reset_to").items() if k != "reset_to"}, "reset_to: missing"),
        (sample("updated", changes=[1]), "changes: expected an object, got an array"),
        (
            sample("updated", changes={"name": ["a", "b", "c"]}),
            "changes.name: a change pair is [old, new], got 3 values",
        ),
        (sample("updated", changes={"name": "b"}), "changes.name: expected [old, new]"),
        (
            sample("updated", changes={"name": [b"x", "y"]}),
            "changes.name.old: expected null or a boolean",
        ),
        (
            sample("created", created_source=5),
            "created_source: expected null or a string, got an integer (5)",
        ),
    ],
)
def test_json_errors_name_the_field(obj: Any, expected: str) -> None:
    message = error_of(obj)
    assert expected in message, message


def test_event_source_is_required() -> None:
    obj = sample("concluded")
    del obj["event_source"]
    assert error_of(obj) == "event_source: missing (required, a string)"


def test_encoder_rejects_a_datum_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        Encoder().encode_single_object("updated", {"event_id": EVENT_ID})
