"""Hostile writer schemas (tests/hostile_schemas.py): each is refused before it decodes
anything, as `invalid_schema`; the schemas within the bounds still decode."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import parse_schema

from course_audit.ingest import decode as decode_module
from course_audit.ingest.decode import Decoder
from course_audit.model import EVENT_RECORDS, Decoded, ErrorCode, Rejection
from course_audit.produce.encode import Encoder, avro_binary, event_from_json
from course_audit.retry import Backoff
from course_audit.wire.framing import frame_confluent
from course_audit.wire.registry import MAX_ANSWER_BYTES, RegistryClient, RegistryUnavailable
from course_audit.wire.schemas import (
    BUILTIN_SCHEMA_DIR,
    SchemaCatalog,
    SchemaError,
    builtin_catalog,
)
from hostile_schemas import HOSTILE, event_with, record, zigzag
from registry_stub import RegistryStub

FAST_RETRY = Backoff(first=0.001, cap=0.005)


@pytest.fixture
async def stub() -> AsyncIterator[RegistryStub]:
    async with RegistryStub() as registry:
        for i, (text, _, _) in enumerate(HOSTILE.values(), start=100):
            registry.register(i, text)
        yield registry


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_a_hostile_registry_schema_is_an_invalid_schema_rejection(
    stub: RegistryStub, kind: str
) -> None:
    schema_id = 100 + list(HOSTILE).index(kind)
    _, datum, reason = HOSTILE[kind]
    async with RegistryClient(stub.url, retry=FAST_RETRY) as client:
        decoder = Decoder(builtin_catalog(), client)
        value = frame_confluent(schema_id, datum)
        result = await decoder.decode(value)
        assert isinstance(result, Rejection), result
        assert result.code is ErrorCode.INVALID_SCHEMA, result
        assert f"schema registry id {schema_id}: " in result.message
        assert reason in result.message, result.message
        # Remembered: the next message with this id is answered without the registry.
        assert decoder.decode_sync(value) == result
    assert stub.requests == [schema_id]


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_schema_file_stops_start_up_naming_the_file(tmp_path: Path, kind: str) -> None:
    text, _, reason = HOSTILE[kind]
    path = tmp_path / "course_audit.CourseUpdated.avsc"
    path.write_text(text)
    with pytest.raises(SchemaError) as failure:
        SchemaCatalog([tmp_path])
    assert str(path) in str(failure.value)
    assert reason in str(failure.value), failure.value


def test_every_builtin_schema_is_within_the_bounds() -> None:
    catalog = builtin_catalog()
    encoder = Encoder(catalog)
    for name in EVENT_RECORDS.values():
        writer = catalog.parse_writer(encoder.schema_json(name), source="test")
        assert writer.fingerprint == catalog.reader(name).fingerprint  # type: ignore[union-attr]
        # Decoded from a plain buffer: the hot path pays nothing for the bounds.
        assert writer.strict_reads is False
        assert catalog.reader(name).strict_reads is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("items", "filler"),
    [
        # Each item takes at least one byte: a huge block count ends at the datum's end.
        (["null"], b"\x00" * 50),
        ({"type": "enum", "name": "One", "symbols": ["ONLY"]}, b"\x00" * 50),
        ({"type": "array", "items": "long"}, b"\x00" * 50),
        # Skipped by fastavro without looking for the datum's end: they looped for 2^62 items.
        ("boolean", b"\x00" * 50),
        ("float", b"\x00" * 50),
        ("double", b"\x00" * 50),
        ({"type": "fixed", "name": "Two", "size": 2}, b"\x00" * 50),
        (record("Flag", [("on", "boolean"), ("off", "null")]), b"\x00" * 50),
    ],
)
async def test_repeated_items_of_at_least_one_byte_are_accepted_and_end_with_the_datum(
    stub: RegistryStub, items: Any, filler: bytes
) -> None:
    stub.register(7, event_with({"type": "array", "items": items}, []))
    stub.register(8, event_with({"type": "map", "values": "null"}, {}))  # keys take a byte
    async with RegistryClient(stub.url, retry=FAST_RETRY) as client:
        decoder = Decoder(builtin_catalog(), client)
        for schema_id in (7, 8):
            result = await decoder.decode(frame_confluent(schema_id, zigzag(2**62) + filler))
            assert isinstance(result, Rejection), result
            assert result.code is ErrorCode.AVRO_DECODE_ERROR, result


UPDATED_EVENT = {
    "event_type": "updated",
    "event_id": "3f1c7a52-8a3e-4b5e-9d1e-1f2a3b4c5d6e",
    "created_at": "2024-05-01T12:00:00Z",
    "event_source": "api",
    "course": {"id": 1, "account_id": 2, "root_account_id": 3},
    "changes": {"name": ["a", "b"]},
}


@pytest.mark.parametrize(
    ("items", "x", "strict"),
    [
        ("string", ["one", "two"], False),
        ("boolean", [True, False, True], True),
        ("double", [0.5, 1.5], True),
        ({"type": "fixed", "name": "Two", "size": 2}, [b"ab", b"cd"], True),
        (record("Flag", [("on", "boolean")]), [{"on": True}], True),
        (
            record("Tagged", [("on", "boolean"), ("tag", "string")]),
            [{"on": True, "tag": "t"}],
            False,
        ),
    ],
)
async def test_a_compatible_registry_schema_with_an_array_still_decodes(
    stub: RegistryStub, items: Any, x: list[Any], strict: bool
) -> None:
    # As a producer would register it: self-contained, one more field (an array) first. The
    # reader schema lacks the field, so fastavro skips it.
    writer = json.loads(Encoder().schema_json("updated"))
    writer["fields"].insert(
        0, {"name": "x", "type": {"type": "array", "items": items}, "default": []}
    )
    stub.register(9, writer)
    assert builtin_catalog().parse_writer(json.dumps(writer), source="t").strict_reads is strict
    name, datum = event_from_json(UPDATED_EVENT)
    value = frame_confluent(9, avro_binary(parse_schema(writer), {**datum, "x": x}))
    async with RegistryClient(stub.url, retry=FAST_RETRY) as client:
        decoder = Decoder(builtin_catalog(), client)
        result = await decoder.decode(value)
        assert isinstance(result, Decoded), result
        assert result.record_name == name and "x" not in result.datum
        assert result.datum["changes"] == {"name": {"old": "a", "new": "b"}}
        for cut in (1, 3):
            short = decoder.decode_sync(value[:-cut])
            assert isinstance(short, Rejection) and short.code is ErrorCode.AVRO_DECODE_ERROR


def test_a_referenced_name_is_never_a_path(tmp_path: Path) -> None:
    # A valid record outside the schema directories, named by a relative path from them.
    (tmp_path / "Outside.avsc").write_text(json.dumps(record("Outside", [("a", "long")])))
    relative = os.path.relpath(tmp_path / "Outside", BUILTIN_SCHEMA_DIR)
    assert relative.startswith("..")
    text = json.dumps(event_with(["null", relative]))
    with pytest.raises(SchemaError, match="not a valid Avro schema"):
        builtin_catalog().parse_writer(text, source="schema registry id 3")


# --- what the registry answers -------------------------------------------------------------


async def test_an_oversized_or_deeply_nested_registry_answer_is_an_invalid_schema(
    stub: RegistryStub,
) -> None:
    stub.schemas[20] = b'{"schema": "' + b"x" * MAX_ANSWER_BYTES + b'"}'
    stub.schemas[21] = b'{"schema": "\\"long\\"", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    async with RegistryClient(stub.url, retry=FAST_RETRY) as client:
        decoder = Decoder(builtin_catalog(), client)
        large = await decoder.decode(frame_confluent(20, b"\x00"))
        deep = await decoder.decode(frame_confluent(21, b"\x00"))
    assert isinstance(large, Rejection) and large.code is ErrorCode.INVALID_SCHEMA
    assert f"larger than {MAX_ANSWER_BYTES} bytes" in large.message
    assert isinstance(deep, Rejection) and deep.code is ErrorCode.INVALID_SCHEMA
    assert "nests too deep" in deep.message


@pytest.mark.parametrize(
    "answer", [b"<html>maintenance</html>", b'{"error": "no schema here"}', b'["schema"]']
)
async def test_a_garbled_registry_answer_is_an_outage_not_a_dead_letter(
    stub: RegistryStub, answer: bytes
) -> None:
    # Most likely a proxy or a wrong URL answering 200: retried, never a verdict on the id.
    stub.schemas[30] = answer
    async with RegistryClient(stub.url, retry=FAST_RETRY) as client:
        decoder = Decoder(builtin_catalog(), client)
        with pytest.raises(RegistryUnavailable, match="schema id 30"):
            await decoder.fetch_schemas(confluent_values([30]))
        assert decoder.unknown_ids(confluent_values([30])) == {30}


# --- looking ids up: once, concurrently, within bounds -------------------------------------


def confluent_values(ids: list[int]) -> list[bytes | None]:
    return [frame_confluent(i, b"\x00") for i in ids]


async def test_a_batch_of_new_ids_is_fetched_once_each_and_concurrently(
    stub: RegistryStub,
) -> None:
    stub.register(1, Encoder().schema_json("updated"))
    # Answers wait until eight requests are in flight together: one at a time never gets one.
    stub.open_at_in_flight = 8
    unknown = list(range(1000, 1050))
    values = [*confluent_values(unknown * 3 + [1, 1]), None, b"\xc3\x01"]
    async with RegistryClient(stub.url, retry=FAST_RETRY, max_concurrent=8) as client:
        decoder = Decoder(builtin_catalog(), client)
        assert decoder.unknown_ids(values) == {*unknown, 1}
        assert await decoder.fetch_schemas(values) == 51
        assert sorted(stub.requests) == sorted([*unknown, 1])
        assert stub.max_in_flight == 8
        # Now every message is answered without the registry.
        for value in values:
            assert decoder.decode_sync(value) is not None
        assert decoder.unknown_ids(values) == set()
        assert await decoder.fetch_schemas(values) == 0
    assert len(stub.requests) == 51


async def test_the_first_failure_stops_the_fetching(stub: RegistryStub) -> None:
    stub.failures = 10_000
    async with RegistryClient(stub.url, retry=FAST_RETRY, max_concurrent=4) as client:
        decoder = Decoder(builtin_catalog(), client)
        with pytest.raises(RegistryUnavailable, match="HTTP 503"):
            await decoder.fetch_schemas(confluent_values(list(range(500))))
    # Not 500 failing requests, one after the other: at most one per worker.
    assert 1 <= len(stub.requests) <= 4


async def test_answers_received_before_a_failure_are_kept(stub: RegistryStub) -> None:
    text = Encoder().schema_json("updated")
    for i in (2, 3, 4, 5):
        stub.register(i, text)
    stub.unavailable_ids = {4}
    ids = [2, 3, 4, 5]
    async with RegistryClient(stub.url, retry=FAST_RETRY, max_concurrent=1) as client:
        decoder = Decoder(builtin_catalog(), client)
        with pytest.raises(RegistryUnavailable, match="HTTP 503"):
            await decoder.fetch_schemas(confluent_values(ids))
        # One at a time: those asked before 4 are known, 4 and those after it are not.
        answered = set(stub.requests) - {4}
        assert decoder.unknown_ids(confluent_values(ids)) == set(ids) - answered
        stub.unavailable_ids = set()
        assert await decoder.fetch_schemas(confluent_values(ids)) == 4 - len(answered)
        assert decoder.unknown_ids(confluent_values(ids)) == set()
    assert sorted(stub.requests) == [2, 3, 4, 4, 5]


async def test_the_schema_caches_stay_within_their_bounds(
    stub: RegistryStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = Encoder().schema_json("updated")
    for i in range(1, 31):
        stub.register(i, text)
    for i in range(31, 41):
        stub.register(i, "syntax = 'proto3';", "PROTOBUF")
    monkeypatch.setattr(decode_module, "SCHEMA_CACHE_IDS", 12)
    monkeypatch.setattr(decode_module, "SCHEMA_CACHE_CHARS", 5 * len(text))
    monkeypatch.setattr(decode_module, "NOT_FOUND_CACHE_IDS", 7)
    async with RegistryClient(stub.url, retry=FAST_RETRY) as client:
        decoder = Decoder(builtin_catalog(), client)
        # 30 usable schemas, 10 unusable ones, 50 unknown ids.
        await decoder.fetch_schemas(confluent_values(list(range(1, 91))))
        assert len(stub.requests) == 90
        by_id = decoder._by_id
        assert len(by_id) <= 12
        assert sum(1 for known in by_id.values() if not isinstance(known, Rejection)) <= 5
        assert len(decoder._not_found) <= 7
        # A forgotten id is simply fetched again, and still decodes.
        name, datum = event_from_json(UPDATED_EVENT)
        value = Encoder().encode_confluent(1, name, datum)
        assert decoder.decode_sync(value) is None
        result = await decoder.decode(value)
        assert isinstance(result, Decoded) and result.record_name == name
        assert stub.requests.count(1) == 2


def test_a_referenced_file_that_defines_another_name_stops_start_up_naming_it(
    tmp_path: Path,
) -> None:
    # fastavro looked `course_audit.Extra` up again and again (the file defines another name)
    # until the C stack ran out: the process died at start-up.
    extra = tmp_path / "course_audit.Extra.avsc"
    extra.write_text(json.dumps({**record("Other", [("a", "long")]), "namespace": "course_audit"}))
    (tmp_path / "course_audit.CourseUpdated.avsc").write_text(
        json.dumps(event_with(["null", "course_audit.Extra"]))
    )
    with pytest.raises(
        SchemaError, match=r"defines course_audit\.Other, not course_audit\.Extra"
    ) as e:
        SchemaCatalog([tmp_path])
    assert str(extra) in str(e.value)
