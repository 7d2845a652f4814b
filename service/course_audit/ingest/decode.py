"""Message bytes -> an Avro datum resolved to the current reader schema, or a Rejection."""

from __future__ import annotations

from io import BytesIO

from fastavro import schemaless_reader

from course_audit.model import RECORD_EVENT_TYPES, Decoded, ErrorCode, Rejection
from course_audit.wire.framing import (
    SINGLE_OBJECT_HEADER_LEN,
    SINGLE_OBJECT_MAGIC,
    ConfluentHeader,
    SingleObjectHeader,
    parse_header,
)
from course_audit.wire.registry import RegistryClient
from course_audit.wire.schemas import SchemaCatalog, SchemaError, WriterSchema

_MAX_DETAIL = 300


def _shorten(text: str) -> str:
    # Some fastavro errors embed whole schemas; a dead letter needs the gist only.
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


class Decoder:
    """Decodes single-object and (with a registry) Confluent-framed messages.

    `decode_sync` needs no await and answers every message except a Confluent one whose schema
    id has not been fetched yet (it returns None then); `decode` answers every message.
    """

    def __init__(self, catalog: SchemaCatalog, registry: RegistryClient | None = None) -> None:
        self._catalog = catalog
        self._registry = registry
        self._readers: dict[str, WriterSchema] = {}
        for name in RECORD_EVENT_TYPES:
            reader = catalog.reader(name)
            if reader is None:
                raise SchemaError(f"no reader schema for event record {name}")
            self._readers[name] = reader
        self._by_id: dict[int, WriterSchema | Rejection] = {}

    def decode_sync(self, value: bytes | None) -> Decoded | Rejection | None:
        """Decode without I/O; None means "await decode(value)" (schema id not fetched yet)."""
        # The usual message, single-object framed with a known schema, without building a
        # header first (it runs for every message); anything else takes the general path.
        if (
            value is not None
            and value[:2] == SINGLE_OBJECT_MAGIC
            and len(value) >= SINGLE_OBJECT_HEADER_LEN
        ):
            writer = self._catalog.writer(value[2:SINGLE_OBJECT_HEADER_LEN])
            if writer is not None:
                return self._read(value, writer, SINGLE_OBJECT_HEADER_LEN)
        header = parse_header(value, confluent=self._registry is not None)
        if isinstance(header, Rejection):
            return header
        assert value is not None  # parse_header rejects None
        if isinstance(header, SingleObjectHeader):
            writer = self._catalog.writer(header.fingerprint)
            if writer is None:
                return Rejection(
                    ErrorCode.UNKNOWN_SCHEMA,
                    f"no known schema has fingerprint {header.fingerprint.hex()} "
                    "(add the writer schema to a schema directory)",
                )
            return self._read(value, writer, header.payload_offset)
        known = self._by_id.get(header.schema_id)
        if known is None:
            return None
        if isinstance(known, Rejection):
            return known
        return self._read(value, known, header.payload_offset)

    async def decode(self, value: bytes | None) -> Decoded | Rejection:
        """Decode a message, fetching its writer schema from the registry when needed.

        Never raises for any input bytes; while the registry is unreachable it waits (retrying)
        rather than rejecting, as the retry policy of the registry client decides.
        """
        result = self.decode_sync(value)
        if result is not None:
            return result
        assert value is not None
        header = parse_header(value, confluent=True)
        assert isinstance(header, ConfluentHeader)
        known = await self._writer_for_id(header.schema_id)
        if isinstance(known, Rejection):
            return known
        return self._read(value, known, header.payload_offset)

    async def _writer_for_id(self, schema_id: int) -> WriterSchema | Rejection:
        assert self._registry is not None
        registered = await self._registry.get_schema(schema_id)
        if registered is None:
            # Not cached here: the schema may be registered later (the client caches briefly).
            return Rejection(
                ErrorCode.UNKNOWN_SCHEMA,
                f"schema id {schema_id} not found in the schema registry",
            )
        known: WriterSchema | Rejection
        if registered.schema_type != "AVRO":
            known = Rejection(
                ErrorCode.NOT_AN_EVENT_TYPE,
                f"schema id {schema_id} is a {registered.schema_type} schema, not Avro",
            )
        else:
            try:
                parsed = self._catalog.parse_writer(
                    registered.text, source=f"schema registry id {schema_id}"
                )
            except SchemaError as exc:
                known = Rejection(ErrorCode.UNKNOWN_SCHEMA, str(exc))
            else:
                # Reuse the catalog's copy when it is the same schema (same fingerprint).
                known = self._catalog.writer(parsed.fingerprint) or parsed
        # Registry ids are immutable, so whatever an id resolved to holds for good.
        self._by_id[schema_id] = known
        return known

    def _read(self, value: bytes, writer: WriterSchema, offset: int) -> Decoded | Rejection:
        name = writer.record_name
        reader = self._readers.get(name)
        if reader is None:
            # Checked before decoding: a datum of another record is never an event,
            # whether or not it would decode.
            what = f"record {name}" if name else "not a named record"
            return Rejection(
                ErrorCode.NOT_AN_EVENT_TYPE,
                f"the writer schema ({writer.source}) is {what}, not one of the course event "
                "records",
            )
        buf = BytesIO(value)
        buf.seek(offset)
        try:
            datum = schemaless_reader(
                buf,
                writer.decoding,
                None if writer.fingerprint == reader.fingerprint else reader.decoding,
            )
        except Exception as exc:  # fastavro raises many types for bad bytes; all mean the same
            return Rejection(
                ErrorCode.AVRO_DECODE_ERROR,
                f"the datum does not decode as {name} ({writer.source}): "
                f"{type(exc).__name__}: {_shorten(str(exc))}",
            )
        end = buf.tell()
        if end != len(value):
            return Rejection(
                ErrorCode.AVRO_DECODE_ERROR,
                f"{len(value) - end} unexpected bytes after the {name} datum "
                f"(the datum ends at byte {end} of {len(value)})",
            )
        if not isinstance(datum, dict):
            return Rejection(ErrorCode.AVRO_DECODE_ERROR, f"the {name} datum is not a record")
        return Decoded(name, datum)
