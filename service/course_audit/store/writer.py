"""The consumer's write path: a batch of events and its snapshots in one statement; dead letters."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from course_audit.model import DeadLetter, Event
from course_audit.retention import month_of
from course_audit.store.db import Conn, affected_rows
from course_audit.store.errors import is_data_error
from course_audit.store.partitions import (
    DEFAULT_CACHE,
    PartitionCache,
    ensure_partition_for,
    list_partitions,
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Events newly stored, and events that were already stored (or repeated in the batch)."""

    inserted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event the database refused, with the error it raised."""

    event: Event
    error: BaseException


@dataclass(frozen=True, slots=True)
class IsolatedWrite:
    """Result of `write_isolating`: the good events stored, the bad ones set aside."""

    inserted: int
    duplicates: int
    rejected: list[Rejected] = field(default_factory=list)


# A whole batch in one statement, so in one round trip: the consumer's event loop is busy
# decoding the next batch meanwhile, and every round trip waits for the decoder's next yield
# (a staging table, COPY, INSERT...SELECT and three upserts took 10).
#
# The batch arrives as one JSON array, a row per event: [event_id, created_at, event_type,
# event_source, course, user, page_view, sis_batch_id, related_course, event_data, topic,
# partition, offset], snapshots as the records themselves. One orjson call builds it; the ids,
# and the newest snapshot per id, are taken out here rather than in Python: that moves CPU
# from the consumer, the pipeline's bottleneck, to PostgreSQL on the other core
# (docs/performance.md#one-statement-per-batch).
#
# Data-modifying CTEs all run to completion, read or not. ORDER BY ord: seq (the API's
# tie-break) follows the order events were consumed in. DO NOTHING also absorbs duplicates
# inside the batch. Snapshots: the newest per id (created_at, then the later event of the
# batch, then a related course over the event's own course), upserted newer-wins: an older
# event never overwrites a newer snapshot, and an identical redelivery writes no new row
# version.
_WRITE_BATCH = """
WITH batch AS MATERIALIZED (
    SELECT r, ord, (r->>1)::timestamptz AS at
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS b(r, ord)
), stored AS (
    INSERT INTO events (event_id, created_at, event_type, event_source, course_id, account_id,
                        root_account_id, user_id, page_view_id, sis_batch_id,
                        related_course_id, event_data, topic, "partition", "offset")
    SELECT (r->>0)::uuid, at, r->>2, r->>3, (r->4->>'id')::bigint,
           (r->4->>'account_id')::bigint, (r->4->>'root_account_id')::bigint,
           (r->5->>'id')::bigint, r->6->>'id', (r->>7)::bigint, (r->8->>'id')::bigint, r->9,
           r->>10, (r->>11)::integer, (r->>12)::bigint
      FROM batch
     ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING 1
), course_snapshots AS (
    SELECT DISTINCT ON (id) id, data, at
      FROM (SELECT (r->4->>'id')::bigint AS id, r->4 AS data, at, ord, 0 AS related
              FROM batch
            UNION ALL
            SELECT (r->8->>'id')::bigint, r->8, at, ord, 1
              FROM batch
             WHERE jsonb_typeof(r->8) = 'object') AS carried
     ORDER BY id, at DESC, ord DESC, related DESC
), courses_upserted AS (
    INSERT INTO courses AS t (id, root_account_id, account_id, sis_course_id, data, as_of)
    SELECT id, (data->>'root_account_id')::bigint, (data->>'account_id')::bigint,
           data->>'sis_course_id', data, at
      FROM course_snapshots
    ON CONFLICT (id) DO UPDATE
       SET root_account_id = excluded.root_account_id, account_id = excluded.account_id,
           sis_course_id = excluded.sis_course_id, data = excluded.data, as_of = excluded.as_of
     WHERE excluded.as_of > t.as_of
        OR (excluded.as_of = t.as_of AND excluded.data IS DISTINCT FROM t.data)
), users_upserted AS (
    INSERT INTO users AS t (id, data, as_of)
    SELECT DISTINCT ON (id) id, data, at
      FROM (SELECT (r->5->>'id')::bigint AS id, r->5 AS data, at, ord
              FROM batch
             WHERE jsonb_typeof(r->5) = 'object') AS carried
     ORDER BY id, at DESC, ord DESC
    ON CONFLICT (id) DO UPDATE SET data = excluded.data, as_of = excluded.as_of
     WHERE excluded.as_of > t.as_of
        OR (excluded.as_of = t.as_of AND excluded.data IS DISTINCT FROM t.data)
), page_views_upserted AS (
    INSERT INTO page_views AS t (id, data, as_of)
    SELECT DISTINCT ON (id) id, data, at
      FROM (SELECT r->6->>'id' AS id, r->6 AS data, at, ord
              FROM batch
             WHERE jsonb_typeof(r->6) = 'object') AS carried
     ORDER BY id, at DESC, ord DESC
    ON CONFLICT (id) DO UPDATE SET data = excluded.data, as_of = excluded.as_of
     WHERE excluded.as_of > t.as_of
        OR (excluded.as_of = t.as_of AND excluded.data IS DISTINCT FROM t.data)
)
SELECT count(*) FROM stored
"""

_INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (topic, "partition", "offset", key, value, headers,
                          error_code, error_message, failed_at)
SELECT * FROM unnest($1::text[], $2::integer[], $3::bigint[], $4::bytea[], $5::bytea[],
                     $6::jsonb[], $7::text[], $8::text[], $9::timestamptz[])
ON CONFLICT (topic, "partition", "offset", sha256(coalesce(value, ''::bytea))) DO NOTHING
"""


def json_text(value: Any) -> str:
    """JSON text for a jsonb parameter (asyncpg's jsonb codec takes text)."""
    return orjson.dumps(value).decode()


def batch_document(events: Iterable[Event]) -> str:
    """The batch statement's parameter: the events as a JSON array of rows (see _WRITE_BATCH).

    Raises (a data error) for an event that cannot be encoded.
    """
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for e in events:
        source = e.source
        append(
            (
                e.event_id,
                e.created_at,
                e.event_type,
                e.event_source,
                e.course,
                e.user,
                e.page_view,
                e.sis_batch_id,
                e.related_course,
                e.event_data,
                None if source is None else source.topic,
                None if source is None else source.partition,
                None if source is None else source.offset,
            )
        )
    # Naive datetimes as UTC, as asyncpg's timestamptz codec takes them on a UTC host.
    return orjson.dumps(rows, option=orjson.OPT_NAIVE_UTC).decode()


async def write_batch(
    conn: Conn, events: Sequence[Event], *, cache: PartitionCache | None = None
) -> WriteResult:
    """Store `events` and their snapshots atomically (a savepoint in the caller's transaction).

    Idempotent: events already stored are counted as duplicates. Raises on failure with
    nothing written; see `is_data_error`/`is_transient` (errors.py) to decide what next.
    Call it outside a transaction when possible: creating a new month's partition first
    needs a lock that an open transaction writing to `events` would make it wait for.
    """
    if not events:
        return WriteResult(0, 0)
    cache = DEFAULT_CACHE if cache is None else cache
    document = batch_document(events)
    months = {month_of(e.created_at) for e in events}
    await ensure_partition_for(conn, months, cache=cache)
    try:
        inserted = await _write(conn, document)
    except asyncpg.CheckViolationError:
        # "No partition found for row": a cached month whose partition was dropped since
        # (retention on another replica) or never existed in this database. Ask the catalog.
        existing = await list_partitions(conn)
        if months <= existing.keys():
            raise
        cache.discard(months)
        await ensure_partition_for(conn, months, cache=cache)
        inserted = await _write(conn, document)
    return WriteResult(inserted, len(events) - inserted)


async def _write(conn: Conn, document: str) -> int:
    if not conn.is_in_transaction():
        # One statement is atomic by itself: no BEGIN and COMMIT round trips.
        return int(await conn.fetchval(_WRITE_BATCH, document))
    # In the caller's transaction, a savepoint keeps a failed batch from aborting it, so that
    # write_isolating can go on with the halves.
    async with conn.transaction():
        return int(await conn.fetchval(_WRITE_BATCH, document))


async def write_isolating(
    conn: Conn, events: Sequence[Event], *, cache: PartitionCache | None = None
) -> IsolatedWrite:
    """`write_batch`, bisecting on data errors so that a bad event never fails its neighbours.

    Each rejected event comes back with its error (for a ``store_rejected`` dead letter);
    any other error propagates. k bad events in n cost O(k log n) extra round trips.
    """
    try:
        result = await write_batch(conn, events, cache=cache)
    except Exception as exc:
        if not is_data_error(exc):
            raise
        if len(events) == 1:
            return IsolatedWrite(0, 0, [Rejected(events[0], exc)])
        mid = len(events) // 2
        left = await write_isolating(conn, events[:mid], cache=cache)
        right = await write_isolating(conn, events[mid:], cache=cache)
        return IsolatedWrite(
            left.inserted + right.inserted,
            left.duplicates + right.duplicates,
            left.rejected + right.rejected,
        )
    return IsolatedWrite(result.inserted, result.duplicates)


def encode_headers(headers: Iterable[tuple[str, bytes | None]]) -> str:
    """Kafka headers as JSON ``[[name, base64 value or null], ...]`` (lossless, ordered)."""
    return json_text(
        [[k, None if v is None else base64.b64encode(v).decode("ascii")] for k, v in headers]
    )


async def write_dead_letters(conn: Conn, letters: Sequence[DeadLetter]) -> int:
    """Store dead letters; one re-read from the same Kafka position is not stored twice.

    Returns how many were new.
    """
    if not letters:
        return 0
    sources = [d.source for d in letters]
    status = await conn.execute(
        _INSERT_DEAD_LETTERS,
        [s.topic for s in sources],
        [s.partition for s in sources],
        [s.offset for s in sources],
        [s.key for s in sources],
        [s.value for s in sources],
        [encode_headers(s.headers) for s in sources],
        [str(d.code) for d in letters],
        [d.message for d in letters],
        [d.failed_at for d in letters],
    )
    return affected_rows(status)
