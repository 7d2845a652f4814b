"""Message bytes -> an Avro datum resolved to the current reader schema, or a Rejection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from io import BytesIO

from fastavro import schemaless_reader

from course_audit.cache import TtlCache
from course_audit.model import RECORD_EVENT_TYPES, Decoded, ErrorCode, Rejection
from course_audit.wire.framing import (
    CONFLUENT_HEADER_LEN,
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_HEADER_LEN,
    SINGLE_OBJECT_MAGIC,
    SingleObjectHeader,
    parse_header,
)
from course_audit.wire.registry import RegisteredSchema, RegistryClient
from course_audit.wire.schemas import SchemaCatalog, SchemaError, WriterSchema

_MAX_DETAIL = 300


def _shorten(text: str) -> str:
    # Some fastavro errors embed whole schemas; a dead letter needs the gist only.
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


#: Registry ids remembered with what they resolved to (a writer schema or why it is unusable):
#: at most this many, holding at most `SCHEMA_CACHE_CHARS` of schema text; the ids fetched
#: longest ago go first.
SCHEMA_CACHE_IDS = 1000
SCHEMA_CACHE_CHARS = 16 * 1024 * 1024
#: Ids the registry did not know, remembered this long (a schema registered later is picked up
#: after it), at most this many.
NOT_FOUND_TTL_S = 30.0
NOT_FOUND_CACHE_IDS = 10_000


class _StrictBytes(BytesIO):
    """A buffer that raises when a read asks for more bytes than are left.

    fastavro skips booleans, floats, doubles and fixed by reading their size without looking
    at what it got; at the end of the datum, an array of them would skip its whole block count
    of nothing. Used only for the writer schemas that have such an array (it costs a Python
    call per read).
    """

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        if size is not None and size > len(data):
            raise EOFError(f"the datum ends {size - len(data)} byte(s) early")
        return data


def _schema_id(value: bytes | None) -> int | None:
    """The registry id of a Confluent-framed message (None for anything else)."""
    if value is None or len(value) < CONFLUENT_HEADER_LEN or value[:1] != CONFLUENT_MAGIC:
        return None
    return int.from_bytes(value[1:CONFLUENT_HEADER_LEN], "big")


class Decoder:
    """Decodes single-object and (with a registry) Confluent-framed messages.

    `decode_sync` needs no await and answers every message except a Confluent one whose schema
    id is not known yet (it returns None then); `fetch_schemas` fetches those for a whole batch
    at once, and `decode` answers every message, fetching as it goes.
    """

    def __init__(
        self,
        catalog: SchemaCatalog,
        registry: RegistryClient | None = None,
        *,
        not_found_ttl: float = NOT_FOUND_TTL_S,
    ) -> None:
        self._catalog = catalog
        self.registry = registry
        self._readers: dict[str, WriterSchema] = {}
        for name in RECORD_EVENT_TYPES:
            reader = catalog.reader(name)
            if reader is None:
                raise SchemaError(f"no reader schema for event record {name}")
            self._readers[name] = reader
        # A plain dict (the hot path's lookup), kept within bounds by `_remember`.
        self._by_id: dict[int, WriterSchema | Rejection] = {}
        self._by_id_chars: dict[int, int] = {}
        self._cached_chars = 0
        self._not_found: TtlCache[int, Rejection] = TtlCache(NOT_FOUND_CACHE_IDS, not_found_ttl)

    def decode_sync(self, value: bytes | None) -> Decoded | Rejection | None:
        """Decode without I/O; None means "fetch its schema first" (schema id not known yet)."""
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
        header = parse_header(value, confluent=self.registry is not None)
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
            return self._not_found.get(header.schema_id)
        if isinstance(known, Rejection):
            return known
        return self._read(value, known, header.payload_offset)

    async def decode(self, value: bytes | None) -> Decoded | Rejection:
        """Decode a message, fetching its writer schema from the registry when needed.

        Never raises for any input bytes; while the registry is unreachable it retries as the
        registry client's retry policy says (by default for as long as it takes), and raises
        RegistryUnavailable only when a finite policy runs out.
        """
        result = self.decode_sync(value)
        if result is not None:
            return result
        assert self.registry is not None and value is not None
        schema_id = _schema_id(value)
        assert schema_id is not None  # decode_sync answers every other message
        known = self._remember(schema_id, await self.registry.get_schema(schema_id))
        if isinstance(known, Rejection):
            return known
        return self._read(value, known, CONFLUENT_HEADER_LEN)

    def unknown_ids(self, values: Iterable[bytes | None]) -> set[int]:
        """The schema ids of the Confluent messages among `values` not known yet."""
        if self.registry is None:
            return set()
        ids = {i for v in values if (i := _schema_id(v)) is not None}
        ids.difference_update(self._by_id)
        return {i for i, found in zip(ids, self._not_found.get_many(ids), strict=True) if not found}

    async def fetch_schemas(self, values: Iterable[bytes | None]) -> int:
        """Fetch the writer schemas `decode_sync` lacks for `values`; return how many ids.

        Each id is fetched once, several at a time (as many as the registry client allows).
        One attempt each: the first that fails stops the others and raises RegistryUnavailable;
        the answers received before that are kept.
        """
        registry = self.registry
        unknown = self.unknown_ids(values)
        if registry is None or not unknown:
            return 0
        pending = iter(unknown)
        count = 0

        async def worker() -> None:
            nonlocal count
            assert registry is not None
            for schema_id in pending:  # shared: each id is taken by one worker
                self._remember(schema_id, await registry.fetch(schema_id))
                count += 1

        workers = [
            asyncio.ensure_future(worker())
            for _ in range(min(len(unknown), registry.max_concurrent))
        ]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                failure = None if task.cancelled() else task.exception()
                if failure is not None:
                    raise failure
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return count

    def _remember(
        self, schema_id: int, registered: RegisteredSchema | None
    ) -> WriterSchema | Rejection:
        """Keep (and return) what the registry's answer for an id means for decoding."""
        if registered is None:
            missing = Rejection(
                ErrorCode.UNKNOWN_SCHEMA, f"schema id {schema_id} not found in the schema registry"
            )
            # Only for a while: the schema may be registered later.
            self._not_found.put(schema_id, missing)
            return missing
        # Registry ids are immutable, so whatever else an id resolved to holds for good.
        known = self._resolve(registered)
        chars = len(registered.text) if isinstance(known, WriterSchema) else 0
        self._by_id.pop(schema_id, None)
        self._cached_chars -= self._by_id_chars.pop(schema_id, 0)
        self._by_id[schema_id] = known
        self._by_id_chars[schema_id] = chars
        self._cached_chars += chars
        while len(self._by_id) > SCHEMA_CACHE_IDS or self._cached_chars > SCHEMA_CACHE_CHARS:
            oldest = next(iter(self._by_id))
            del self._by_id[oldest]
            self._cached_chars -= self._by_id_chars.pop(oldest)
        return known

    def _resolve(self, registered: RegisteredSchema) -> WriterSchema | Rejection:
        schema_id = registered.schema_id
        source = f"schema registry id {schema_id}"
        if registered.problem:
            return Rejection(ErrorCode.INVALID_SCHEMA, f"{source}: {registered.problem}")
        if registered.schema_type != "AVRO":
            return Rejection(
                ErrorCode.NOT_AN_EVENT_TYPE,
                f"schema id {schema_id} is a {registered.schema_type} schema, not Avro",
            )
        try:
            parsed = self._catalog.parse_writer(registered.text, source=source)
        except SchemaError as exc:
            return Rejection(ErrorCode.INVALID_SCHEMA, _shorten(str(exc)))
        # Reuse the catalog's copy when it is the same schema (same fingerprint).
        return self._catalog.writer(parsed.fingerprint) or parsed

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
        buf = _StrictBytes(value) if writer.strict_reads else BytesIO(value)
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
