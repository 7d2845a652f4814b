"""Message framings: Avro single-object and the Confluent wire format (docs/messages.md#framing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from course_audit.model import ErrorCode, Rejection

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER_LEN = 10  # magic + 8-byte fingerprint
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_LEN = 5  # magic + 4-byte schema id
_MAX_SCHEMA_ID = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class SingleObjectHeader:
    """An Avro single-object header: the writer schema's CRC-64-AVRO fingerprint."""

    fingerprint: bytes  # 8 bytes, little-endian as on the wire
    payload_offset: ClassVar[int] = SINGLE_OBJECT_HEADER_LEN


@dataclass(frozen=True, slots=True)
class ConfluentHeader:
    """A Confluent wire-format header: the writer schema's registry id."""

    schema_id: int
    payload_offset: ClassVar[int] = CONFLUENT_HEADER_LEN


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02X}" for b in data)


def parse_header(
    value: bytes | None, *, confluent: bool
) -> SingleObjectHeader | ConfluentHeader | Rejection:
    """Read a message's framing header, or say why it has none.

    `confluent` is whether a schema registry is configured (the `00` framing needs one).
    """
    if not value:
        return Rejection(ErrorCode.EMPTY_VALUE, "the message has no value (a tombstone)")
    first = value[0]
    if first == 0xC3:
        size = len(value)
        if size >= 2 and value[1] != 0x01:
            return Rejection(
                ErrorCode.UNKNOWN_MAGIC_BYTE,
                f"the message starts with {_hex(value[:2])}: neither Avro single-object "
                "encoding (C3 01) nor the Confluent wire format (00)",
            )
        if size < SINGLE_OBJECT_HEADER_LEN:
            return Rejection(
                ErrorCode.TRUNCATED_HEADER,
                f"the message is {size} bytes, shorter than the "
                f"{SINGLE_OBJECT_HEADER_LEN}-byte Avro single-object header",
            )
        return SingleObjectHeader(value[2:SINGLE_OBJECT_HEADER_LEN])
    if first == 0x00:
        if not confluent:
            return Rejection(
                ErrorCode.UNKNOWN_MAGIC_BYTE,
                "the message starts with 00 (Confluent wire format) but no schema registry is "
                "configured (AUDIT_SCHEMA_REGISTRY_URL)",
            )
        if len(value) < CONFLUENT_HEADER_LEN:
            return Rejection(
                ErrorCode.TRUNCATED_HEADER,
                f"the message is {len(value)} bytes, shorter than the "
                f"{CONFLUENT_HEADER_LEN}-byte Confluent wire-format header",
            )
        return ConfluentHeader(int.from_bytes(value[1:CONFLUENT_HEADER_LEN], "big"))
    return Rejection(
        ErrorCode.UNKNOWN_MAGIC_BYTE,
        f"the message starts with {_hex(value[:2])}: neither Avro single-object encoding "
        "(C3 01) nor the Confluent wire format (00)",
    )


def frame_single_object(fingerprint: bytes, datum: bytes) -> bytes:
    """Frame an Avro binary datum as an Avro single object."""
    if len(fingerprint) != 8:
        raise ValueError(f"a single-object fingerprint is 8 bytes, not {len(fingerprint)}")
    return SINGLE_OBJECT_MAGIC + fingerprint + datum


def frame_confluent(schema_id: int, datum: bytes) -> bytes:
    """Frame an Avro binary datum in the Confluent wire format."""
    if not 0 <= schema_id <= _MAX_SCHEMA_ID:
        raise ValueError(f"a Confluent schema id is a 4-byte unsigned integer, not {schema_id}")
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + datum
