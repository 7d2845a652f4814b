"""Decoding message bytes into resolved datums, and every decode-stage rejection."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import load_schema

from course_audit.ingest.decode import Decoder
from course_audit.ingest.validate import to_event
from course_audit.model import (
    EVENT_RECORDS,
    RELATED_COURSE_TYPES,
    Decoded,
    ErrorCode,
    Event,
    Rejection,
)
from course_audit.produce.encode import Encoder, avro_binary, event_from_json, single_object
from course_audit.retry import Backoff
from course_audit.wire.framing import frame_confluent, frame_single_object
from course_audit.wire.registry import RegistryClient, RegistryUnavailable
from course_audit.wire.schemas import BUILTIN_SCHEMA_DIR, SchemaCatalog, builtin_catalog
from registry_stub import RegistryStub
from waits import eventually, within

FAST_RETRY = Backoff(first=0.001, cap=0.005)
CREATED_AT_MS = 1714564800123  # 2024-05-01T12:00:00.123Z


def sample(event_type: str, **overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "event_type": event_type,
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, event_type)),
        "created_at": "2024-05-01T12:00:00.123Z",
        "event_source": "api",
        "course": {"id": 101, "account_id": 7, "root_account_id": 1, "name": "Biology"},
        "user": {"id": 42, "name": "Jane Doe", "login_id": "jdoe"},
        "page_view": {"id": "3f1c7a52-8a3e-4b5e-9d1e-1f2a3b4c5d6e", "interaction_seconds": 1.5},
        "sis_batch_id": 9,
    }
    if event_type in ("created", "updated"):
        obj["changes"] = {
            "name": ["Bio", "Biology"],
            "is_public": [False, True],
            "enrollment_term_id": [1, 2],
            "grade_weight": [0.5, 1.5],
        }
    if event_type == "created":
        obj["created_source"] = "course_copy"
    if event_type in RELATED_COURSE_TYPES:
        obj[event_type] = {"id": 202, "account_id": 7, "root_account_id": 1}
    obj.update(overrides)
    return obj


def encoded(event_type: str, **overrides: Any) -> bytes:
    name, datum = event_from_json(sample(event_type, **overrides))
    return Encoder().encode_single_object(name, datum)


def rejected(result: object, code: ErrorCode) -> Rejection:
    assert isinstance(result, Rejection), result
    assert result.code is code, result
    assert result.message
    return result


@pytest.fixture
def decoder() -> Decoder:
    return Decoder(builtin_catalog())


@pytest.mark.parametrize("event_type", list(EVENT_RECORDS))
def test_every_event_type_round_trips(decoder: Decoder, event_type: str) -> None:
    result = decoder.decode_sync(encoded(event_type))
    assert isinstance(result, Decoded)
    assert result.record_name == EVENT_RECORDS[event_type]
    datum = result.datum
    assert datum["event_id"] == str(uuid.uuid5(uuid.NAMESPACE_URL, event_type))
    assert datum["created_at"] == CREATED_AT_MS
    assert datum["event_source"] == "api"
    assert datum["course"]["id"] == 101 and datum["course"]["name"] == "Biology"
    assert datum["course"]["license"] is None
    assert datum["user"]["login_id"] == "jdoe"
    assert datum["page_view"]["interaction_seconds"] == 1.5
    assert datum["sis_batch_id"] == 9
    if event_type in ("created", "updated"):
        assert datum["changes"] == {
            "name": {"old": "Bio", "new": "Biology"},
            "is_public": {"old": False, "new": True},
            "enrollment_term_id": {"old": 1, "new": 2},
            "grade_weight": {"old": 0.5, "new": 1.5},
        }
    if event_type in RELATED_COURSE_TYPES:
        assert datum[event_type]["id"] == 202
    event = to_event(result)
    assert isinstance(event, Event) and event.event_type == event_type


async def test_async_decode_answers_single_object_too(decoder: Decoder) -> None:
    result = await decoder.decode(encoded("published"))
    assert isinstance(result, Decoded) and result.record_name == "course_audit.CoursePublished"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, ErrorCode.EMPTY_VALUE),
        (b"", ErrorCode.EMPTY_VALUE),
        (b"\x7b\x22", ErrorCode.UNKNOWN_MAGIC_BYTE),
        (frame_confluent(1, b"\x02"), ErrorCode.UNKNOWN_MAGIC_BYTE),  # no registry
        (b"\xc3\x01\x00", ErrorCode.TRUNCATED_HEADER),
        (frame_single_object(b"\xee" * 8, b"\x00"), ErrorCode.UNKNOWN_SCHEMA),
    ],
)
async def test_header_and_schema_rejections(
    decoder: Decoder, value: bytes | None, code: ErrorCode
) -> None:
    rejected(decoder.decode_sync(value), code)
    rejected(await decoder.decode(value), code)


def test_a_known_schema_that_is_not_an_event_record(decoder: Decoder) -> None:
    catalog = builtin_catalog()
    course = {"id": 1, "account_id": 2, "root_account_id": 3}
    # The datum decodes fine with its schema; it is still not an event.
    value = single_object(catalog.schema("course_audit.Course"), course)
    result = rejected(decoder.decode_sync(value), ErrorCode.NOT_AN_EVENT_TYPE)
    assert "course_audit.Course" in result.message


def test_an_extra_dir_record_that_is_not_an_event(tmp_path: Path) -> None:
    schema = {"type": "record", "name": "Thing", "namespace": "other", "fields": []}
    (tmp_path / "other.Thing.avsc").write_text(json.dumps(schema))
    decoder = Decoder(SchemaCatalog([tmp_path]))
    value = single_object(load_schema(str(tmp_path / "other.Thing.avsc")), {})
    result = rejected(decoder.decode_sync(value), ErrorCode.NOT_AN_EVENT_TYPE)
    assert "other.Thing" in result.message


def test_truncated_datum(decoder: Decoder) -> None:
    value = encoded("updated")
    for cut in (1, 5, len(value) - 11):
        rejected(decoder.decode_sync(value[:-cut]), ErrorCode.AVRO_DECODE_ERROR)


def test_trailing_bytes_after_a_valid_datum(decoder: Decoder) -> None:
    result = rejected(
        decoder.decode_sync(encoded("deleted") + b"\x00\x01"), ErrorCode.AVRO_DECODE_ERROR
    )
    assert "2 unexpected bytes" in result.message


def test_garbage_datum_with_a_known_fingerprint(decoder: Decoder) -> None:
    reader = builtin_catalog().reader("course_audit.CourseUpdated")
    assert reader is not None
    value = frame_single_object(reader.fingerprint, b"\xff" * 40)
    rejected(decoder.decode_sync(value), ErrorCode.AVRO_DECODE_ERROR)


def test_a_bad_uuid_or_timestamp_reaches_validation(decoder: Decoder) -> None:
    result = decoder.decode_sync(
        encoded("concluded", event_id="e2b76430-27a5-4131-9ca1-48e0eb13f29b")
    )
    assert isinstance(result, Decoded)
    # Not valid as a UUID: the decoder must not choke on it (it is a validation matter).
    name, datum = event_from_json(sample("concluded"))
    datum["event_id"] = "not-a-uuid"
    datum["created_at"] = 2**62
    result = decoder.decode_sync(Encoder().encode_single_object(name, datum))
    assert isinstance(result, Decoded)
    assert result.datum["event_id"] == "not-a-uuid" and result.datum["created_at"] == 2**62
    rejected(to_event(result), ErrorCode.INVALID_EVENT_ID)
    datum["event_id"] = str(uuid.uuid4())
    result = decoder.decode_sync(Encoder().encode_single_object(name, datum))
    assert isinstance(result, Decoded)
    rejected(to_event(result), ErrorCode.INVALID_CREATED_AT)


# --- schema evolution ---------------------------------------------------------------------


def raw(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((BUILTIN_SCHEMA_DIR / f"{name}.avsc").read_text())
    return schema


def producer_schema(tmp_path: Path, schema: dict[str, Any]) -> Any:
    """The writer schema as a producer holding all the files would load it."""
    producer_dir = tmp_path / "producer"
    producer_dir.mkdir(exist_ok=True)
    for path in BUILTIN_SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, producer_dir)
    name = f"{schema['namespace']}.{schema['name']}"
    (producer_dir / f"{name}.avsc").write_text(json.dumps(schema))
    return load_schema(str(producer_dir / f"{name}.avsc"))


def test_newer_writer_schema_with_an_added_field(tmp_path: Path) -> None:
    newer = raw("course_audit.CourseUpdated")
    newer["fields"].append(
        {"name": "reason", "type": ["null", "string"], "default": None, "doc": "Why."}
    )
    writer = producer_schema(tmp_path, newer)
    name, datum = event_from_json(sample("updated"))
    value = single_object(writer, {**datum, "reason": "typo fix"})

    # The service has not heard of this schema yet.
    rejected(Decoder(builtin_catalog()).decode_sync(value), ErrorCode.UNKNOWN_SCHEMA)

    # An extra dir holding only the new record (the shared types come from the built-ins).
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "course_audit.CourseUpdated.avsc").write_text(json.dumps(newer))
    result = Decoder(SchemaCatalog([extra])).decode_sync(value)
    assert isinstance(result, Decoded)
    assert result.record_name == name
    assert "reason" not in result.datum
    assert result.datum == datum


def test_older_writer_schema_missing_fields_with_defaults(tmp_path: Path) -> None:
    older = raw("course_audit.CourseRestored")
    older["fields"] = [f for f in older["fields"] if f["name"] not in ("page_view", "sis_batch_id")]
    writer = producer_schema(tmp_path, older)
    _, datum = event_from_json(sample("restored"))
    del datum["page_view"], datum["sis_batch_id"]
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "course_audit.CourseRestored.v1.avsc").write_text(json.dumps(older))
    result = Decoder(SchemaCatalog([extra])).decode_sync(single_object(writer, datum))
    assert isinstance(result, Decoded)
    assert result.datum["page_view"] is None and result.datum["sis_batch_id"] is None
    assert result.datum["user"]["id"] == 42


def test_incompatible_writer_schema_is_a_decode_error(tmp_path: Path) -> None:
    bad = raw("course_audit.CourseDeleted")
    for field in bad["fields"]:
        if field["name"] == "event_source":
            field["type"] = "boolean"
    writer = producer_schema(tmp_path, bad)
    _, datum = event_from_json(sample("deleted"))
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "course_audit.CourseDeleted.avsc").write_text(json.dumps(bad))
    value = single_object(writer, {**datum, "event_source": True})
    rejected(Decoder(SchemaCatalog([extra])).decode_sync(value), ErrorCode.AVRO_DECODE_ERROR)


# --- Confluent wire format with a registry ------------------------------------------------


@pytest.fixture
async def registry() -> AsyncIterator[tuple[RegistryStub, str]]:
    encoder = Encoder()
    async with RegistryStub() as stub:
        stub.register(1, encoder.schema_json("updated"))
        # As a registry may hold it: the shared types by name only, not inline.
        stub.register(2, raw("course_audit.CourseCopiedTo"))
        stub.register(3, raw("course_audit.User"))
        stub.register(4, "syntax = 'proto3';", "PROTOBUF")
        stub.register(5, '{"type": "record", "name": "Broken", "fields": 1}')
        yield stub, stub.url


def confluent(schema_id: int, event_type: str) -> bytes:
    name, datum = event_from_json(sample(event_type))
    return Encoder().encode_confluent(schema_id, name, datum)


async def test_confluent_fetches_then_decodes_synchronously(
    registry: tuple[RegistryStub, str],
) -> None:
    fake, url = registry
    async with RegistryClient(url, retry=FAST_RETRY) as client:
        decoder = Decoder(builtin_catalog(), client)
        value = confluent(1, "updated")
        assert decoder.decode_sync(value) is None  # needs the registry first
        result = await decoder.decode(value)
        assert isinstance(result, Decoded) and result.record_name == "course_audit.CourseUpdated"
        again = decoder.decode_sync(value)
        assert isinstance(again, Decoded) and again.datum == result.datum
        assert fake.requests == [1]

        copied = await decoder.decode(confluent(2, "copied_to"))
        assert isinstance(copied, Decoded) and copied.datum["copied_to"]["id"] == 202


async def test_confluent_rejections(registry: tuple[RegistryStub, str]) -> None:
    fake, url = registry
    async with RegistryClient(url, retry=FAST_RETRY) as client:
        decoder = Decoder(builtin_catalog(), client)
        result = rejected(await decoder.decode(confluent(99, "updated")), ErrorCode.UNKNOWN_SCHEMA)
        assert "99" in result.message
        rejected(await decoder.decode(confluent(99, "updated")), ErrorCode.UNKNOWN_SCHEMA)
        assert fake.requests.count(99) == 1  # "not found" is cached for a while
        user = single_object(builtin_catalog().schema("course_audit.User"), {"id": 5})
        rejected(
            await decoder.decode(b"\x00\x00\x00\x00\x03" + user[10:]), ErrorCode.NOT_AN_EVENT_TYPE
        )
        rejected(await decoder.decode(frame_confluent(4, b"\x00")), ErrorCode.NOT_AN_EVENT_TYPE)
        # Not a usable Avro schema: invalid, not unknown (the registry does know the id).
        rejected(await decoder.decode(frame_confluent(5, b"\x00")), ErrorCode.INVALID_SCHEMA)
        rejected(await decoder.decode(b"\x00\x00\x00"), ErrorCode.TRUNCATED_HEADER)
        value = confluent(1, "updated")
        rejected(await decoder.decode(value + b"\x00"), ErrorCode.AVRO_DECODE_ERROR)
        rejected(await decoder.decode(value[:-3]), ErrorCode.AVRO_DECODE_ERROR)


async def test_registry_failures_are_retried_and_logged(
    registry: tuple[RegistryStub, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = registry
    fake.failures = 2
    caplog.set_level(logging.WARNING, logger="course_audit.wire.registry")
    async with RegistryClient(url, retry=FAST_RETRY) as client:
        result = await Decoder(builtin_catalog(), client).decode(confluent(1, "updated"))
    assert isinstance(result, Decoded)
    assert fake.requests == [1, 1, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "attempt 1" in warnings[0] and "HTTP 503" in warnings[0]
    assert "attempt 2" in warnings[1]


async def test_concurrent_decodes_share_one_request(registry: tuple[RegistryStub, str]) -> None:
    fake, url = registry
    fake.gate = asyncio.Event()  # the registry answers only once every decode is waiting
    async with RegistryClient(url, retry=FAST_RETRY) as client:
        decoder = Decoder(builtin_catalog(), client)
        decodes = [asyncio.create_task(decoder.decode(confluent(1, "updated"))) for _ in range(10)]

        async def requests_seen() -> int:
            return len(fake.requests)

        await eventually(requests_seen, lambda n: n >= 1, 5, "the registry to be asked")
        for _ in range(20):  # every decode gets its turns (loop iterations, not time)
            await asyncio.sleep(0)
        assert not any(d.done() for d in decodes)
        fake.gate.set()
        results = await within(asyncio.gather(*decodes), 5, "the ten decodes")
    assert all(isinstance(r, Decoded) for r in results)
    assert fake.requests == [1]


async def test_unreachable_registry_gives_up_only_under_a_finite_policy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="course_audit.wire.registry")
    # A port bound here and not listening refuses connections, and stays ours (unlike a port
    # found free and let go, which another process could be listening on by the time it is used).
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        url = f"http://user:secret@127.0.0.1:{refusing.getsockname()[1]}"
        policy = Backoff(first=0.001, cap=0.002, max_attempts=3)
        async with RegistryClient(url, retry=policy) as client:
            with pytest.raises(RegistryUnavailable, match="3 attempts"):
                await Decoder(builtin_catalog(), client).decode(confluent(1, "updated"))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert all("secret" not in m for m in messages)


def test_backoff_grows_exponentially_up_to_a_cap() -> None:
    policy = Backoff(first=0.5, cap=4.0, multiplier=2.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay(10_000) == 4.0  # no overflow however long an outage lasts
    jittery = Backoff(first=1.0, cap=1.0, jitter=0.5)
    delays = [jittery.delay(3) for _ in range(200)]
    assert all(1.0 <= d <= 1.5 for d in delays)
    assert len(set(delays)) > 1  # jitter actually varies the delay


def test_backoff_gives_up_only_with_a_limit() -> None:
    assert not Backoff().gives_up_after(10**6)
    limited = Backoff(max_attempts=3)
    assert [limited.gives_up_after(n) for n in (1, 2, 3)] == [False, False, True]


# --- fuzzing ------------------------------------------------------------------------------


def check_never_raises(result: object) -> None:
    assert isinstance(result, (Decoded, Rejection))
    if isinstance(result, Decoded):
        assert isinstance(to_event(result), (Event, Rejection))
    else:
        assert isinstance(result.code, ErrorCode) and result.message


async def test_fuzz_random_bytes_never_raise(registry: tuple[RegistryStub, str]) -> None:
    _, url = registry
    rng = random.Random(20240501)
    catalog = builtin_catalog()
    readers = [catalog.reader(name) for name in EVENT_RECORDS.values()]
    fingerprints = [r.fingerprint for r in readers if r is not None]
    assert len(fingerprints) == len(EVENT_RECORDS)
    prefixes = [b"", b"\xc3", b"\xc3\x01", b"\x00", b"\x00\x00\x00\x00\x01"]
    prefixes += [b"\xc3\x01" + fp for fp in fingerprints]
    async with RegistryClient(url, retry=FAST_RETRY) as client:
        with_registry = Decoder(catalog, client)
        without = Decoder(catalog)
        for _ in range(4000):
            value = rng.choice(prefixes) + rng.randbytes(rng.randint(0, 80))
            check_never_raises(without.decode_sync(value))
            check_never_raises(await with_registry.decode(value))


def test_fuzz_mutated_messages_never_raise(decoder: Decoder) -> None:
    rng = random.Random(7)
    originals = [encoded(t) for t in EVENT_RECORDS]
    outcomes: set[str] = set()
    for _ in range(6000):
        value = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(10, len(value))
            if op == 0:
                value[pos] = rng.randrange(256)
            elif op == 1:
                del value[pos:]
            else:
                value[pos:pos] = rng.randbytes(rng.randint(1, 8))
            if len(value) <= 10:
                break
        result = decoder.decode_sync(bytes(value))
        check_never_raises(result)
        outcomes.add(result.code if isinstance(result, Rejection) else "decoded")
    # The fuzzing reached the datum decoder, not just the header checks.
    assert {"decoded", ErrorCode.AVRO_DECODE_ERROR} <= outcomes


def test_avro_binary_matches_the_framed_payload() -> None:
    name, datum = event_from_json(sample("claimed"))
    catalog = builtin_catalog()
    value = Encoder(catalog).encode_single_object(name, datum)
    assert value[10:] == avro_binary(catalog.schema(name), datum)
