"""Producer-side encoding: JSON objects -> Avro datums -> framed Kafka message values."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

from fastavro import schemaless_writer
from fastavro.types import Schema
from fastavro.validation import ValidationError, validate

from course_audit.ingest.validate import UUID_RE
from course_audit.model import EVENT_RECORDS, RECORD_EVENT_TYPES
from course_audit.wire.framing import frame_confluent, frame_single_object
from course_audit.wire.schemas import SchemaCatalog, builtin_catalog, schema_fingerprint

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class EventJsonError(ValueError):
    """A JSON event that does not fit its schema; the message names the field."""


def record_name_of(event_type_or_record_name: str) -> str:
    """`updated` or `course_audit.CourseUpdated` -> `course_audit.CourseUpdated`."""
    if event_type_or_record_name in RECORD_EVENT_TYPES:
        return event_type_or_record_name
    try:
        return EVENT_RECORDS[event_type_or_record_name]
    except KeyError:
        raise EventJsonError(
            f"unknown event type {event_type_or_record_name!r} "
            f"(expected one of: {', '.join(EVENT_RECORDS)})"
        ) from None


def avro_binary(schema: Schema, datum: Mapping[str, Any]) -> bytes:
    """The Avro binary encoding of `datum` with a parsed `schema` (no framing)."""
    buf = BytesIO()
    try:
        schemaless_writer(buf, schema, datum)
    except Exception as exc:  # fastavro raises several types for a datum that does not fit
        raise EventJsonError(f"the datum does not fit the schema: {exc}") from exc
    return buf.getvalue()


def single_object(schema: Schema, datum: Mapping[str, Any]) -> bytes:
    """`datum` as an Avro single object written with any parsed, self-contained `schema`."""
    return frame_single_object(schema_fingerprint(schema), avro_binary(schema, datum))


class Encoder:
    """Encodes event datums with the current schemas (those in `course_audit/schemas/`)."""

    def __init__(self, catalog: SchemaCatalog | None = None) -> None:
        self._catalog = catalog or builtin_catalog()
        self._fingerprints: dict[str, bytes] = {}
        for name in RECORD_EVENT_TYPES:
            reader = self._catalog.reader(name)
            assert reader is not None  # the catalog insists on all event records
            self._fingerprints[name] = reader.fingerprint

    def encode_single_object(
        self, event_type_or_record_name: str, datum: Mapping[str, Any]
    ) -> bytes:
        """`datum` framed as an Avro single object (the default encoding)."""
        name = record_name_of(event_type_or_record_name)
        return frame_single_object(
            self._fingerprints[name], avro_binary(self._catalog.schema(name), datum)
        )

    def encode_confluent(
        self, schema_id: int, event_type_or_record_name: str, datum: Mapping[str, Any]
    ) -> bytes:
        """`datum` in the Confluent wire format, under a registry id of this record's schema."""
        name = record_name_of(event_type_or_record_name)
        return frame_confluent(schema_id, avro_binary(self._catalog.schema(name), datum))

    def schema_json(self, event_type_or_record_name: str) -> str:
        """The current schema of a record as self-contained JSON (e.g. to register it)."""
        name = record_name_of(event_type_or_record_name)
        return json.dumps(_unparsed(self._catalog.schema(name)), separators=(",", ":"))

    def event_from_json(self, obj: Any) -> tuple[str, dict[str, Any]]:
        """Like the module-level `event_from_json`, with this encoder's schemas."""
        return event_from_json(obj, self._catalog)


def event_from_json(obj: Any, catalog: SchemaCatalog | None = None) -> tuple[str, dict[str, Any]]:
    """A JSON event (schema fields plus "event_type") -> (record full name, datum).

    `created_at` may be an ISO 8601 date-time (UTC when it has no offset) or epoch
    milliseconds; a change pair may be `[old, new]` or `{"old": .., "new": ..}`, and an array
    or object value in it is sent as its JSON text. Absent nullable fields become null.
    Raises EventJsonError (a ValueError) naming the offending field.
    """
    catalog = catalog or builtin_catalog()
    if not isinstance(obj, Mapping):
        raise EventJsonError(f"expected a JSON object, got {_kind(obj)}")
    event_type = obj.get("event_type")
    if event_type is None:
        raise EventJsonError(f"event_type: missing (expected one of: {', '.join(EVENT_RECORDS)})")
    if not isinstance(event_type, str) or event_type not in EVENT_RECORDS:
        raise EventJsonError(
            f"event_type: unknown event type {event_type!r:.60} "
            f"(expected one of: {', '.join(EVENT_RECORDS)})"
        )
    record_name = EVENT_RECORDS[event_type]
    schema = catalog.schema(record_name)
    fields = {k: v for k, v in obj.items() if k != "event_type"}

    if "event_id" in fields:
        event_id = fields["event_id"]
        if not isinstance(event_id, str) or not UUID_RE.fullmatch(event_id):
            raise EventJsonError(f"event_id: {event_id!r:.60} is not a UUID")
    if "created_at" in fields:
        fields["created_at"] = _millis(fields["created_at"])
    if "changes" in fields:
        fields["changes"] = _change_pairs(fields["changes"])

    named = schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}
    datum = _conform(fields, schema, "", named)
    try:
        validate(datum, schema, raise_errors=True)
    except ValidationError as exc:  # a backstop: _conform should have named the field already
        problems = "; ".join(str(e) for e in exc.errors)
        raise EventJsonError(f"does not fit {record_name}: {problems}") from exc
    return record_name, datum


def _millis(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return (when - _EPOCH) // _MS
    raise EventJsonError(
        f"created_at: {value!r:.60} is neither an ISO 8601 date-time nor epoch milliseconds"
    )


def _change_value(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        # docs/messages.md#changes: an array or object value travels as its JSON text.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


def _change_pairs(changes: Any) -> Any:
    if not isinstance(changes, Mapping):
        return changes  # _conform reports it
    out: dict[str, Any] = {}
    for attr, pair in changes.items():
        if isinstance(pair, (list, tuple)):
            if len(pair) != 2:
                raise EventJsonError(
                    f"changes.{attr}: a change pair is [old, new], got {len(pair)} values"
                )
            old, new = pair
        elif isinstance(pair, Mapping) and set(pair) <= {"old", "new"}:
            old, new = pair.get("old"), pair.get("new")
        else:
            raise EventJsonError(
                f'changes.{attr}: expected [old, new] or {{"old": ..., "new": ...}}, '
                f"got {_kind(pair)}"
            )
        out[attr] = {"old": _change_value(old), "new": _change_value(new)}
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r:.60})"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


_PRIMITIVE_CHECKS: dict[str, Any] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and _INT_MIN <= v <= _INT_MAX,
    "long": lambda v: (
        isinstance(v, int) and not isinstance(v, bool) and _LONG_MIN <= v <= _LONG_MAX
    ),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "double": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "bytes": lambda v: isinstance(v, (bytes, bytearray)),
}
_PRIMITIVE_NAMES = {
    "null": "null",
    "boolean": "a boolean",
    "int": "a 32-bit integer",
    "long": "an integer",
    "float": "a number",
    "double": "a number",
    "string": "a string",
    "bytes": "bytes",
}


def _describe(schema: Any, named: Mapping[str, Any]) -> str:
    if isinstance(schema, str):
        if schema in _PRIMITIVE_NAMES:
            return _PRIMITIVE_NAMES[schema]
        return _describe(named[schema], named) if schema in named else schema
    if isinstance(schema, list):
        return " or ".join(_describe(s, named) for s in schema)
    kind = schema.get("type")
    if kind == "record":
        return f"a {schema['name']} object"
    if kind == "map":
        return "an object"
    if kind == "array":
        return "an array"
    if kind == "enum":
        return f"one of {', '.join(schema['symbols'])}"
    return _describe(kind, named)


def _path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _fail(path: str, problem: str) -> EventJsonError:
    return EventJsonError(f"{path}: {problem}" if path else problem)


def _is_container(schema: Any, named: Mapping[str, Any]) -> bool:
    if isinstance(schema, str):
        schema = named.get(schema, schema)
    return isinstance(schema, dict) and schema.get("type") in ("record", "map")


def _conform(value: Any, schema: Any, path: str, named: Mapping[str, Any]) -> Any:
    """Check `value` against a parsed schema, filling defaults; errors name the field."""
    if isinstance(schema, str):
        check = _PRIMITIVE_CHECKS.get(schema)
        if check is not None:
            if not check(value):
                raise _fail(path, f"expected {_describe(schema, named)}, got {_kind(value)}")
            return value
        if schema not in named:
            raise _fail(path, f"unknown type {schema}")
        return _conform(value, named[schema], path, named)
    if isinstance(schema, list):
        return _conform_union(value, schema, path, named)
    kind = schema.get("type")
    if kind == "record":
        return _conform_record(value, schema, path, named)
    if kind == "map":
        if not isinstance(value, Mapping):
            raise _fail(path, f"expected an object, got {_kind(value)}")
        return {
            str(k): _conform(v, schema["values"], _path(path, str(k)), named)
            for k, v in value.items()
        }
    if kind == "array":
        if not isinstance(value, (list, tuple)):
            raise _fail(path, f"expected an array, got {_kind(value)}")
        return [_conform(v, schema["items"], f"{path}[{i}]", named) for i, v in enumerate(value)]
    if kind == "enum":
        if value not in schema["symbols"]:
            raise _fail(path, f"expected {_describe(schema, named)}, got {_kind(value)}")
        return value
    return _conform(value, kind, path, named)  # a primitive with attributes (logicalType...)


def _conform_union(value: Any, schema: list[Any], path: str, named: Mapping[str, Any]) -> Any:
    if value is None and "null" in schema:
        return None
    if isinstance(value, Mapping):
        candidates = [s for s in schema if _is_container(s, named)]
        if len(candidates) == 1:
            # Only one branch can hold an object: report its own, precise problem.
            return _conform(value, candidates[0], path, named)
    else:
        candidates = [s for s in schema if s != "null" and not _is_container(s, named)]
    for branch in candidates:
        try:
            return _conform(value, branch, path, named)
        except EventJsonError:
            continue
    raise _fail(path, f"expected {_describe(schema, named)}, got {_kind(value)}")


def _conform_record(
    value: Any, schema: dict[str, Any], path: str, named: Mapping[str, Any]
) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected {_describe(schema, named)}, got {_kind(value)}")
    field_names = [f["name"] for f in schema["fields"]]
    for key in value:
        if key not in field_names:
            hint = difflib.get_close_matches(str(key), field_names, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise _fail(_path(path, str(key)), f"unknown field of {schema['name']}{suggestion}")
    out: dict[str, Any] = {}
    for field in schema["fields"]:
        name = field["name"]
        if name in value:
            out[name] = _conform(value[name], field["type"], _path(path, name), named)
        elif "default" in field:
            out[name] = field["default"]
        else:
            raise _fail(_path(path, name), f"missing (required, {_describe(field['type'], named)})")
    return out


def _unparsed(node: Any) -> Any:
    """A parsed schema without fastavro's bookkeeping keys, for JSON output."""
    if isinstance(node, dict):
        return {k: _unparsed(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [_unparsed(v) for v in node]
    return node
