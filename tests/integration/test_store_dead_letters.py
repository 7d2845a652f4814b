"""Dead letters: stored once per Kafka message, listed and updated for replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

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
