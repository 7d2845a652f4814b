"""Hostile writer schemas a producer could register, with the datums that exploit them.

Each is an event record: CourseUpdated with one more field, first in the record (so that
decoding reaches it at once) and with a default (so that it resolves to the reader schema).
Without the schema bounds, the datums sent with them crash the process (a recursive type nested
deeper than the C stack), spin for hours (an array of nulls with a block count of 2^62) or
raise RecursionError out of the decoder (deeply nested JSON).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from course_audit.wire.schema_bounds import (
    MAX_FIELDS,
    MAX_ITEM_WORK_PER_BYTE,
    MAX_JSON_DEPTH,
    MAX_NAMED_TYPES,
    MAX_SCHEMA_CHARS,
    MAX_VALUE_DEPTH,
    MAX_VALUE_WORK,
)
from course_audit.wire.schemas import BUILTIN_SCHEMA_DIR


def zigzag(n: int) -> bytes:
    """An Avro long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def course_updated() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(
        (BUILTIN_SCHEMA_DIR / "course_audit.CourseUpdated.avsc").read_text()
    )
    return schema


def event_with(field_type: Any, default: Any = None) -> dict[str, Any]:
    """CourseUpdated with a first field `x` of `field_type` (defaulting to `default`)."""
    schema = course_updated()
    schema["fields"].insert(0, {"name": "x", "type": field_type, "default": default})
    return schema


def record(name: str, fields: list[tuple[str, Any]]) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}


def chain(
    count: int, link: Callable[[str], list[tuple[str, Any]]], first: Any = "long"
) -> dict[str, Any]:
    """A record whose fields define T0..T{count-1} in turn, each built from the one before
    (T0 holds one `first`)."""
    fields: list[tuple[str, Any]] = [("t0", record("T0", [("a", first)]))]
    for i in range(1, count):
        fields.append((f"t{i}", record(f"T{i}", link(f"T{i - 1}"))))
    return record("Chain", fields)


#: (hostile schema text, datum after the 5-byte header, what the rejection must say)
HOSTILE: dict[str, tuple[str, bytes, str]] = {
    # A named type that contains itself: a datum nests one level per byte, deeper than the C
    # stack fastavro recurses on (it segfaulted at 5,000 levels).
    "recursive": (
        json.dumps(
            event_with(
                ["null", record("Node", [("next", ["null", "Node"])])],
            )
        ),
        b"\x02" + b"\x02" * 200_000 + b"\x00",
        "recursive type: course_audit.Node -> course_audit.Node",
    ),
    "mutually recursive": (
        json.dumps(
            event_with(
                [
                    "null",
                    record("A", [("b", ["null", record("B", [("a", ["null", "A"])])])]),
                ]
            )
        ),
        b"\x02" * 200_000 + b"\x00",
        "recursive type: course_audit.A -> course_audit.B -> course_audit.A",
    ),
    # Items of no width: a block count of 2^62 and nothing else made fastavro loop for hours.
    "array of null": (
        json.dumps(event_with({"type": "array", "items": "null"}, [])),
        zigzag(2**62) + b"\x00",
        "items that can take no bytes",
    ),
    "array of empty records": (
        json.dumps(event_with({"type": "array", "items": record("Empty", [])}, [])),
        zigzag(2**62) + b"\x00",
        "items that can take no bytes",
    ),
    "array of fixed size 0": (
        json.dumps(
            event_with({"type": "array", "items": {"type": "fixed", "name": "F", "size": 0}}, [])
        ),
        zigzag(2**62) + b"\x00",
        "items that can take no bytes",
    ),
    "array of records of nulls": (
        json.dumps(
            event_with(
                {"type": "array", "items": record("Nulls", [("a", "null"), ("b", "null")])}, []
            )
        ),
        zigzag(2**62) + b"\x00",
        "items that can take no bytes",
    ),
    "array of arrays of null": (
        json.dumps(event_with({"type": "array", "items": {"type": "array", "items": "null"}}, [])),
        zigzag(2**62) + b"\x00",
        "items that can take no bytes",
    ),
    # One byte per item, but a great many nodes read for it.
    "items costly per byte": (
        json.dumps(
            event_with(
                {
                    "type": "array",
                    "items": record(
                        "Wide", [(f"n{i}", "null") for i in range(40)] + [("flag", "boolean")]
                    ),
                },
                [],
            )
        ),
        zigzag(2**62) + b"\x00" * 10,
        f"more than {MAX_ITEM_WORK_PER_BYTE} per byte",
    ),
    # json.loads raised RecursionError, uncaught.
    "deeply nested JSON": (
        "[" * 30_000 + "]" * 30_000,
        b"\x00",
        f"nests more than {MAX_JSON_DEPTH} levels",
    ),
    "nested arrays": (
        json.dumps(
            event_with(json.loads('{"type": "array", "items": ' * 40 + '"long"' + "}" * 40), [])
        ),
        b"\x00",
        f"nests more than {MAX_JSON_DEPTH} levels",
    ),
    "too large": (
        json.dumps({**course_updated(), "doc": "x" * MAX_SCHEMA_CHARS}),
        b"\x00",
        f"more than the {MAX_SCHEMA_CHARS} allowed",
    ),
    # Shallow JSON, deep values: each type nests the one before.
    "value too deep": (
        json.dumps(event_with(["null", chain(MAX_VALUE_DEPTH + 2, lambda prev: [("x", prev)])])),
        b"\x02" + b"\x00" * 100,
        f"more than {MAX_VALUE_DEPTH}",
    ),
    # Each type holds the one before twice, down to a null: 2^28 nodes for one byte (the
    # union's index). Reading it took minutes per message.
    "exponential": (
        json.dumps(
            event_with(["null", chain(28, lambda prev: [("x", prev), ("y", prev)], "null")])
        ),
        b"\x02" + b"\x00" * 100,
        f"more than {MAX_VALUE_WORK}",
    ),
    "too many named types": (
        json.dumps(
            event_with(
                [
                    "null",
                    record(
                        "Many",
                        [
                            (f"e{i}", {"type": "enum", "name": f"E{i}", "symbols": ["A"]})
                            for i in range(MAX_NAMED_TYPES)
                        ],
                    ),
                ]
            )
        ),
        b"\x02" + b"\x00" * 200,
        f"more than {MAX_NAMED_TYPES} named types",
    ),
    "too many fields": (
        json.dumps(
            event_with(["null", record("Wide", [(f"f{i}", "null") for i in range(MAX_FIELDS)])])
        ),
        b"\x02",
        f"more than {MAX_FIELDS} record fields",
    ),
    "not Avro": (
        '{"type": "record", "name": "Broken", "fields": 1}',
        b"\x00",
        "not a valid Avro schema",
    ),
    "not JSON": ("{", b"\x00", "not JSON"),
    "unknown named type": (
        json.dumps(event_with(["null", "course_audit.Nope"])),
        b"\x00",
        "not a valid Avro schema",
    ),
}
