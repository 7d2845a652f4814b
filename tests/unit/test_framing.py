"""Single-object and Confluent framing (docs/messages.md#framing, #dead-letter-codes)."""

from __future__ import annotations

import pytest

from course_audit.model import ErrorCode, Rejection
from course_audit.wire.framing import (
    ConfluentHeader,
    SingleObjectHeader,
    frame_confluent,
    frame_single_object,
    parse_header,
)

FP = bytes(range(1, 9))


def code(result: object) -> ErrorCode:
    assert isinstance(result, Rejection), result
    assert result.message
    return result.code


def test_single_object_round_trip() -> None:
    value = frame_single_object(FP, b"payload")
    assert value == b"\xc3\x01" + FP + b"payload"
    header = parse_header(value, confluent=False)
    assert header == SingleObjectHeader(FP)
    assert isinstance(header, SingleObjectHeader)
    assert value[header.payload_offset :] == b"payload"


def test_single_object_with_empty_datum_is_a_complete_header() -> None:
    assert parse_header(b"\xc3\x01" + FP, confluent=True) == SingleObjectHeader(FP)


def test_confluent_round_trip() -> None:
    value = frame_confluent(0x01020304, b"payload")
    assert value == b"\x00\x01\x02\x03\x04payload"
    header = parse_header(value, confluent=True)
    assert header == ConfluentHeader(0x01020304)
    assert isinstance(header, ConfluentHeader)
    assert value[header.payload_offset :] == b"payload"
    assert parse_header(frame_confluent(2**32 - 1, b""), confluent=True) == ConfluentHeader(
        2**32 - 1
    )


@pytest.mark.parametrize("value", [None, b""])
def test_empty_value(value: bytes | None) -> None:
    assert code(parse_header(value, confluent=True)) is ErrorCode.EMPTY_VALUE


@pytest.mark.parametrize(
    "value", [b"\x01", b'{"json": 1}', b"\xc3\x02" + FP + b"x", b"\xc3\x00", b"\xff" * 20]
)
def test_unknown_magic_byte(value: bytes) -> None:
    assert code(parse_header(value, confluent=True)) is ErrorCode.UNKNOWN_MAGIC_BYTE


def test_confluent_without_a_registry_is_an_unknown_magic_byte() -> None:
    result = parse_header(frame_confluent(1, b"x"), confluent=False)
    assert code(result) is ErrorCode.UNKNOWN_MAGIC_BYTE
    assert isinstance(result, Rejection) and "registry" in result.message


@pytest.mark.parametrize("value", [b"\xc3", b"\xc3\x01", b"\xc3\x01" + FP[:7]])
def test_truncated_single_object_header(value: bytes) -> None:
    result = parse_header(value, confluent=False)
    assert code(result) is ErrorCode.TRUNCATED_HEADER
    assert isinstance(result, Rejection) and f"{len(value)} bytes" in result.message


@pytest.mark.parametrize("value", [b"\x00", b"\x00\x00\x00\x01"])
def test_truncated_confluent_header(value: bytes) -> None:
    assert code(parse_header(value, confluent=True)) is ErrorCode.TRUNCATED_HEADER


def test_framing_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        frame_single_object(b"\x01" * 7, b"")
    with pytest.raises(ValueError, match="schema id"):
        frame_confluent(2**32, b"")
    with pytest.raises(ValueError, match="schema id"):
        frame_confluent(-1, b"")
