"""The schema files (docs/messages.md#schemas) and the schema catalog."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import load_schema, to_parsing_canonical_form

from course_audit.model import EVENT_RECORDS, RELATED_COURSE_TYPES
from course_audit.wire.schemas import (
    BUILTIN_SCHEMA_DIR,
    SchemaCatalog,
    SchemaError,
    builtin_catalog,
    schema_fingerprint,
)

SHARED_TYPES = [
    "course_audit.Course",
    "course_audit.User",
    "course_audit.PageView",
    "course_audit.FieldChange",
]
ENVELOPE = [
    "event_id",
    "created_at",
    "event_source",
    "course",
    "user",
    "page_view",
    "sis_batch_id",
]
SPECIFIC = {
    "created": ["changes", "created_source"],
    "updated": ["changes"],
    **{t: [t] for t in RELATED_COURSE_TYPES},
}


def raw(full_name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((BUILTIN_SCHEMA_DIR / f"{full_name}.avsc").read_text())
    return schema


def fields_of(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in schema["fields"]}


def signed_to_le(value: int) -> bytes:
    return (value & (2**64 - 1)).to_bytes(8, "little")


def test_one_file_per_named_type_named_by_full_name() -> None:
    names = sorted(p.stem for p in BUILTIN_SCHEMA_DIR.glob("*.avsc"))
    assert names == sorted([*EVENT_RECORDS.values(), *SHARED_TYPES])
    for name in names:
        schema = raw(name)
        assert f"{schema['namespace']}.{schema['name']}" == name
        assert schema["type"] == "record"


@pytest.mark.parametrize("full_name", [*EVENT_RECORDS.values(), *SHARED_TYPES])
def test_every_file_loads_with_fastavro_load_schema(full_name: str) -> None:
    parsed = load_schema(str(BUILTIN_SCHEMA_DIR / f"{full_name}.avsc"))
    assert isinstance(parsed, dict) and parsed["name"] == full_name


@pytest.mark.parametrize("full_name", [*EVENT_RECORDS.values(), *SHARED_TYPES])
def test_every_record_and_field_has_a_doc(full_name: str) -> None:
    schema = raw(full_name)
    assert len(schema["doc"]) > 20
    for field in schema["fields"]:
        assert len(field.get("doc", "")) > 10, f"{full_name}.{field['name']} has no doc"


@pytest.mark.parametrize("event_type", list(EVENT_RECORDS))
def test_event_records_have_envelope_then_specific_fields(event_type: str) -> None:
    schema = raw(EVENT_RECORDS[event_type])
    names = [f["name"] for f in schema["fields"]]
    assert names == ENVELOPE + SPECIFIC.get(event_type, [])
    fields = fields_of(schema)
    assert fields["event_id"]["type"] == {"type": "string", "logicalType": "uuid"}
    assert fields["created_at"]["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    assert fields["event_source"]["type"] == "string"
    assert fields["course"]["type"] == "course_audit.Course"
    for name, ref in [("user", "course_audit.User"), ("page_view", "course_audit.PageView")]:
        assert fields[name]["type"] == ["null", ref]
        assert fields[name]["default"] is None
    assert fields["sis_batch_id"]["type"] == ["null", "long"]
    assert fields["sis_batch_id"]["default"] is None
    if "changes" in fields:
        assert fields["changes"]["type"] == {"type": "map", "values": "course_audit.FieldChange"}
    if event_type == "created":
        assert fields["created_source"]["type"] == ["null", "string"]
        assert fields["created_source"]["default"] is None
    if event_type in RELATED_COURSE_TYPES:
        assert fields[event_type]["type"] == "course_audit.Course"  # required, not nullable


def test_shared_types_match_the_spec() -> None:
    course = fields_of(raw("course_audit.Course"))
    assert list(course) == [
        "id",
        "account_id",
        "root_account_id",
        "name",
        "course_code",
        "uuid",
        "workflow_state",
        "sis_course_id",
        "integration_id",
        "enrollment_term_id",
        "start_at",
        "end_at",
        "created_at",
        "is_public",
        "time_zone",
        "default_view",
        "license",
    ]
    assert [course[k]["type"] for k in ("id", "account_id", "root_account_id")] == ["long"] * 3
    assert course["enrollment_term_id"]["type"] == ["null", "long"]
    assert course["is_public"]["type"] == ["null", "boolean"]
    assert course["name"] == {**course["name"], "type": ["null", "string"], "default": None}

    user = fields_of(raw("course_audit.User"))
    assert list(user) == [
        "id",
        "name",
        "sortable_name",
        "short_name",
        "sis_user_id",
        "integration_id",
        "login_id",
        "created_at",
    ]
    assert user["id"]["type"] == "long"

    page_view = fields_of(raw("course_audit.PageView"))
    assert next(iter(page_view)) == "id" and page_view["id"]["type"] == "string"
    assert page_view["interaction_seconds"]["type"] == ["null", "double"]
    assert page_view["render_time"]["type"] == ["null", "double"]
    assert page_view["user_request"]["type"] == ["null", "boolean"]
    assert page_view["participated"]["type"] == ["null", "boolean"]
    assert len(page_view) == 14
    for fields in (course, user, page_view):
        for name, field in fields.items():
            if isinstance(field["type"], list):
                assert field["type"][0] == "null" and field["default"] is None, name

    change = fields_of(raw("course_audit.FieldChange"))
    scalar = ["null", "boolean", "long", "double", "string"]
    assert {k: v["type"] for k, v in change.items()} == {"old": scalar, "new": scalar}


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ('"null"', 7195948357588979594),
        (
            '{"type":"record","name":"foo","fields":[{"name":"f1","type":"boolean"}]}',
            7843277075252814651,
        ),
        (
            '{"name":"PigValue","type":"record",'
            '"fields":[{"name":"value","type":["null","int","long","PigValue"]}]}',
            -1759257747318642341,
        ),
    ],
)
def test_fingerprint_matches_avro_published_vectors(schema: str, expected: int) -> None:
    # Vectors from Apache Avro's share/test/data/schema-tests.txt (signed 64-bit values).
    assert schema_fingerprint(json.loads(schema)) == signed_to_le(expected)


def test_catalog_knows_every_builtin_schema_by_its_fingerprint() -> None:
    catalog = SchemaCatalog()
    seen = set()
    for name in [*EVENT_RECORDS.values(), *SHARED_TYPES]:
        expected = schema_fingerprint(load_schema(str(BUILTIN_SCHEMA_DIR / f"{name}.avsc")))
        reader = catalog.reader(name)
        assert reader is not None and reader.fingerprint == expected
        writer = catalog.writer(expected)
        assert writer is not None and writer.record_name == name
        seen.add(expected)
    assert len(seen) == 17
    assert catalog.writer(b"\x00" * 8) is None
    assert catalog.reader("course_audit.Nope") is None


def test_canonical_form_defines_a_shared_type_once_then_names_it() -> None:
    pcf = to_parsing_canonical_form(builtin_catalog().schema("course_audit.CourseCopiedFrom"))
    assert pcf.count('{"name":"course_audit.Course","type":"record"') == 1
    assert pcf.endswith('{"name":"copied_from","type":"course_audit.Course"}]}')
    assert "doc" not in pcf and "logicalType" not in pcf


def test_decoding_schemas_carry_no_logical_types() -> None:
    reader = builtin_catalog().reader("course_audit.CourseUpdated")
    assert reader is not None
    assert "logicalType" not in json.dumps(reader.decoding)
    # ...but the schema used for encoding keeps them.
    assert "timestamp-millis" in json.dumps(builtin_catalog().schema("course_audit.CourseUpdated"))


def newer_course_updated() -> dict[str, Any]:
    schema = raw("course_audit.CourseUpdated")
    schema["fields"].append(
        {"name": "reason", "type": ["null", "string"], "default": None, "doc": "Why."}
    )
    return schema


def test_extra_dir_schema_resolves_shared_types_from_builtin(tmp_path: Path) -> None:
    (tmp_path / "course_audit.CourseUpdated.avsc").write_text(json.dumps(newer_course_updated()))
    catalog = SchemaCatalog([tmp_path])
    builtin = catalog.reader("course_audit.CourseUpdated")
    assert builtin is not None
    # The newer version's fingerprint, computed from its text with the built-in shared types.
    other = catalog.parse_writer(json.dumps(newer_course_updated()), source="test").fingerprint
    assert other != builtin.fingerprint
    writer = catalog.writer(other)
    assert writer is not None and writer.record_name == "course_audit.CourseUpdated"
    assert writer.source == str(tmp_path / "course_audit.CourseUpdated.avsc")
    assert catalog.writer(builtin.fingerprint) is builtin
    # The reader is still the built-in one.
    assert catalog.reader("course_audit.CourseUpdated") is builtin


def test_extra_dir_prefers_its_own_version_of_a_shared_type(tmp_path: Path) -> None:
    old_course = raw("course_audit.Course")
    old_course["fields"] = old_course["fields"][:5]
    (tmp_path / "course_audit.Course.avsc").write_text(json.dumps(old_course))
    (tmp_path / "course_audit.CourseDeleted.avsc").write_text(
        json.dumps(raw("course_audit.CourseDeleted"))
    )
    catalog = SchemaCatalog([tmp_path])
    # What a producer holding the old Course and the current other types would compute.
    producer = tmp_path / "producer"
    shutil.copytree(BUILTIN_SCHEMA_DIR, producer)
    shutil.copy(tmp_path / "course_audit.Course.avsc", producer)
    expected = schema_fingerprint(load_schema(str(producer / "course_audit.CourseDeleted.avsc")))
    writer = catalog.writer(expected)
    assert writer is not None and writer.record_name == "course_audit.CourseDeleted"
    assert expected != catalog.reader("course_audit.CourseDeleted").fingerprint  # type: ignore[union-attr]


def test_a_broken_extra_schema_fails_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.avsc").write_text('{"type": "record", "name": "X", "fields": [{"name":')
    with pytest.raises(SchemaError, match=r"broken\.avsc"):
        SchemaCatalog([tmp_path])
    (tmp_path / "broken.avsc").write_text('{"type": "record", "name": "X", "fields": 3}')
    with pytest.raises(SchemaError, match=r"broken\.avsc"):
        SchemaCatalog([tmp_path])


def test_a_missing_extra_dir_fails_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="nowhere"):
        SchemaCatalog([tmp_path / "nowhere"])


def test_parse_writer_resolves_unknown_names_from_builtin() -> None:
    catalog = builtin_catalog()
    # A registry schema that refers to the shared types by name only.
    text = json.dumps(raw("course_audit.CourseResetTo"))
    writer = catalog.parse_writer(text, source="schema registry id 7")
    assert writer.record_name == "course_audit.CourseResetTo"
    assert writer.fingerprint == catalog.reader("course_audit.CourseResetTo").fingerprint  # type: ignore[union-attr]
    with pytest.raises(SchemaError, match="registry id 8"):
        catalog.parse_writer(
            '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "Nope"}]}',
            source="schema registry id 8",
        )
    with pytest.raises(SchemaError, match="not JSON"):
        catalog.parse_writer("{", source="x")
