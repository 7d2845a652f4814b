"""The tolerant record reader (ingest/records.py) on batches written byte by byte.

Each batch goes through aiokafka's own fetch-side reader (`PartitionRecords`, which decides
offsets and positions) with `TolerantRecords` in place of its `MemoryRecords`, as `install()`
arranges in the consumer; aiokafka's C reader and its pure-Python one are both exercised.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer import fetcher
from aiokafka.record import default_records, legacy_records

from course_audit.ingest import records
from course_audit.ingest.records import TolerantRecords, Unreadable, unreadable_letter
from course_audit.model import ErrorCode
from kafka_batches import GZIP, LZ4, SNAPPY, ZSTD, Rec, batch_bytes, record_bytes

TP = TopicPartition("course-events", 4)
BAD_NAME = b"trace-\xff\xfe"
GOOD = [Rec(b"v0", key=b"k0"), Rec(b"v1", key=b"k1", headers=[(b"h", b"x")]), Rec(b"v2")]


@pytest.fixture(params=["c", "python"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """aiokafka's batch reader: its C extension (the default here) or its pure-Python one."""
    if request.param == "python":
        monkeypatch.setattr(
            default_records, "DefaultRecordBatch", default_records._DefaultRecordBatchPy
        )
    else:
        assert default_records.DefaultRecordBatch is not default_records._DefaultRecordBatchPy
    return str(request.param)


def consume(data: bytes, fetch_offset: int = 0, aborted: list[Any] | None = None) -> Any:
    """aiokafka's PartitionRecords over `data` read by TolerantRecords: (records, next offset)."""
    partition = fetcher.PartitionRecords(
        TP, TolerantRecords(data), aborted, fetch_offset, None, None, True, fetcher.READ_COMMITTED
    )
    got = list(partition)
    return got, partition.next_fetch_offset


def summary(got: list[Any]) -> list[tuple[Any, ...]]:
    """(offset, key, value or ("unreadable", kept bytes), headers) for each record."""
    out: list[tuple[Any, ...]] = []
    for r in got:
        value = r.value
        if isinstance(value, Unreadable):
            value = ("unreadable", value.value)
        out.append((r.offset, r.key, value, list(r.headers)))
    return out


def reasons(got: list[Any]) -> Iterator[str]:
    return (r.value.reason for r in got if isinstance(r.value, Unreadable))


# ---------------------------------------------------------------- readable batches


def test_a_readable_batch_reads_as_aiokafka_reads_it(reader: str) -> None:
    data = batch_bytes(GOOD, base_offset=10) + batch_bytes([Rec(b"v3")], base_offset=13)
    got, next_offset = consume(data)
    assert summary(got) == [
        (10, b"k0", b"v0", []),
        (11, b"k1", b"v1", [("h", b"x")]),
        (12, None, b"v2", []),
        (13, None, b"v3", []),
    ]
    assert next_offset == 14


@pytest.mark.parametrize("codec", [GZIP, SNAPPY, LZ4, ZSTD])
def test_every_codec_reads(codec: int, reader: str) -> None:
    got, next_offset = consume(batch_bytes(GOOD, codec=codec))
    assert [(r.offset, r.value) for r in got] == [(0, b"v0"), (1, b"v1"), (2, b"v2")]
    assert next_offset == 3


def test_an_incomplete_batch_after_a_complete_one_waits_for_the_next_fetch() -> None:
    second = batch_bytes([Rec(b"v3")], base_offset=3)
    got, next_offset = consume(batch_bytes(GOOD) + second[:-5])
    assert [r.offset for r in got] == [0, 1, 2]
    assert next_offset == 3


# ---------------------------------------------------------------- one unreadable record


@pytest.mark.parametrize("codec", [0, GZIP, SNAPPY, LZ4, ZSTD])
def test_a_header_name_not_utf8_makes_that_record_alone_unreadable(codec: int, reader: str) -> None:
    bad = Rec(b"v1", key=b"k1", headers=[(b"ok", b"a"), (BAD_NAME, b"b"), (b"n", None)])
    data = batch_bytes([GOOD[0], bad, GOOD[2]], base_offset=100, codec=codec)
    got, next_offset = consume(data)
    assert summary(got) == [
        (100, b"k0", b"v0", []),
        (
            101,
            b"k1",
            ("unreadable", b"v1"),
            [("ok", b"a"), ("trace-\\xff\\xfe", b"b"), ("n", None)],
        ),
        (102, None, b"v2", []),
    ]
    assert list(reasons(got)) == [
        "record: header 1 name b'trace-\\xff\\xfe' is not UTF-8 (kept with backslash escapes)"
    ]
    assert next_offset == 103


def test_a_tombstone_with_a_bad_header_name_keeps_its_null_value() -> None:
    got, _ = consume(batch_bytes([Rec(None, key=b"k", headers=[(BAD_NAME, b"b")])]))
    (record,) = got
    assert record.value == Unreadable(record.value.reason, None)
    assert len(record.value) == 0


def test_a_record_that_does_not_parse_stands_alone(reader: str) -> None:
    # Delimited (its length is right) but a negative header count inside.
    body = (
        b"\x00" + b"\x02" + b"\x02" + b"\x01" + b"\x01" + b"\x03"
    )  # ..., key null, value null, -2 headers
    broken = bytes([len(body) * 2]) + body
    data = batch_bytes([record_bytes(0, GOOD[0]), broken, record_bytes(2, GOOD[2])])
    got, next_offset = consume(data)
    assert summary(got) == [
        (0, b"k0", b"v0", []),
        (1, None, ("unreadable", broken), []),
        (2, None, b"v2", []),
    ]
    assert list(reasons(got)) == ["record: its header count (-2) is negative"]
    assert next_offset == 3


def test_a_record_that_runs_past_the_batch_makes_the_rest_one_range(reader: str) -> None:
    runaway = b"\x7e" + b"\x00\x00"  # says 63 bytes follow, 2 do
    data = batch_bytes([record_bytes(0, GOOD[0]), runaway, b""], last_offset_delta=4, count=5)
    got, next_offset = consume(data)
    assert summary(got) == [(0, b"k0", b"v0", []), (4, None, ("unreadable", runaway), [])]
    assert list(reasons(got)) == [
        "record: its length (63) runs past the batch; nothing could be read of offsets 1-4, "
        "the raw bytes are kept"
    ]
    assert next_offset == 5


# ---------------------------------------------------------------- damaged batches


def test_a_crc_mismatch_keeps_every_record_as_unreadable(reader: str) -> None:
    data = bytearray(batch_bytes(GOOD, base_offset=7))
    at = data.index(b"v1")
    data[at : at + 2] = b"V1"  # damaged after the CRC was computed
    got, next_offset = consume(bytes(data))
    assert summary(got) == [
        (7, b"k0", ("unreadable", b"v0"), []),
        (8, b"k1", ("unreadable", b"V1"), [("h", b"x")]),
        (9, None, ("unreadable", b"v2"), []),
    ]
    assert set(reasons(got)) == {
        "record batch: its CRC does not match its bytes (damaged in storage)"
    }
    assert next_offset == 10


def test_a_crc_mismatch_names_both_reasons_of_a_record_that_is_unreadable_anyway() -> None:
    bad = Rec(b"v1", headers=[(BAD_NAME, b"")])
    data = batch_bytes([GOOD[0], bad], crc=0)
    got, _ = consume(data)
    assert summary(got) == [
        (0, b"k0", ("unreadable", b"v0"), []),
        (1, None, ("unreadable", b"v1"), [("trace-\\xff\\xfe", b"")]),
    ]
    assert list(reasons(got))[1] == (
        "record batch: its CRC does not match its bytes (damaged in storage); "
        "record: header 0 name b'trace-\\xff\\xfe' is not UTF-8 (kept with backslash escapes)"
    )


def test_an_unknown_codec_makes_the_batch_one_range_at_its_last_offset(reader: str) -> None:
    data = batch_bytes(GOOD, base_offset=20, codec=5, compressed=b"whatever codec 5 is")
    got, next_offset = consume(data)
    assert summary(got) == [(22, None, ("unreadable", data), [])]
    assert list(reasons(got)) == [
        "record batch: its compression codec (5) is unknown; nothing could be read of "
        "offsets 20-22, the raw bytes are kept"
    ]
    assert next_offset == 23


@pytest.mark.parametrize("codec", [GZIP, SNAPPY, LZ4, ZSTD])
def test_data_that_does_not_decompress_makes_the_batch_one_range(codec: int, reader: str) -> None:
    data = batch_bytes(GOOD, codec=codec, compressed=b"\x00not compressed at all\xff" * 3)
    got, next_offset = consume(data)
    assert summary(got) == [(2, None, ("unreadable", data), [])]
    (reason,) = reasons(got)
    assert reason.startswith("record batch: it does not decompress with ")
    assert next_offset == 3


@pytest.mark.parametrize("codec", [GZIP, SNAPPY, LZ4, ZSTD])
def test_a_batch_that_decompresses_beyond_the_bound_is_one_range(
    codec: int, reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decompression bomb: a few KB that hold more than MAX_DECOMPRESSED. The batches on
    either side of it in the same fetch are read as usual."""
    monkeypatch.setattr(records, "MAX_DECOMPRESSED", 1 << 20)
    bomb = batch_bytes([Rec(b"k" * 10), Rec(bytes(3 << 20)), Rec(b"z")], base_offset=3, codec=codec)
    assert len(bomb) < 200_000  # 3 MiB of zeros, compressed
    data = (
        batch_bytes(GOOD, codec=codec)
        + bomb
        + batch_bytes([Rec(b"after")], base_offset=6, codec=codec)
    )
    got, next_offset = consume(data)
    assert summary(got) == [
        *summary(consume(batch_bytes(GOOD))[0]),
        (5, None, ("unreadable", bomb), []),
        (6, None, b"after", []),
    ]
    assert list(reasons(got)) == [
        "record batch: it decompresses to more than 1,048,576 bytes; nothing could be read of "
        "offsets 3-5, the raw bytes are kept"
    ]
    assert next_offset == 7


@pytest.mark.parametrize("codec", [GZIP, SNAPPY, LZ4, ZSTD])
def test_a_batch_of_exactly_the_bound_reads(
    codec: int, reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = bytes(range(256)) * 2000
    plain = batch_bytes([Rec(value), Rec(b"v")])
    body_size = len(plain) - 61  # the records, as the batch holds them uncompressed
    monkeypatch.setattr(records, "MAX_DECOMPRESSED", body_size)
    got, next_offset = consume(batch_bytes([Rec(value), Rec(b"v")], codec=codec))
    assert summary(got) == [(0, None, value, []), (1, None, b"v", [])]
    assert next_offset == 2
    monkeypatch.setattr(records, "MAX_DECOMPRESSED", body_size - 1)
    got, _ = consume(batch_bytes([Rec(value), Rec(b"v")], codec=codec))
    assert [r.offset for r in got] == [1] and isinstance(got[0].value, Unreadable)


def test_raw_snappy_is_measured_by_its_declared_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snappy without the xerial framing (some clients send it so): one raw block."""
    import cramjam

    body = b"".join(record_bytes(i, Rec(bytes(5000))) for i in range(2))
    data = batch_bytes(
        [Rec(b"")] * 2, codec=SNAPPY, compressed=bytes(cramjam.snappy.compress_raw(body))
    )
    got, _ = consume(data)
    assert [r.value for r in got] == [bytes(5000)] * 2
    monkeypatch.setattr(records, "MAX_DECOMPRESSED", len(body) - 1)
    got, _ = consume(data)
    assert [r.offset for r in got] == [1] and isinstance(got[0].value, Unreadable)


def test_gzip_of_several_members_reads_and_counts_them_all(monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    body = b"".join(record_bytes(i, Rec(bytes([65 + i]) * 1000)) for i in range(3))
    members = gzip.compress(body[:1500]) + gzip.compress(body[1500:])
    data = batch_bytes([Rec(b"")] * 3, codec=GZIP, compressed=members)
    got, _ = consume(data)
    assert [r.value for r in got] == [b"A" * 1000, b"B" * 1000, b"C" * 1000]
    monkeypatch.setattr(records, "MAX_DECOMPRESSED", len(body) - 1)
    got, _ = consume(data)
    assert [r.offset for r in got] == [2] and isinstance(got[0].value, Unreadable)


def test_without_the_codec_library_a_batch_is_one_range_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiokafka import codec

    data = batch_bytes(GOOD, codec=ZSTD)
    monkeypatch.setattr(codec, "cramjam", None)
    got, next_offset = consume(data)
    assert summary(got) == [(2, None, ("unreadable", data), [])]
    assert list(reasons(got)) == [
        "record batch: no library for its compression codec (zstd) is installed; nothing could "
        "be read of offsets 0-2, the raw bytes are kept"
    ]
    assert next_offset == 3


def test_a_failure_of_the_reader_itself_is_one_range_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(raw: bytes) -> None:
        raise MemoryError("as if")

    monkeypatch.setattr(records, "read_batch", broken)
    first, second = batch_bytes(GOOD, base_offset=5), batch_bytes([Rec(b"v3")], base_offset=8)
    got, next_offset = consume(first + second)
    assert summary(got) == [
        (7, None, ("unreadable", first), []),
        (8, None, ("unreadable", second), []),
    ]
    assert next(reasons(got)) == (
        "record batch: reading it failed: MemoryError('as if'); nothing could be read of "
        "offsets 5-7, the raw bytes are kept"
    )
    assert next_offset == 9


def test_a_first_batch_longer_than_the_fetch_is_one_range_not_record_too_large() -> None:
    whole = batch_bytes(GOOD, base_offset=40)
    got, next_offset = consume(whole[:-10], fetch_offset=41)
    assert summary(got) == [(42, None, ("unreadable", whole[:-10]), [])]
    (reason,) = reasons(got)
    assert reason.startswith(f"record batch: its length field says {len(whole) - 12} bytes, but")
    assert next_offset == 43


@pytest.mark.parametrize("length", [-1, 0, 48])
def test_an_impossible_batch_length_is_one_range(length: int) -> None:
    data = bytearray(batch_bytes(GOOD, base_offset=50))
    struct.pack_into(">i", data, 8, length)
    got, next_offset = consume(bytes(data))
    assert summary(got) == [(52, None, ("unreadable", bytes(data)), [])]
    assert list(reasons(got)) == [
        f"record batch: its length field ({length} bytes) is impossible; nothing could be read "
        "of offsets 50-52, the raw bytes are kept"
    ]
    assert next_offset == 53


def test_an_unknown_batch_format_is_one_range_and_the_next_batch_is_read() -> None:
    first = bytearray(batch_bytes(GOOD))
    first[16] = 3  # magic
    got, next_offset = consume(bytes(first) + batch_bytes([Rec(b"v3")], base_offset=3))
    assert summary(got) == [(2, None, ("unreadable", bytes(first)), []), (3, None, b"v3", [])]
    (reason,) = reasons(got)
    assert reason.startswith("record batch: its format (magic byte 3) is unknown")
    assert next_offset == 4


def _legacy(magic: int) -> bytes:
    """Two messages in format v0 or v1 (brokers before Kafka 4), as aiokafka writes them."""
    builder = legacy_records.LegacyRecordBatchBuilder(magic, 0, 1 << 20)
    builder.append(0, timestamp=None if magic == 0 else 1000, key=b"k", value=b"v0")
    builder.append(1, timestamp=None if magic == 0 else 1000, key=None, value=b"v1")
    return bytes(builder.build())


@pytest.mark.parametrize("magic", [0, 1])
def test_legacy_messages_read_as_aiokafka_reads_them(magic: int) -> None:
    got, next_offset = consume(_legacy(magic))
    assert summary(got) == [(0, b"k", b"v0", []), (1, None, b"v1", [])]
    assert next_offset == 2


@pytest.mark.parametrize("magic", [0, 1])
def test_a_legacy_message_set_beyond_the_bound_is_one_range(
    magic: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    builder = legacy_records.LegacyRecordBatchBuilder(magic, GZIP, 1 << 24)
    for offset in range(2):
        builder.append(
            offset, timestamp=None if magic == 0 else 1000, key=None, value=bytes(1 << 20)
        )
    data = bytes(builder.build())
    got, _ = consume(data)
    assert [r.value for r in got] == [bytes(1 << 20)] * 2
    monkeypatch.setattr(records, "MAX_DECOMPRESSED", 1 << 20)
    got, next_offset = consume(data)
    # At the wrapper's offset (a broker writes the last inner one there; aiokafka's builder 0).
    assert next_offset == 1
    assert [(r.offset, type(r.value).__name__) for r in got] == [(0, "Unreadable")]
    assert next(reasons(got)) == (
        f"record batch: legacy message set (magic {magic}): it decompresses to more than "
        "1,048,576 bytes; nothing could be read of offset 0, the raw bytes are kept"
    )


def test_a_damaged_legacy_message_is_one_range_and_the_next_is_read() -> None:
    data = bytearray(_legacy(1))
    data[data.index(b"v0")] = ord("V")  # under the message's CRC
    got, next_offset = consume(bytes(data))
    assert [(r.offset, type(r.value).__name__) for r in got] == [(0, "Unreadable"), (1, "bytes")]
    assert next(reasons(got)).startswith(
        "record batch: legacy message set (magic 1): its CRC does not match its bytes"
    )
    assert next_offset == 2


def test_a_range_after_the_fetch_offset_is_not_skipped() -> None:
    # Fetching from the middle of a batch that cannot be read: its one dead letter is at its
    # last offset, which aiokafka does not skip as already read.
    data = batch_bytes(GOOD, codec=6, compressed=b"?")
    got, next_offset = consume(data, fetch_offset=1)
    assert [r.offset for r in got] == [2]
    assert next_offset == 3


# ---------------------------------------------------------------- transactions


def test_an_unreadable_record_of_an_aborted_transaction_is_never_seen(reader: str) -> None:
    bad = Rec(b"v1", headers=[(BAD_NAME, b"")])
    aborted_batch = batch_bytes([GOOD[0], bad], producer_id=77, transactional=True)
    later = batch_bytes([Rec(b"v2")], base_offset=2)
    got, next_offset = consume(aborted_batch + later, aborted=[(77, 0)])
    assert summary(got) == [(2, None, b"v2", [])]
    assert next_offset == 3


# ---------------------------------------------------------------- the hook and the letter


def test_install_puts_the_tolerant_reader_in_aiokafkas_fetcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aiokafka reads fetched partitions through these module-level names: if a new version
    # stops doing so, this fails rather than the hook silently doing nothing.
    assert fetcher.MemoryRecords.__module__.startswith("aiokafka.")
    assert callable(fetcher.PartitionRecords)
    monkeypatch.setattr(fetcher, "MemoryRecords", fetcher.MemoryRecords)
    records.install()
    records.install()
    assert fetcher.MemoryRecords is TolerantRecords


def test_install_refuses_an_aiokafka_without_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(fetcher, "MemoryRecords")
    with pytest.raises(RuntimeError, match="must be adapted to this aiokafka version"):
        records.install()


def test_the_dead_letter_keeps_where_it_was_and_what_was_recovered() -> None:
    bad = Rec(b"value", key=b"key", headers=[(BAD_NAME, b"b")])
    (record,) = consume(batch_bytes([bad], base_offset=9))[0]
    before = datetime.now(UTC)
    letter = unreadable_letter(TP.topic, TP.partition, record)
    assert letter.code is ErrorCode.UNREADABLE_RECORD
    assert letter.message == record.value.reason
    s = letter.source
    assert (s.topic, s.partition, s.offset, s.key, s.value) == (TP.topic, 4, 9, b"key", b"value")
    assert s.headers == (("trace-\\xff\\xfe", b"b"),)
    assert letter.failed_at >= before
