"""The Avro schemas the service knows: writer schemas by fingerprint, reader schemas by name."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro.repository.base import AbstractSchemaRepository, SchemaRepositoryError
from fastavro.schema import fingerprint, load_schema, parse_schema, to_parsing_canonical_form
from fastavro.types import Schema

from course_audit.model import EVENT_RECORDS
from course_audit.wire.schema_bounds import SchemaLimitError, check_structure, check_text

#: The schemas shipped with the service: the current reader schema of every record. They are
#: package data (course_audit/schemas/), so a wheel carries them wherever it is installed.
BUILTIN_SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"

_FINGERPRINT_ALGORITHM = "CRC-64-AVRO"
# Keys that only fastavro's parser adds; they must not leak into a re-parse.
_PARSER_KEYS = frozenset({"__fastavro_parsed", "__named_schemas"})
# An Avro full name: only such names are looked up as files (no paths, no "..").
_FULL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class SchemaError(ValueError):
    """A schema file or schema text that cannot be used (names the source)."""


def _json(text: str, source: str) -> Any:
    """Parse schema text as JSON once it is known to be within the size and depth bounds."""
    try:
        check_text(text)
    except SchemaLimitError as exc:
        raise SchemaError(f"{source}: {exc}") from exc
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"{source}: not JSON: {exc}") from exc


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """A schema some producer may have written with, ready for decoding."""

    #: Full name of the top-level named type ("" when the schema is not a named type).
    record_name: str
    #: CRC-64-AVRO of the Parsing Canonical Form, 8 bytes little-endian (single-object order).
    fingerprint: bytes
    #: Parsed, self-contained, logical types removed: what the decoder reads with.
    decoding: Schema
    #: Where it came from (a file path or a registry id), for messages.
    source: str
    #: Decode from a buffer that raises at the datum's end (see schema_bounds).
    strict_reads: bool = False


def schema_fingerprint(schema: Schema) -> bytes:
    """CRC-64-AVRO fingerprint of a self-contained schema, as single-object framing's 8 bytes."""
    # fastavro's hex digest is already the little-endian byte order Java and the spec use.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), _FINGERPRINT_ALGORITHM))


def _strip(node: Any) -> Any:
    """Copy a parsed schema without logical types or parser bookkeeping keys."""
    if isinstance(node, dict):
        return {
            k: _strip(v) for k, v in node.items() if k != "logicalType" and k not in _PARSER_KEYS
        }
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def decoding_schema(schema: Schema) -> Schema:
    """The parsed schema the decoder reads with: `schema` without logical types.

    Logical types are dropped so that a malformed uuid or an out-of-range timestamp reaches
    validation (invalid_event_id, invalid_created_at) instead of failing inside the reader.
    """
    return parse_schema(_strip(schema))


def _top_name(schema: Schema) -> str:
    if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed", "error"):
        return str(schema["name"])
    return ""


class _ChainRepository(AbstractSchemaRepository):
    """Finds `<full name>.avsc` in the first of several directories that has it."""

    def __init__(self, dirs: Sequence[Path], inline: dict[str, Any] | None = None) -> None:
        self._dirs = tuple(dirs)
        self._inline = inline or {}
        #: The name being loaded (a file's own name); any other is a reference to a named type.
        self.top = ""

    def load(self, name: str) -> Any:
        if name in self._inline:
            return self._inline[name]
        if not isinstance(name, str) or not _FULL_NAME.fullmatch(name):
            raise SchemaRepositoryError(f"no schema named {name!r}")
        for directory in self._dirs:
            path = directory / f"{name}.avsc"
            if path.is_file():
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, ValueError) as exc:
                    raise SchemaError(f"{path}: not a readable JSON schema: {exc}") from exc
                schema = _json(text, str(path))
                defined = _full_name(schema)
                if name != self.top and defined != name:
                    # fastavro would look the reference up again and again, without end.
                    raise SchemaError(
                        f"{path}: defines {defined or 'no named type'}, not {name} (the file "
                        "of a referenced type is named after the type's full name)"
                    )
                return schema
        raise SchemaRepositoryError(f"no schema named {name!r}")


def _full_name(schema: Any) -> str | None:
    """The full name a schema's JSON defines at its top, if any."""
    if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
        return None
    name: str = schema["name"]
    namespace = schema.get("namespace")
    if "." in name or not isinstance(namespace, str) or not namespace:
        return name
    return f"{namespace}.{name}"


def _load(name: str, repo: _ChainRepository, source: str) -> tuple[Schema, WriterSchema]:
    repo.top = name
    try:
        # load_schema inlines each referenced named type at its first use, which is what the
        # Parsing Canonical Form (and so the fingerprint) is defined on.
        parsed: Schema = load_schema(name, repo=repo)
    except SchemaError:
        raise
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise SchemaError(f"{source}: not a valid Avro schema: {exc}") from exc
    try:
        # Before anything reads with it (the fingerprint included).
        strict_reads = check_structure(parsed)
    except SchemaLimitError as exc:
        raise SchemaError(f"{source}: {exc}") from exc
    except Exception as exc:  # a form the check did not foresee: unusable all the same
        raise SchemaError(f"{source}: not a usable schema: {type(exc).__name__}: {exc}") from exc
    writer = WriterSchema(
        record_name=_top_name(parsed),
        fingerprint=schema_fingerprint(parsed),
        decoding=decoding_schema(parsed),
        source=source,
        strict_reads=strict_reads,
    )
    return parsed, writer


class SchemaCatalog:
    """Every known writer schema by fingerprint, and the current reader schema per record.

    Readers come from the built-in directory; `extra_dirs` add writer schemas only (older or
    newer versions), resolving named types from their own directory first, then the built-ins.
    """

    def __init__(
        self, extra_dirs: Iterable[Path] = (), *, builtin_dir: Path = BUILTIN_SCHEMA_DIR
    ) -> None:
        self.builtin_dir = builtin_dir
        self.extra_dirs = tuple(Path(d) for d in extra_dirs)
        self._writers: dict[bytes, WriterSchema] = {}
        self._readers: dict[str, WriterSchema] = {}
        self._schemas: dict[str, Schema] = {}
        self._load_builtin()
        for directory in self.extra_dirs:
            self._load_extra(directory)

    def _avsc_files(self, directory: Path) -> list[Path]:
        if not directory.is_dir():
            raise SchemaError(f"{directory}: schema directory does not exist")
        return sorted(directory.glob("*.avsc"))

    def _load_builtin(self) -> None:
        repo = _ChainRepository([self.builtin_dir])
        for path in self._avsc_files(self.builtin_dir):
            parsed, writer = _load(path.stem, repo, str(path))
            if writer.record_name in self._schemas:
                raise SchemaError(f"{path}: a second built-in schema for {writer.record_name}")
            self._schemas[writer.record_name] = parsed
            self._readers[writer.record_name] = writer
            self._writers.setdefault(writer.fingerprint, writer)
        missing = sorted(set(EVENT_RECORDS.values()) - self._readers.keys())
        if missing:
            raise SchemaError(f"{self.builtin_dir}: missing event schemas: {', '.join(missing)}")

    def _load_extra(self, directory: Path) -> None:
        repo = _ChainRepository([directory, self.builtin_dir])
        for path in self._avsc_files(directory):
            _, writer = _load(path.stem, repo, str(path))
            self._writers.setdefault(writer.fingerprint, writer)

    def writer(self, fp: bytes) -> WriterSchema | None:
        """The writer schema with this 8-byte fingerprint, if known."""
        return self._writers.get(fp)

    def reader(self, record_name: str) -> WriterSchema | None:
        """The current (built-in) schema of a record, as decoding schema and fingerprint."""
        return self._readers.get(record_name)

    def schema(self, record_name: str) -> Schema:
        """The current parsed schema of a record, logical types included (for encoding)."""
        try:
            return self._schemas[record_name]
        except KeyError:
            raise SchemaError(f"no schema named {record_name!r}") from None

    def parse_writer(self, schema_text: str, *, source: str) -> WriterSchema:
        """Prepare a writer schema given as JSON text (e.g. from a registry).

        Named types it uses but does not define resolve to the built-in ones. Raises
        SchemaError for text that is not a usable schema, including one beyond the bounds of
        `schema_bounds` (docs/messages.md#schema-limits).
        """
        obj = _json(schema_text, source)
        inline_name = "\x00writer"  # cannot collide with an Avro name
        repo = _ChainRepository([self.builtin_dir], inline={inline_name: obj})
        return _load(inline_name, repo, source)[1]


@functools.cache
def builtin_catalog() -> SchemaCatalog:
    """The catalog of the built-in schemas alone, loaded once (for producers and tools)."""
    return SchemaCatalog()
