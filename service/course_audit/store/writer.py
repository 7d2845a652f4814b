"""The consumer's write path: a batch of events and its snapshots in one statement; dead letters."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from course_audit.model import DeadLetter, Event
from course_audit.retention import month_of
from course_audit.store.db import Conn, affected_rows
from course_audit.store.errors import describe, is_data_error
from course_audit.store.partitions import (
    DEFAULT_CACHE,
    PartitionCache,
    ensure_partition_for,
    list_partitions,
)

log = logging.getLogger(__name__)

#: The PostgreSQL channel each batch statement notifies of the events it stored (its
#: payload: docs/design.md#live-tail); the API's stream hub listens on it.
EVENTS_CHANNEL = "course_audit_events"


@dataclass(frozen=True, slots=True)
class Conflict:
    """An event whose event_id is already stored with another created_at or other content."""

    event: Event
    #: The created_at the id is stored with.
    stored_created_at: datetime

    def message(self) -> str:
        """The dead letter's message: which stored event it conflicts with, and how."""
        mine, stored = _iso(self.event.created_at), _iso(self.stored_created_at)
        if mine != stored:
            return (
                f"event_id {self.event.event_id} is already stored with created_at {stored};"
                f" this message has created_at {mine}. An event_id is stored once."
            )
        return (
            f"event_id {self.event.event_id} is already stored with created_at {stored} and"
            " other content (type, source, course, user, page view, SIS batch, related course"
            " or changes); an event_id is stored once"
        )


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TenantClaim:
    """A course or account stored under a root account for the first time while other root
    accounts hold it too (docs/store.md#tenant-scope): stored all the same, each tenant
    seeing its own."""

    kind: str  # "course" or "account"
    id: int
    root_account_id: int
    #: The other root accounts the store (or the same batch) holds this id under.
    other_root_account_ids: tuple[int, ...]


def _claims(text: str) -> list[TenantClaim]:
    return [
        TenantClaim(kind, int(key), int(root), tuple(others))
        for kind, key, root, others in orjson.loads(text)
    ]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Events newly stored; events already stored (or repeated in the batch) with the same
    created_at and content; events whose id is stored with another created_at or content;
    courses and accounts the new events claimed for a second root account."""

    inserted: int
    duplicates: int
    conflicts: list[Conflict] = field(default_factory=list)
    tenant_claims: list[TenantClaim] = field(default_factory=list)


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
    conflicts: list[Conflict] = field(default_factory=list)
    tenant_claims: list[TenantClaim] = field(default_factory=list)


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
# An event_id is stored once (docs/design.md#idempotency-key): the first row of each id in
# the batch claims it in event_ids, in id order so that two writers with overlapping batches
# cannot deadlock; only claimed rows become events and snapshots. Every other row is judged
# against what was stored before this statement: the same created_at and content is a
# duplicate, anything else a conflict naming the stored created_at. A row whose id is neither
# claimed nor visible (a repeat of an id claimed by this very statement, or one a concurrent
# writer claimed after this statement began) comes back with a null created_at, and the
# caller writes it again in a statement that sees the claim.
#
# Data-modifying CTEs all run to completion, read or not. ORDER BY ord: seq (the API's
# tie-break) follows the order events were consumed in. Snapshots: the newest per id
# (created_at, then the later event of the batch, then a related course over the event's own
# course), upserted newer-wins: an older event never overwrites a newer snapshot, and an
# identical redelivery writes no new row version.
_WRITE_BATCH = """
WITH batch AS MATERIALIZED (
    SELECT r, ord, (r->>0)::uuid AS id, (r->>1)::timestamptz AS at
      FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS b(r, ord)
), firsts AS MATERIALIZED (
    SELECT DISTINCT ON (id) id, at, ord FROM batch ORDER BY id, ord
), claimed AS (
    INSERT INTO event_ids (event_id, created_at)
    SELECT id, at FROM firsts ORDER BY id
    ON CONFLICT DO NOTHING
    RETURNING event_id
), new AS MATERIALIZED (
    SELECT b.r, b.ord, b.id, b.at
      FROM claimed c JOIN firsts f ON f.id = c.event_id JOIN batch b ON b.ord = f.ord
), stored AS (
    INSERT INTO events (event_id, created_at, event_type, event_source, course_id, account_id,
                        root_account_id, user_id, page_view_id, sis_batch_id,
                        related_course_id, event_data, topic, "partition", "offset")
    SELECT id, at, r->>2, r->>3, (r->4->>'id')::bigint,
           (r->4->>'account_id')::bigint, (r->4->>'root_account_id')::bigint,
           (r->5->>'id')::bigint, r->6->>'id', (r->>7)::bigint, (r->8->>'id')::bigint, r->9,
           r->>10, (r->>11)::integer, (r->>12)::bigint
      FROM new
     ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING seq, created_at, course_id, account_id
), announced AS (
    -- The live tail (docs/design.md#live-tail): one notification of what this statement
    -- stored, delivered when its transaction commits (and dropped if it rolls back). Only
    -- where to look, never the rows: the oldest created_at (whole seconds, rounded down) and
    -- the seq range, with the courses and accounts; a list too long for a notification's
    -- 8000 bytes becomes "all" (every listener looks).
    SELECT pg_notify('course_audit_events',
                     CASE WHEN octet_length(n.detailed) <= 7800 THEN n.detailed ELSE n.brief END)
      FROM (SELECT jsonb_build_object('from', floor(extract(epoch FROM min(created_at)))::bigint,
                                      'lo', min(seq), 'hi', max(seq),
                                      'c', jsonb_agg(DISTINCT course_id),
                                      'a', jsonb_agg(DISTINCT account_id))::text AS detailed,
                   jsonb_build_object('from', floor(extract(epoch FROM min(created_at)))::bigint,
                                      'lo', min(seq), 'hi', max(seq), 'all', true)::text AS brief
              FROM stored
            HAVING count(*) > 0) AS n
), course_snapshots AS (
    SELECT DISTINCT ON (id, root) id, root, data, at, related
      FROM (SELECT (r->4->>'id')::bigint AS id, (r->4->>'root_account_id')::bigint AS root,
                   r->4 AS data, at, ord, 0 AS related
              FROM new
            UNION ALL
            SELECT (r->8->>'id')::bigint, (r->8->>'root_account_id')::bigint, r->8, at, ord, 1
              FROM new
             WHERE jsonb_typeof(r->8) = 'object'
               AND r->8->'root_account_id' = r->4->'root_account_id') AS carried
     ORDER BY id, root, at DESC, ord DESC, related DESC
), courses_upserted AS (
    INSERT INTO courses AS t (id, root_account_id, account_id, sis_course_id, data, as_of)
    SELECT id, root, (data->>'account_id')::bigint, data->>'sis_course_id', data, at
      FROM course_snapshots
    ON CONFLICT (id, root_account_id) DO UPDATE
       SET account_id = excluded.account_id, sis_course_id = excluded.sis_course_id,
           data = excluded.data, as_of = excluded.as_of
     WHERE excluded.as_of > t.as_of
        OR (excluded.as_of = t.as_of AND excluded.data IS DISTINCT FROM t.data)
), account_refs AS MATERIALIZED (
    SELECT (r->4->>'account_id')::bigint AS id, (r->4->>'root_account_id')::bigint AS root,
           max(at) AS at
      FROM new
     GROUP BY 1, 2
), accounts_upserted AS (
    INSERT INTO accounts AS t (id, root_account_id, as_of)
    SELECT id, root, at FROM account_refs
    ON CONFLICT (id, root_account_id) DO UPDATE SET as_of = excluded.as_of
     WHERE excluded.as_of > t.as_of
), users_upserted AS (
    INSERT INTO users AS t (id, root_account_id, data, as_of)
    SELECT DISTINCT ON (id, root) id, root, data, at
      FROM (SELECT (r->5->>'id')::bigint AS id, (r->4->>'root_account_id')::bigint AS root,
                   r->5 AS data, at, ord
              FROM new
             WHERE jsonb_typeof(r->5) = 'object') AS carried
     ORDER BY id, root, at DESC, ord DESC
    ON CONFLICT (id, root_account_id) DO UPDATE SET data = excluded.data, as_of = excluded.as_of
     WHERE excluded.as_of > t.as_of
        OR (excluded.as_of = t.as_of AND excluded.data IS DISTINCT FROM t.data)
), page_views_upserted AS (
    INSERT INTO page_views AS t (id, root_account_id, data, as_of)
    SELECT DISTINCT ON (id, root) id, root, data, at
      FROM (SELECT r->6->>'id' AS id, (r->4->>'root_account_id')::bigint AS root,
                   r->6 AS data, at, ord
              FROM new
             WHERE jsonb_typeof(r->6) = 'object') AS carried
     ORDER BY id, root, at DESC, ord DESC
    ON CONFLICT (id, root_account_id) DO UPDATE SET data = excluded.data, as_of = excluded.as_of
     WHERE excluded.as_of > t.as_of
        OR (excluded.as_of = t.as_of AND excluded.data IS DISTINCT FROM t.data)
), own_courses AS MATERIALIZED (
    SELECT DISTINCT (r->4->>'id')::bigint AS id, (r->4->>'root_account_id')::bigint AS root
      FROM new
), split_courses AS (
    -- Ids this very batch names under more than one root account: one grouped pass (a
    -- lookup per row into the batch would cost n² for a batch of new courses).
    SELECT id, array_agg(root) AS roots FROM own_courses GROUP BY id HAVING count(*) > 1
), split_accounts AS (
    SELECT id, array_agg(root) AS roots FROM account_refs GROUP BY id HAVING count(*) > 1
), new_courses AS MATERIALIZED (
    -- Only (id, root) pairs not stored before this statement can be a new claim. Kept apart
    -- (materialised) so that the other root accounts are looked up for these few pairs only:
    -- as one query, the planner filtered on the looked-up list before the anti join and so
    -- probed every course of the batch (docs/performance.md#tenant-claim-check).
    SELECT s.id, s.root FROM own_courses s
     WHERE NOT EXISTS (SELECT FROM courses c WHERE c.id = s.id AND c.root_account_id = s.root)
), new_accounts AS MATERIALIZED (
    SELECT a.id, a.root FROM account_refs a
     WHERE NOT EXISTS (SELECT FROM accounts t WHERE t.id = a.id AND t.root_account_id = a.root)
), tenant_conflicts AS (
    -- A course or account stored under a root account for the first time while another
    -- root account already holds it (before this statement, or in this batch): stored all
    -- the same, and reported once (docs/store.md#tenant-scope). Only new (id, root) pairs
    -- are looked at, each with one index probe for the root accounts already stored.
    SELECT 'course' AS kind, s.id, s.root,
           array(SELECT DISTINCT o
                   FROM unnest(coalesce(b.roots, '{}')
                               || array(SELECT c.root_account_id FROM courses c
                                         WHERE c.id = s.id)) AS o
                  WHERE o <> s.root
                  ORDER BY 1) AS others
      FROM new_courses s LEFT JOIN split_courses b ON b.id = s.id
    UNION ALL
    SELECT 'account', a.id, a.root,
           array(SELECT DISTINCT o
                   FROM unnest(coalesce(b.roots, '{}')
                               || array(SELECT t.root_account_id FROM accounts t
                                         WHERE t.id = a.id)) AS o
                  WHERE o <> a.root
                  ORDER BY 1)
      FROM new_accounts a LEFT JOIN split_accounts b ON b.id = a.id
), judged AS (
    SELECT b.ord, s.created_at AS stored_at, s.same
      FROM batch b
      LEFT JOIN LATERAL (
            SELECT i.created_at,
                   i.created_at = b.at AND EXISTS (
                       SELECT FROM events e
                        WHERE e.event_id = b.id AND e.created_at = b.at
                          AND (e.event_type, e.event_source, e.course_id, e.account_id,
                               e.root_account_id, e.user_id, e.page_view_id, e.sis_batch_id,
                               e.related_course_id, e.event_data)
                              IS NOT DISTINCT FROM
                              (b.r->>2, b.r->>3, (b.r->4->>'id')::bigint,
                               (b.r->4->>'account_id')::bigint,
                               (b.r->4->>'root_account_id')::bigint, (b.r->5->>'id')::bigint,
                               b.r->6->>'id', (b.r->>7)::bigint, (b.r->8->>'id')::bigint,
                               b.r->9)) AS same
              FROM event_ids i
             WHERE i.event_id = b.id) AS s ON true
     WHERE NOT EXISTS (SELECT FROM new n WHERE n.ord = b.ord)
)
SELECT (SELECT count(*) FROM stored) AS inserted,
       (SELECT count(*) FROM announced) AS announced,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(kind, id, root, others)), '[]')::text
          FROM tenant_conflicts WHERE cardinality(others) > 0) AS tenant_conflicts,
       coalesce(array_agg(ord ORDER BY ord), '{}') AS odd,
       coalesce(array_agg(stored_at ORDER BY ord), '{}') AS stored_at
  FROM judged
 WHERE same IS NOT TRUE
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


#: Rounds of writing again the rows a statement could not judge (see _WRITE_BATCH) before
#: giving up; each round judges at least every row whose claim was visible to it.
_MAX_ROUNDS = 100


async def write_batch(
    conn: Conn,
    events: Sequence[Event],
    *,
    cache: PartitionCache | None = None,
    document: str | None = None,
) -> WriteResult:
    """Store `events` and their snapshots atomically (a savepoint in the caller's transaction).

    `document`, when given, must be ``batch_document(events)``, built ahead of time: the
    consumer builds it while the previous batch is still being stored, so that PostgreSQL gets
    the next statement as soon as it is done with the last
    (docs/performance.md#batch-document-built-ahead).

    Idempotent: events already stored with the same created_at and content are counted as
    duplicates; an event whose id is stored with another created_at or content comes back as
    a conflict (for a ``conflicting_event_id`` dead letter), and none of it is stored.
    Raises on failure with nothing written; see `classify` (errors.py) to decide what next.
    Call it outside a transaction when possible: creating a new month's partition first
    needs a lock that an open transaction writing to `events` would make it wait for.
    """
    inserted = duplicates = 0
    conflicts: list[Conflict] = []
    claims: list[TenantClaim] = []
    pending = list(events)
    for _ in range(_MAX_ROUNDS):
        if not pending:
            return WriteResult(inserted, duplicates, conflicts, claims)
        done = await _write_round(conn, pending, cache, document)
        document = None  # a later round writes fewer events: its own document
        inserted += done.inserted
        claims.extend(done.tenant_claims)
        # The rest of the round: events already stored, or repeated, with the same content.
        duplicates += len(pending) - done.inserted - len(done.odd)
        unjudged: list[Event] = []
        for position, stored_at in zip(done.odd, done.stored_at, strict=True):
            event = pending[position - 1]
            if stored_at is None:
                unjudged.append(event)
            else:
                conflicts.append(Conflict(event, stored_at))
        pending = unjudged
    raise RuntimeError(f"{len(pending)} event(s) still unjudged after {_MAX_ROUNDS} rounds")


async def _write_round(
    conn: Conn, events: Sequence[Event], cache: PartitionCache | None, document: str | None
) -> _Round:
    cache = DEFAULT_CACHE if cache is None else cache
    if document is None:
        document = batch_document(events)
    months = {month_of(e.created_at) for e in events}
    await ensure_partition_for(conn, months, cache=cache)
    try:
        return await _write(conn, document)
    except asyncpg.CheckViolationError:
        # "No partition found for row": a cached month whose partition was dropped since
        # (retention on another replica) or never existed in this database. Ask the catalog.
        existing = await list_partitions(conn)
        if months <= existing.keys():
            raise
        cache.discard(months)
        await ensure_partition_for(conn, months, cache=cache)
        return await _write(conn, document)


@dataclass(frozen=True, slots=True)
class _Round:
    """What one batch statement reports (see _WRITE_BATCH)."""

    inserted: int
    #: Positions (from 1) of the rows neither stored nor duplicates, and for each the
    #: created_at its id is stored with (a conflict), or None (not judged: write it again).
    odd: list[int]
    stored_at: list[datetime | None]
    tenant_claims: list[TenantClaim]


async def _write(conn: Conn, document: str) -> _Round:
    if not conn.is_in_transaction():
        # One statement is atomic by itself: no BEGIN and COMMIT round trips.
        row = await conn.fetchrow(_WRITE_BATCH, document)
    else:
        # In the caller's transaction, a savepoint keeps a failed batch from aborting it, so
        # that write_isolating can go on with the halves.
        async with conn.transaction():
            row = await conn.fetchrow(_WRITE_BATCH, document)
    assert row is not None
    return _Round(row["inserted"], row["odd"], row["stored_at"], _claims(row["tenant_conflicts"]))


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
            left.conflicts + right.conflicts,
            left.tenant_claims + right.tenant_claims,
        )
    return IsolatedWrite(
        result.inserted, result.duplicates, [], result.conflicts, result.tenant_claims
    )


#: The longest error message kept with a dead letter, in characters; the rest is cut.
MAX_MESSAGE_LENGTH = 2000
#: The longest message of a dead letter kept in its minimal form.
MINIMAL_MESSAGE_LENGTH = 300


def storable_text(text: str) -> str:
    """`text` as a PostgreSQL text (or jsonb string) can hold it.

    NUL becomes the four characters ``\\x00`` and what UTF-8 cannot encode (a lone
    surrogate, as a lenient decoder leaves for an undecodable byte) its ``\\udcXX`` escape.
    Meant for people: the raw key and value stay bytes, unchanged.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def encode_headers(headers: Iterable[tuple[str, bytes | None]]) -> str:
    """Kafka headers as JSON ``[[name, base64 value or null], ...]`` (ordered; the values
    lossless, the names through `storable_text`)."""
    return json_text(
        [
            [storable_text(k), None if v is None else base64.b64encode(v).decode("ascii")]
            for k, v in headers
        ]
    )


_LetterRow = tuple[
    str, int, int, bytes | None, bytes | None, str, str, str, datetime
]  # the columns of _INSERT_DEAD_LETTERS, in order


def _full_row(d: DeadLetter) -> _LetterRow:
    s = d.source
    return (
        storable_text(s.topic),
        s.partition,
        s.offset,
        s.key,
        s.value,
        encode_headers(s.headers),
        str(d.code),
        _cut(storable_text(d.message), MAX_MESSAGE_LENGTH),
        d.failed_at,
    )


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "\\x00")


def _minimal_row(d: DeadLetter, error: BaseException, *, keep_value: bool = True) -> _LetterRow:
    """What is left of a dead letter PostgreSQL refused: its position, code, a short ASCII
    message saying why, and (unless that was refused too) the raw value, for a replay."""
    s = d.source
    lost = "key and headers" if keep_value else "key, headers or value"
    note = f" [kept without its {lost}: {_ascii(describe(error))[:120]}]"
    message = _cut(_ascii(d.message), MINIMAL_MESSAGE_LENGTH - len(note)) + note
    value = s.value if keep_value else None
    return (
        _ascii(s.topic),
        s.partition,
        s.offset,
        None,
        value,
        "[]",
        str(d.code),
        message,
        d.failed_at,
    )


async def write_dead_letters(conn: Conn, letters: Sequence[DeadLetter]) -> int:
    """Store dead letters; one re-read from the same Kafka position is not stored twice.

    Every text is made storable first (`storable_text`). A letter PostgreSQL still refuses for
    a data reason is stored in a minimal form (position, code, short message, raw value),
    failing that without its value, and failing that too it is logged as an error: a dead
    letter never holds its batch back. Returns how many were new.
    """
    if not letters:
        return 0
    rows: list[_LetterRow] = []
    for d in letters:
        try:
            rows.append(_full_row(d))
        except Exception as exc:
            if not is_data_error(exc):
                raise
            rows.append(_degraded(d, exc))
    return await _insert_isolating(conn, letters, rows)


def _degraded(d: DeadLetter, error: BaseException, *, keep_value: bool = True) -> _LetterRow:
    log.warning(
        "dead letter kept in a minimal form",
        extra={
            "topic": d.source.topic,
            "partition": d.source.partition,
            "offset": d.source.offset,
            "code": str(d.code),
            "error": describe(error),
            "value_kept": keep_value,
        },
    )
    return _minimal_row(d, error, keep_value=keep_value)


async def _insert_isolating(
    conn: Conn, letters: Sequence[DeadLetter], rows: list[_LetterRow]
) -> int:
    """Insert `rows`, halving around the ones refused for their data (see write_isolating)."""
    try:
        return await _insert_letters(conn, rows)
    except Exception as exc:
        if not is_data_error(exc):
            raise
        if len(rows) > 1:
            mid = len(rows) // 2
            return await _insert_isolating(conn, letters[:mid], rows[:mid]) + (
                await _insert_isolating(conn, letters[mid:], rows[mid:])
            )
        error = exc
    try:
        return await _insert_letters(conn, [_degraded(letters[0], error)])
    except Exception as exc:
        if not is_data_error(exc):
            raise
        error = exc
    try:
        return await _insert_letters(conn, [_degraded(letters[0], error, keep_value=False)])
    except Exception as exc:
        if not is_data_error(exc):
            raise
        _log_unstorable(letters[0], exc)
        return 0


def _log_unstorable(d: DeadLetter, error: BaseException) -> None:
    """The last resort for a letter refused in every form (a constraint nobody foresaw): the
    log keeps it, value included, and its batch goes on rather than retrying forever."""
    s = d.source
    log.error(
        "dead letter refused by the store in every form; kept in this log entry only",
        extra={
            "topic": s.topic,
            "partition": s.partition,
            "offset": s.offset,
            "code": str(d.code),
            "error_message": _ascii(d.message),
            "error": describe(error),
            "value_base64": None if s.value is None else base64.b64encode(s.value).decode(),
        },
    )


async def _insert_letters(conn: Conn, rows: list[_LetterRow]) -> int:
    columns = list(zip(*rows, strict=True))
    if not conn.is_in_transaction():
        status = await conn.execute(_INSERT_DEAD_LETTERS, *columns)
    else:
        async with conn.transaction():  # a savepoint: a refusal must not abort the caller's
            status = await conn.execute(_INSERT_DEAD_LETTERS, *columns)
    return affected_rows(status)
