"""Dead letters: stored once per Kafka message, listed and updated for replay."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from course_audit.model import DeadLetter, ErrorCode, Source
from course_audit.store.dead_letters import (
    list_dead_letters,
    mark_replayed,
    update_dead_letter_error,
)
from course_audit.store.writer import write_dead_letters

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def letter(
    offset: int,
    *,
    value: bytes = b"\xc3\x01garbage",
    code: ErrorCode = ErrorCode.AVRO_DECODE_ERROR,
    topic: str = "course-events",
    failed_at: datetime = T0,
) -> DeadLetter:
    source = Source(topic, 1, offset, b"42", value, (("trace", b"\x00\xff"), ("origin", b"lms")))
    return DeadLetter(source, code, f"cannot decode offset {offset}", failed_at)


async def test_dead_letter_round_trips_losslessly(conn: asyncpg.Connection[Any]) -> None:
    original = letter(5)
    assert await write_dead_letters(conn, [original]) == 1
    [stored] = await list_dead_letters(conn)
    assert stored.letter == original  # raw key, value and binary headers included
    assert stored.letter.failed_at == T0 and stored.replayed_at is None
    view = await conn.fetchrow("SELECT * FROM course_audit_dead_letters")
    assert view is not None
    assert (view["topic"], view["partition"], view["offset"], view["error_code"]) == (
        "course-events",
        1,
        5,
        "avro_decode_error",
    )
    assert view["value"] == b"\xc3\x01garbage"


async def test_reconsumed_poison_message_is_stored_once(conn: asyncpg.Connection[Any]) -> None:
    # The same message twice in one batch, then again after a crash before the commit.
    assert await write_dead_letters(conn, [letter(5), letter(6), letter(5)]) == 2
    assert await write_dead_letters(conn, [letter(5, failed_at=T0 + timedelta(minutes=1))]) == 0
    assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 2
    # A different message at a known position (the topic was re-created) is still kept.
    assert await write_dead_letters(conn, [letter(5, value=b"other bytes")]) == 1
    # Empty values (tombstones) dedupe too.
    assert await write_dead_letters(conn, [letter(9, value=b"", code=ErrorCode.EMPTY_VALUE)]) == 1
    assert await write_dead_letters(conn, [letter(9, value=b"", code=ErrorCode.EMPTY_VALUE)]) == 0


async def test_listing_filters_and_pages(conn: asyncpg.Connection[Any]) -> None:
    await write_dead_letters(
        conn,
        [
            letter(1, failed_at=T0),
            letter(2, code=ErrorCode.UNKNOWN_SCHEMA, failed_at=T0 + timedelta(hours=1)),
            letter(3, code=ErrorCode.UNKNOWN_SCHEMA, failed_at=T0 + timedelta(hours=2)),
            letter(4, topic="other", code=ErrorCode.UNKNOWN_SCHEMA, failed_at=T0),
        ],
    )

    def offsets(found: list[Any]) -> list[int]:
        return [d.letter.source.offset for d in found]

    assert offsets(await list_dead_letters(conn)) == [1, 2, 3, 4]
    assert offsets(await list_dead_letters(conn, code=ErrorCode.UNKNOWN_SCHEMA)) == [2, 3, 4]
    assert offsets(await list_dead_letters(conn, code="unknown_schema", topic="other")) == [4]
    window = await list_dead_letters(
        conn, since=T0 + timedelta(minutes=30), until=T0 + timedelta(hours=1)
    )
    assert offsets(window) == [2]
    first = await list_dead_letters(conn, limit=2)
    rest = await list_dead_letters(conn, after_id=first[-1].id, limit=2)
    assert offsets(first) + offsets(rest) == [1, 2, 3, 4]


async def test_replay_outcomes_are_recorded(conn: asyncpg.Connection[Any]) -> None:
    await write_dead_letters(conn, [letter(1), letter(2, code=ErrorCode.UNKNOWN_SCHEMA)])
    one, two = await list_dead_letters(conn)

    # Replaying #1 stored it; #2 still fails, now for another reason.
    assert await mark_replayed(conn, [one.id]) == 1
    assert await mark_replayed(conn, [one.id]) == 0
    later = T0 + timedelta(days=1)
    assert await update_dead_letter_error(
        conn, two.id, ErrorCode.INVALID_COURSE, "course.id must be positive", later
    )
    assert not await update_dead_letter_error(conn, 10**9, ErrorCode.INVALID_COURSE, "x")

    [pending] = await list_dead_letters(conn)
    assert pending.id == two.id
    assert (pending.letter.code, pending.letter.message, pending.letter.failed_at) == (
        ErrorCode.INVALID_COURSE,
        "course.id must be positive",
        later,
    )
    everything = await list_dead_letters(conn, include_replayed=True)
    assert [d.replayed_at is not None for d in everything] == [True, False]
    view = await conn.fetch(
        "SELECT replayed_at IS NOT NULL AS replayed FROM course_audit_dead_letters"
        ' ORDER BY "offset"'
    )
    assert [r["replayed"] for r in view] == [True, False]


async def test_nul_and_undecodable_text_is_escaped_and_the_bytes_kept(
    conn: asyncpg.Connection[Any],
) -> None:
    # PostgreSQL text holds no NUL and jsonb no \u0000; a lenient decoder leaves a lone
    # surrogate for a header name byte that is not UTF-8, which UTF-8 cannot encode at all.
    source = Source(
        "course-events",
        1,
        7,
        b"k\x00ey",
        b"\xc3\x01\x00value",
        (("tr\x00ace", b"v\x00al"), ("bad\udcff", b"x"), ("plain", b"y")),
    )
    original = DeadLetter(source, ErrorCode.AVRO_DECODE_ERROR, "cannot decode 'a\x00b'", T0)
    assert await write_dead_letters(conn, [original]) == 1
    [stored] = await list_dead_letters(conn)
    assert stored.letter.message == "cannot decode 'a\\x00b'"
    assert stored.letter.source.headers == (
        ("tr\\x00ace", b"v\x00al"),  # the value is base64 in the JSON: kept as it was
        ("bad\\udcff", b"x"),
        ("plain", b"y"),
    )
    assert (stored.letter.source.key, stored.letter.source.value) == (
        b"k\x00ey",
        b"\xc3\x01\x00value",
    )


async def test_a_long_message_is_cut(conn: asyncpg.Connection[Any]) -> None:
    long = DeadLetter(letter(1).source, ErrorCode.STORE_REJECTED, "x" * 5000, T0)
    await write_dead_letters(conn, [long])
    [stored] = await list_dead_letters(conn)
    assert stored.letter.message == "x" * 2000 + "... (3000 more characters)"


async def test_a_dead_letter_refused_for_its_data_is_kept_in_a_minimal_form(
    conn: asyncpg.Connection[Any],
) -> None:
    # A constraint stands for whatever data reason PostgreSQL may have to refuse a letter.
    await conn.execute(
        "ALTER TABLE dead_letters ADD CONSTRAINT no_trace_header"
        " CHECK (headers::text NOT LIKE '%trace%')"
    )
    refused = letter(5, code=ErrorCode.UNKNOWN_SCHEMA)  # its headers include "trace"
    fine = DeadLetter(
        Source("course-events", 1, 6, b"k", b"v", (("other", b"1"),)),
        ErrorCode.EMPTY_CHANGES,
        "no change left",
        T0,
    )
    async with conn.transaction():  # the consumer's batch transaction survives the refusal
        assert await write_dead_letters(conn, [fine, refused, fine]) == 2
        await conn.execute("SELECT 1")
    [kept_fine, kept_refused] = await list_dead_letters(conn)
    assert kept_fine.letter == fine
    minimal = kept_refused.letter
    assert (minimal.source.topic, minimal.source.partition, minimal.source.offset) == (
        "course-events",
        1,
        5,
    )
    assert minimal.code is ErrorCode.UNKNOWN_SCHEMA
    assert minimal.source.value == b"\xc3\x01garbage"  # still replayable
    assert (minimal.source.key, minimal.source.headers) == (None, ())
    assert minimal.message.startswith("cannot decode offset 5 [kept without its key and headers")
    assert "23514" in minimal.message and len(minimal.message) <= 300
    # The same message read again (a restart before the commit) is still stored once.
    assert await write_dead_letters(conn, [refused]) == 0


async def test_a_dead_letter_whose_value_is_refused_too_is_kept_without_it(
    conn: asyncpg.Connection[Any],
) -> None:
    await conn.execute(
        "ALTER TABLE dead_letters ADD CONSTRAINT small_values_only"
        " CHECK (octet_length(value) < 100)"
    )
    big = letter(9, value=b"\xc3\x01" + bytes(200))
    assert await write_dead_letters(conn, [big]) == 1
    [kept] = await list_dead_letters(conn)
    assert kept.letter.source.value is None and kept.letter.source.offset == 9
    assert "[kept without its key, headers or value" in kept.letter.message


async def test_a_dead_letter_refused_in_every_form_is_logged_and_the_rest_stored(
    conn: asyncpg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    await conn.execute('ALTER TABLE dead_letters ADD CONSTRAINT not_offset_3 CHECK ("offset" <> 3)')
    with caplog.at_level(logging.ERROR, logger="course_audit.store.writer"):
        assert await write_dead_letters(conn, [letter(2), letter(3), letter(4)]) == 2
    assert [d.letter.source.offset for d in await list_dead_letters(conn)] == [2, 4]
    [entry] = caplog.records
    assert "refused by the store in every form" in entry.getMessage()
    assert (entry.offset, entry.code, entry.value_base64) == (  # type: ignore[attr-defined]
        3,
        "avro_decode_error",
        base64.b64encode(b"\xc3\x01garbage").decode(),
    )
