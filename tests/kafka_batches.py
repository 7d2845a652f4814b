"""Kafka record batches (format v2) written byte by byte, and sent or read without a client.

Client libraries only write well-formed records; these helpers write what a librdkafka
producer, a damaged disk or a future codec can put in front of the consumer (a header name
that is not UTF-8, a wrong CRC, an unknown codec...). The layout is Kafka's protocol guide,
"Record Batch": https://kafka.apache.org/documentation/#recordbatch
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka import codec as codecs
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.util import calc_crc32c

from waits import eventually

GZIP, SNAPPY, LZ4, ZSTD = 1, 2, 3, 4
CODEC_IDS = {"gzip": GZIP, "snappy": SNAPPY, "lz4": LZ4, "zstd": ZSTD}
COMPRESS = {
    GZIP: codecs.gzip_encode,
    SNAPPY: codecs.snappy_encode,
    LZ4: codecs.lz4_encode,
    ZSTD: codecs.zstd_encode,
}
TIMESTAMP = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def varint(n: int) -> bytes:
    """Kafka's zigzag varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def nullable(data: bytes | None) -> bytes:
    return varint(-1) if data is None else varint(len(data)) + data


@dataclass(frozen=True)
class Rec:
    """One record: header names are bytes, so that they need not be UTF-8."""

    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[bytes, bytes | None]] = field(default_factory=tuple)


def record_bytes(offset_delta: int, rec: Rec) -> bytes:
    body = (
        b"\x00"  # attributes
        + varint(offset_delta)  # timestamp delta: one millisecond per record
        + varint(offset_delta)
        + nullable(rec.key)
        + nullable(rec.value)
        + varint(len(rec.headers))
        + b"".join(nullable(k) + nullable(v) for k, v in rec.headers)
    )
    return varint(len(body)) + body


def batch_bytes(
    records: Sequence[Rec | bytes],
    *,
    base_offset: int = 0,
    codec: int = 0,
    compressed: bytes | None = None,
    magic: int = 2,
    crc: int | None = None,
    count: int | None = None,
    last_offset_delta: int | None = None,
    producer_id: int = -1,
    transactional: bool = False,
) -> bytes:
    """A whole batch; a `bytes` item is put in as an already written record."""
    written = [r if isinstance(r, bytes) else record_bytes(i, r) for i, r in enumerate(records)]
    body = b"".join(written)
    if compressed is not None:
        body = compressed
    elif codec in COMPRESS:
        body = COMPRESS[codec](body)
    n = len(records)
    delta = n - 1 if last_offset_delta is None else last_offset_delta
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            codec | (0x10 if transactional else 0),  # attributes: codec, transactional bit
            delta,
            TIMESTAMP,
            TIMESTAMP + max(n - 1, 0),
            producer_id,
            0 if producer_id >= 0 else -1,  # producer epoch
            0 if producer_id >= 0 else -1,  # base sequence
            n if count is None else count,
        )
        + body
    )
    checksum = calc_crc32c(after_crc) if crc is None else crc
    length = 4 + 1 + 4 + len(after_crc)  # leader epoch, magic, crc, the rest
    return struct.pack(">qiibI", base_offset, length, -1, magic, checksum) + after_crc


async def _leader_client(bootstrap: str, topic: str, partition: int) -> tuple[AIOKafkaClient, int]:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    await client._wait_on_metadata(topic)
    leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
    assert leader is not None and leader >= 0, f"no leader for {topic}-{partition}"
    return client, leader


#: Produce errors after which nothing was appended and a new leader lookup helps: unknown
#: topic or partition, leader not available, not the leader (a topic just created).
RETRIABLE = {3, 5, 6}


async def produce_batch(bootstrap: str, topic: str, partition: int, batch: bytes) -> int:
    """Append one batch, exactly these bytes, with a raw Produce request; its base offset."""

    async def attempt() -> tuple[int, int]:
        client, leader = await _leader_client(bootstrap, topic, partition)
        try:
            request = ProduceRequest(
                transactional_id=None,
                required_acks=-1,
                timeout=10_000,
                topics=[(topic, [(partition, batch)])],
            )
            response = await client.send(leader, request)
        finally:
            await client.close()
        (_, partitions) = response.topics[0]
        _, error_code, offset, *_ = partitions[0]
        return int(error_code), int(offset)

    error_code, offset = await eventually(
        attempt, lambda got: got[0] not in RETRIABLE, 30, f"a leader for {topic}-{partition}"
    )
    assert error_code == 0, f"the broker refused the batch: error {error_code}"
    return offset


async def fetch_raw(bootstrap: str, topic: str, partition: int, offset: int) -> bytes:
    """The record bytes a fetch at `offset` returns, as the broker sends them."""
    client, leader = await _leader_client(bootstrap, topic, partition)
    try:
        request = FetchRequest(
            max_wait_time=100,
            min_bytes=1,
            max_bytes=4 * 1024 * 1024,
            isolation_level=0,
            topics=[(topic, [(partition, offset, 4 * 1024 * 1024)])],
        )
        response = await client.send(leader, request)
    finally:
        await client.close()
    (_, partitions) = response.topics[0]
    _, error_code, _, *part_data = partitions[0]
    assert error_code == 0, f"fetch failed: error {error_code}"
    return bytes(part_data[-1])


def attributes_of(batch: bytes) -> int:
    """The attributes field of the batch at the start of `batch`."""
    return int(struct.unpack_from(">h", batch, 21)[0])
