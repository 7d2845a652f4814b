"""Reading fetched Kafka record batches so that no record, however malformed, fails a fetch.

aiokafka parses a partition's fetched bytes while `getmany()` hands records out, and the first
record it cannot read raises out of `getmany()`: a header name that is not UTF-8 (the broker
accepts it, librdkafka producers can send it), a batch whose CRC does not match, an unknown
compression codec. The consumer would die, and die again at the same offset on every restart.

`install()` makes aiokafka's fetcher read through `TolerantRecords` instead of its own
`MemoryRecords`. Each batch is still parsed by aiokafka's own reader (its C extension when
built); only when that fails is the batch read again here, record by record, in pure Python:
the records that read are handed on as usual, and each one that does not comes out with an
`Unreadable` value: why, and the bytes that could be recovered. The consumer turns those into
`unreadable_record` dead letters (docs/design.md#unreadable-records). A batch that cannot even
be delimited or decompressed becomes one `Unreadable` record for its whole offset range, at its
last offset, so aiokafka's position still moves past it.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import codec as codecs
from aiokafka.record import default_records, legacy_records

from course_audit.model import DeadLetter, ErrorCode, Source

log = logging.getLogger(__name__)

# Record batch v2 (magic 2), as in Kafka's protocol guide ("Record Batch"):
# baseOffset int64, batchLength int32, partitionLeaderEpoch int32, magic int8, crc uint32,
# attributes int16, lastOffsetDelta int32, baseTimestamp int64, maxTimestamp int64,
# producerId int64, producerEpoch int16, baseSequence int32, recordCount int32, records.
HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
#: baseOffset and batchLength: what delimits a batch of any format.
LOG_OVERHEAD = 12
#: The shortest v0 message after its length field (crc, magic, attributes, key, value).
LEGACY_MIN_LENGTH = 14
MAGIC_AT = 16
#: The CRC-32C covers everything from the attributes on.
CRC_FROM = 21
LAST_OFFSET_DELTA_AT = 23
CODEC_MASK = 0x07
TIMESTAMP_TYPE_MASK = 0x08
TRANSACTIONAL_MASK = 0x10
CONTROL_MASK = 0x20
CODECS = {1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
#: At most this many bytes of a bad header name are quoted in a reason.
QUOTE_BYTES = 64
#: A compressed batch whose records take more than this once decompressed is unreadable
#: (docs/messages.md#unreadable-records): a few KB of zstd can hold gigabytes of zeros, and
#: aiokafka would allocate them all, at the same offset after every restart.
MAX_DECOMPRESSED = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Stands in for the value of a record that could not be read: why, and the bytes kept.

    `value` is the record's value when the record itself could be delimited and parsed (then
    key and headers are real too), else the raw bytes of the record or of the batch.
    """

    reason: str
    value: bytes | None

    def __len__(self) -> int:  # aiokafka takes len() of every value
        return 0 if self.value is None else len(self.value)


@dataclass(frozen=True, slots=True)
class Record:
    """A record as aiokafka's fetcher reads it (the fields `PartitionRecords` uses)."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | Unreadable | None
    headers: list[tuple[str, bytes | None]]
    checksum: None = None


def unreadable_letter(topic: str, partition: int, record: Any) -> DeadLetter:
    """The dead letter for a consumer record whose value is `Unreadable`."""
    unreadable: Unreadable = record.value
    source = Source(
        topic, partition, record.offset, record.key, unreadable.value, tuple(record.headers)
    )
    return DeadLetter(
        source=source,
        code=ErrorCode.UNREADABLE_RECORD,
        message=unreadable.reason,
        failed_at=datetime.now(UTC),
    )


def install() -> None:
    """Make aiokafka's fetcher read fetched partitions through `TolerantRecords`.

    aiokafka has no hook for this: its fetcher builds a `MemoryRecords` from each partition's
    bytes, under that module-level name, which is replaced here (idempotent, process-wide;
    only consumers fetch, and a readable batch reads exactly as before).
    """
    from aiokafka.consumer import fetcher

    current = getattr(fetcher, "MemoryRecords", None)
    if current is TolerantRecords:
        return
    if current is None or not hasattr(fetcher, "PartitionRecords"):
        raise RuntimeError(
            "aiokafka's fetcher no longer reads through MemoryRecords and PartitionRecords: "
            "course_audit.ingest.records must be adapted to this aiokafka version"
        )
    fetcher.MemoryRecords = TolerantRecords


class Batch:
    """A batch whose records are already read, as aiokafka's fetcher uses a batch."""

    __slots__ = ("_records", "base_offset", "is_transactional", "next_offset", "producer_id")
    is_control_batch = False

    def __init__(
        self,
        base_offset: int,
        next_offset: int,
        records: list[Any],
        producer_id: int | None = None,
        is_transactional: bool = False,
    ) -> None:
        self.base_offset = base_offset
        self.next_offset = next_offset
        self.producer_id = producer_id
        self.is_transactional = is_transactional
        self._records = records

    def validate_crc(self) -> bool:
        return True  # checked by TolerantRecords before the batch was read

    def __iter__(self) -> Iterator[Any]:
        return iter(self._records)


class TolerantRecords:
    """aiokafka's `MemoryRecords` (the batches of one fetched partition) that never raises.

    Batches are delimited here as aiokafka does (by their length field); an incomplete batch
    at the end of the fetch is left for the next fetch, as usual. But a fetch whose *first*
    batch is incomplete, or whose batch length is impossible, is damaged (brokers answering
    fetch v3+ never send a partial first batch): it becomes one unreadable range rather than
    aiokafka's RecordTooLargeError.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def size_in_bytes(self) -> int:
        return len(self._data)

    def has_next(self) -> bool:
        remaining = len(self._data) - self._pos
        if remaining < LOG_OVERHEAD:
            return False
        if self._pos == 0:
            return True
        length: int = struct.unpack_from(">i", self._data, self._pos + 8)[0]
        return length < 0 or remaining >= LOG_OVERHEAD + length

    def next_batch(self) -> Any:
        data, pos = self._data, self._pos
        base_offset, length = struct.unpack_from(">qi", data, pos)
        end = pos + LOG_OVERHEAD + length
        magic = data[pos + MAGIC_AT] if pos + MAGIC_AT < len(data) else None
        legacy = magic in (0, 1)
        if length < (LEGACY_MIN_LENGTH if legacy else HEADER_SIZE - LOG_OVERHEAD):
            why = f"its length field ({length} bytes) is impossible"
        elif end > len(data):
            arrived = len(data) - pos - LOG_OVERHEAD
            why = f"its length field says {length} bytes, but {arrived} arrived"
        else:
            self._pos = end
            raw = data[pos:end]
            try:
                if magic == 2:
                    return read_batch(raw)
                if legacy:
                    return _read_legacy(raw, magic or 0, base_offset)
                why = f"its format (magic byte {magic}) is unknown"
            except Exception as exc:  # a bug here must not stop the consumer either
                log.exception("record batch unreadable", extra={"base_offset": base_offset})
                why = f"reading it failed: {exc!r}"
            return damaged(base_offset, _last_offset_delta(raw), raw, why)
        # Not delimited: nothing after it in this fetch can be found either.
        self._pos = len(data)
        raw = data[pos:]
        return damaged(base_offset, 0 if legacy else _last_offset_delta(raw), raw, why)


def read_batch(raw: bytes) -> Any:
    """One delimited v2 batch: aiokafka's batch when it reads, else a tolerant `Batch`."""
    header = HEADER.unpack_from(raw)
    base_offset, attributes, last_delta = header[0], header[5], header[6]
    batch = default_records.DefaultRecordBatch(raw)
    if not batch.validate_crc():
        return damaged_batch(raw, "its CRC does not match its bytes (damaged in storage)")
    if attributes & CONTROL_MASK:
        return batch  # written by the broker; aiokafka reads its markers itself
    codec = attributes & CODEC_MASK
    if codec:
        # Measured first, into a buffer of the bound: aiokafka decompresses without one.
        try:
            decompressed_size(codec, raw[HEADER_SIZE:])
        except _Broken as exc:
            return damaged(base_offset, last_delta, raw, str(exc))
    try:
        records = list(batch)
    except Exception as exc:
        log.warning(
            "record batch unreadable by aiokafka; reading it record by record",
            extra={"base_offset": base_offset, "error": repr(exc)},
        )
        records = read_records(raw)
    return Batch(
        base_offset,
        base_offset + max(last_delta, 0) + 1,
        records,
        producer_id=header[9],
        is_transactional=bool(attributes & TRANSACTIONAL_MASK),
    )


def damaged_batch(raw: bytes, why: str) -> Batch:
    """A batch whose bytes cannot be trusted: every record that parses, each as unreadable."""
    base_offset, last_delta = HEADER.unpack_from(raw)[0], max(_last_offset_delta(raw), 0)
    records = [_unreadable(r, f"record batch: {why}") for r in read_records(raw)]
    return Batch(base_offset, base_offset + last_delta + 1, records)


def damaged(base_offset: int, last_delta: int, raw: bytes, why: str) -> Batch:
    """A batch of which nothing can be read: one unreadable record for its offset range."""
    last_delta = max(last_delta, 0)
    marker = _range(base_offset, base_offset + last_delta, 0, raw, f"record batch: {why}")
    return Batch(base_offset, base_offset + last_delta + 1, [marker])


def read_records(raw: bytes) -> list[Record]:
    """Every record of a v2 batch that can be read, and an `Unreadable` one for each that can't.

    A record that can be delimited but not parsed stands alone (the next one is read after
    it); when a record cannot even be delimited, the rest of the batch is one range.
    """
    header = HEADER.unpack_from(raw)
    base_offset, attributes, last_delta = header[0], header[5], max(header[6], 0)
    first_ts, count = header[7], header[12]
    last_offset = base_offset + last_delta
    timestamp_type = 1 if attributes & TIMESTAMP_TYPE_MASK else 0
    codec = attributes & CODEC_MASK
    try:
        body = _decompress(codec, raw[HEADER_SIZE:])
    except _Broken as exc:
        return [_range(base_offset, last_offset, first_ts, raw, f"record batch: {exc}")]

    records: list[Record] = []
    previous = base_offset - 1  # offset of the last record read
    pos = 0
    while pos < len(body) and len(records) < count:
        start = pos
        try:
            length, pos = _varint(body, pos, len(body))
            if length < 0 or pos + length > len(body):
                raise _Broken(f"its length ({length}) runs past the batch")
        except _Broken as exc:
            if previous < last_offset:
                rest = body[start:]
                records.append(_range(previous + 1, last_offset, first_ts, rest, f"record: {exc}"))
            return records
        end = pos + length
        try:
            record = _parse_record(body, pos, end, header, timestamp_type)
            if not previous < record.offset <= last_offset:
                raise _Broken(f"its offset {record.offset} is out of the batch's order")
        except _Broken as exc:
            offset = previous + 1
            unreadable = Unreadable(f"record: {exc}", body[start:end])
            record = Record(offset, first_ts, timestamp_type, None, unreadable, [])
        records.append(record)
        previous = record.offset
        pos = end
    if previous < last_offset and (pos < len(body) or len(records) < count):
        why = (
            "record: the batch ends before its last record"
            if pos >= len(body)
            else "record: bytes after the batch's last record"
        )
        records.append(_range(previous + 1, last_offset, first_ts, body[pos:], why))
    return records


def _parse_record(
    body: bytes, pos: int, end: int, header: tuple[int, ...], timestamp_type: int
) -> Record:
    """One record of a v2 batch in body[pos:end]; raises _Broken when it does not parse."""
    base_offset, first_ts, max_ts = header[0], header[7], header[8]
    if pos >= end:
        raise _Broken("it is empty")
    pos += 1  # attributes (int8, unused)
    ts_delta, pos = _varint(body, pos, end)
    offset_delta, pos = _varint(body, pos, end)
    key, pos = _nullable_bytes(body, pos, end)
    value, pos = _nullable_bytes(body, pos, end)
    count, pos = _varint(body, pos, end)
    if count < 0:
        raise _Broken(f"its header count ({count}) is negative")
    headers: list[tuple[str, bytes | None]] = []
    problems: list[str] = []
    for i in range(count):
        name_bytes, pos = _nullable_bytes(body, pos, end)
        if name_bytes is None:
            raise _Broken(f"header {i} has no name")
        header_value, pos = _nullable_bytes(body, pos, end)
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            name = name_bytes.decode("utf-8", "backslashreplace")
            problems.append(
                f"header {i} name {name_bytes[:QUOTE_BYTES]!r} is not UTF-8 "
                "(kept with backslash escapes)"
            )
        headers.append((name, header_value))
    if pos != end:
        raise _Broken(f"{end - pos} bytes are left over after its headers")
    timestamp = max_ts if timestamp_type else first_ts + ts_delta
    offset = base_offset + offset_delta
    if problems:
        unreadable = Unreadable("record: " + "; ".join(problems), value)
        return Record(offset, timestamp, timestamp_type, key, unreadable, headers)
    return Record(offset, timestamp, timestamp_type, key, value, headers)


class _Broken(Exception):
    """Bytes that do not parse as what they should be."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A zigzag varint (up to 64 bits) at buf[pos:end]; the value and the position after it."""
    result = shift = 0
    while True:
        if pos >= end:
            raise _Broken("a number runs past its end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift >= 64:
            raise _Broken("a number is longer than 10 bytes")


def _nullable_bytes(buf: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
    length, pos = _varint(buf, pos, end)
    if length < 0:
        return None, pos
    if pos + length > end:
        raise _Broken(f"a field of {length} bytes runs past its end")
    return bytes(buf[pos : pos + length]), pos + length


def _decompress(codec: int, data: bytes) -> bytes:
    if codec == 0:
        return data
    name = _codec_name(codec)
    decompressed_size(codec, data)
    decode = {
        1: codecs.gzip_decode,
        2: codecs.snappy_decode,
        3: codecs.lz4_decode,
        4: codecs.zstd_decode,
    }[codec]
    try:
        return bytes(decode(bytes(data)))
    except Exception as exc:
        raise _Broken(f"it does not decompress with {name}: {exc!r}") from exc


def _codec_name(codec: int) -> str:
    name = CODECS.get(codec)
    if name is None:
        raise _Broken(f"its compression codec ({codec}) is unknown")
    if not getattr(codecs, f"has_{name}")():
        raise _Broken(f"no library for its compression codec ({name}) is installed")
    return name


_scratch: bytearray | None = None


def decompressed_size(codec: int, data: bytes, limit: int | None = None) -> int:
    """How many bytes a batch body compressed with `codec` holds, found without ever holding
    more than `limit` (default MAX_DECOMPRESSED) of them; raises _Broken when it holds more,
    or does not decompress.

    lz4 and zstd decompress into one reused buffer of `limit` bytes (they stop where it ends;
    its pages are only touched as far as the largest batch reached), gzip through zlib's
    bounded decompressor; snappy declares each block's length up front.
    """
    global _scratch
    limit = MAX_DECOMPRESSED if limit is None else limit
    name = _codec_name(codec)
    too_big = _Broken(f"it decompresses to more than {limit:,} bytes")
    try:
        if codec == 1:
            return _gzip_size(data, limit, too_big)
        if codec == 2:
            return _snappy_size(data, limit, too_big)
        if _scratch is None or len(_scratch) != limit:
            _scratch = bytearray(limit)
        import cramjam

        module = cramjam.lz4 if codec == 3 else cramjam.zstd
        return int(module.decompress_into(bytes(data), memoryview(_scratch)))
    except _Broken:
        raise
    except Exception as exc:
        if "failed to write whole buffer" in str(exc):
            raise too_big from None
        raise _Broken(f"it does not decompress with {name}: {exc!r}") from exc


def _gzip_size(data: bytes, limit: int, too_big: _Broken) -> int:
    import zlib

    total, rest = 0, bytes(data)
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # one gzip member
        total += len(inflater.decompress(rest, limit - total + 1))
        if total > limit or inflater.unconsumed_tail:
            raise too_big
        if not inflater.eof:
            raise _Broken("it does not decompress with gzip: the stream ends early")
        rest = inflater.unused_data
    return total


def _snappy_size(data: bytes, limit: int, too_big: _Broken) -> int:
    """Raw snappy, or Kafka's xerial framing (a 16-byte header, then blocks of a 4-byte length
    and raw snappy): the sum of the lengths each raw block declares up front, in the varint
    that snappy decoders allocate by and check the output against; nothing is decompressed."""
    if not codecs._detect_xerial_stream(data):  # as aiokafka's snappy_decode decides
        return _snappy_declared(data, 0, len(data), limit, too_big)
    total, pos = 0, 16
    while pos < len(data):
        if pos + 4 > len(data):
            raise _Broken("it does not decompress with snappy: a block length is cut off")
        (size,) = struct.unpack_from(">i", data, pos)
        pos += 4
        if size < 0 or pos + size > len(data):
            raise _Broken("it does not decompress with snappy: a block runs past the batch")
        total += _snappy_declared(data, pos, pos + size, limit - total, too_big)
        pos += size
    return total


def _snappy_declared(data: bytes, pos: int, end: int, limit: int, too_big: _Broken) -> int:
    length = shift = 0
    while True:
        if pos >= end or shift > 28:
            raise _Broken("it does not decompress with snappy: no length at a block's start")
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    if length > limit:
        raise too_big
    return length


def _last_offset_delta(raw: bytes) -> int:
    if len(raw) < LAST_OFFSET_DELTA_AT + 4:
        return 0
    return int(struct.unpack_from(">i", raw, LAST_OFFSET_DELTA_AT)[0])


def _range(first: int, last: int, timestamp: int, raw: bytes, why: str) -> Record:
    """One unreadable record standing for offsets first..last, at the last (so that
    aiokafka's position moves past all of them)."""
    span = f"offset {last}" if first == last else f"offsets {first}-{last}"
    reason = f"{why}; nothing could be read of {span}, the raw bytes are kept"
    return Record(last, timestamp, 0, None, Unreadable(reason, bytes(raw)), [])


def _unreadable(record: Record, why: str) -> Record:
    """`record` as unreadable for `why` (and for its own reason, if it has one)."""
    value = record.value
    if isinstance(value, Unreadable):
        why, value = f"{why}; {value.reason}", value.value
    return Record(
        record.offset,
        record.timestamp,
        record.timestamp_type,
        record.key,
        Unreadable(why, value),
        record.headers,
    )


def _read_legacy(raw: bytes, magic: int, base_offset: int) -> Any:
    """A v0/v1 message set (brokers before Kafka 4): aiokafka's reader, or one range."""
    try:
        batch = legacy_records.LegacyRecordBatch(raw, magic)
        if not batch.validate_crc():
            raise ValueError("its CRC does not match its bytes")
        compressed = _legacy_compressed(raw, magic)
        if compressed is not None:
            decompressed_size(*compressed)  # bounded, as for v2 batches
        records = list(batch)
    except Exception as exc:
        return damaged(base_offset, 0, raw, f"legacy message set (magic {magic}): {exc}")
    last = records[-1].offset if records else base_offset
    return Batch(base_offset, last + 1, records)


def _legacy_compressed(raw: bytes, magic: int) -> tuple[int, bytes] | None:
    """The codec and compressed value of a v0/v1 wrapper message (offset, size, crc, magic,
    attributes, v1's timestamp, key, value); None when it is not compressed."""
    codec = raw[17] & CODEC_MASK
    if not codec:
        return None
    pos = 18 + (8 if magic == 1 else 0)
    (key_size,) = struct.unpack_from(">i", raw, pos)
    pos += 4 + max(key_size, 0)
    (value_size,) = struct.unpack_from(">i", raw, pos)
    pos += 4
    return codec, raw[pos : pos + max(value_size, 0)]
