"""Reading dead letters back for replay, and recording the outcome of a replay."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from course_audit.model import DeadLetter, ErrorCode, Source
from course_audit.store.db import Conn, affected_rows
from course_audit.store.writer import storable_text


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter as stored: its row id, the letter (with the raw message), replay time."""

    id: int
    letter: DeadLetter
    replayed_at: datetime | None


def decode_headers(text: str) -> tuple[tuple[str, bytes], ...]:
    """Inverse of `writer.encode_headers` (a null header value comes back as b"")."""
    pairs: list[list[Any]] = orjson.loads(text)
    return tuple((k, b"" if v is None else base64.b64decode(v)) for k, v in pairs)


def _stored(row: Any) -> StoredDeadLetter:
    source = Source(
        topic=row["topic"],
        partition=row["partition"],
        offset=row["offset"],
        key=row["key"],
        value=row["value"],
        headers=decode_headers(row["headers"]),
    )
    letter = DeadLetter(
        source, ErrorCode(row["error_code"]), row["error_message"], row["failed_at"]
    )
    return StoredDeadLetter(row["id"], letter, row["replayed_at"])


async def list_dead_letters(
    conn: Conn,
    *,
    code: ErrorCode | str | None = None,
    topic: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    include_replayed: bool = False,
    after_id: int = 0,
    limit: int = 1000,
) -> list[StoredDeadLetter]:
    """Dead letters in id order, filtered; page on with ``after_id`` = the last id seen.

    ``since``/``until`` bound ``failed_at`` (inclusive); replayed letters are left out unless
    asked for.
    """
    rows = await conn.fetch(
        """
        SELECT id, topic, "partition", "offset", key, value, headers::text AS headers,
               error_code, error_message, failed_at, replayed_at
          FROM dead_letters
         WHERE id > $1
           AND ($2::text IS NULL OR error_code = $2)
           AND ($3::text IS NULL OR topic = $3)
           AND ($4::timestamptz IS NULL OR failed_at >= $4)
           AND ($5::timestamptz IS NULL OR failed_at <= $5)
           AND ($6 OR replayed_at IS NULL)
         ORDER BY id
         LIMIT $7
        """,
        after_id,
        None if code is None else str(code),
        topic,
        since,
        until,
        include_replayed,
        limit,
    )
    return [_stored(r) for r in rows]


async def mark_replayed(conn: Conn, ids: Sequence[int]) -> int:
    """Record that these dead letters were replayed and stored; returns how many changed."""
    status = await conn.execute(
        "UPDATE dead_letters SET replayed_at = now() WHERE id = ANY($1) AND replayed_at IS NULL",
        list(ids),
    )
    return affected_rows(status)


async def update_dead_letter_error(
    conn: Conn, id: int, code: ErrorCode, message: str, failed_at: datetime | None = None
) -> bool:
    """A replay failed again: keep the letter with its new error (and time of failure)."""
    status = await conn.execute(
        "UPDATE dead_letters SET error_code = $2, error_message = $3,"
        " failed_at = coalesce($4, now()) WHERE id = $1",
        id,
        str(code),
        storable_text(message),
        failed_at,
    )
    return affected_rows(status) == 1
