"""Export of a course's or account's events (docs/api.md#export): NDJSON or CSV, streamed.

GET .../courses/{course_id}/export and .../accounts/{account_id}/export take the endpoints'
token, tenancy, id forms and start_time/end_time, and answer every event of the window,
oldest first ((created_at, seq) ascending), as one NDJSON line (an item of the endpoints'
`events` array) or one CSV row each. `after_id=<event id>` resumes after that event.

Memory stays constant: events are read in keyset chunks (store/export.py) inside one
REPEATABLE READ, read-only transaction (the export shows the store as it was when it began)
and each chunk is written before the next is taken; a client that reads slowly holds the
export back through TCP, and one that takes less than 64 KiB in
AUDIT_EXPORT_STALL_TIMEOUT_S, or goes away, ends it: the statement in flight is cancelled and
the connection goes back to the pool. An export holds one pooled connection while it runs,
so at most half the pool (AUDIT_DB_POOL_MAX // 2, at least one) may run at once per process;
another gets a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

import asyncpg
import orjson
from aiohttp import web

from course_audit.api.auth import require_token
from course_audit.api.errors import ApiError, bad_parameter, not_found, unavailable
from course_audit.api.handlers import (
    ACCOUNT,
    ACCOUNT_PATH,
    ACQUIRE_TIMEOUT_S,
    API_STATE,
    COURSE,
    COURSE_PATH,
    QUERY_TIMEOUT_S,
    Target,
    _connection_lost,
    token_info,
)
from course_audit.api.params import TimeRange, last_value, parse_filters, query_window
from course_audit.api.render import _UTC_OPTIONS, render_events, render_time
from course_audit.runtime.web import HEALTH, METRICS, RUNTIME, SETTINGS
from course_audit.store.db import Conn
from course_audit.store.errors import describe, is_transient
from course_audit.store.export import event_position, export_chunks, filter_extra
from course_audit.store.queries import Cursor, EventRow, Filters
from course_audit.store.tokens import TokenInfo

log = logging.getLogger(__name__)

COURSE_EXPORT_PATH = COURSE_PATH + "/export"
ACCOUNT_EXPORT_PATH = ACCOUNT_PATH + "/export"
NDJSON = "ndjson"
CSV = "csv"
FORMATS = (NDJSON, CSV)
NDJSON_MEDIA_TYPE = "application/x-ndjson"
CSV_MEDIA_TYPE = "text/csv"
#: The CSV columns, in order (docs/api.md#export).
CSV_COLUMNS = (
    "id",
    "created_at",
    "event_type",
    "event_source",
    "course_id",
    "user_id",
    "page_view_id",
    "sis_batch_id",
    "related_course_id",
    "event_data",
)
#: A spreadsheet reads a cell starting with one of these as a formula: such a cell gets a
#: leading `'` (OWASP's CSV injection advice), which spreadsheets show as text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

#: Events rendered at once: the objects NDJSON builds per event (the endpoints' event dicts)
#: cost a few KB each while they live (docs/performance.md#export-render-slices).
RENDER_SLICE = 250
#: What a client must take within AUDIT_EXPORT_STALL_TIMEOUT_S, at the least, to keep its
#: export going (aiohttp waits for the socket to drain once 64 KiB are queued).
WRITE_PIECE = 1 << 16

_EVENT_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_EVENT_ID_EXAMPLE = "5d0c61a2-7a3b-4c8e-9f10-2b3c4d5e6f70"
_NDJSON_UTC = orjson.OPT_APPEND_NEWLINE | _UTC_OPTIONS


# ------------------------------------------------------------------ parameters


@dataclass(frozen=True, slots=True)
class ExportQuery:
    """The parsed parameters of one export request."""

    times: TimeRange
    format: str
    after_id: str | None  # canonical (lower case) event id
    filters: Filters = field(default_factory=Filters)


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 60 else repr(value[:57] + "...")


def parse_format(value: str | None) -> str:
    """`ndjson` (also when absent) or `csv`; anything else is a 400 naming `format`."""
    if value is None:
        return NDJSON
    if value in FORMATS:
        return value
    return _refuse(f"format: {_shown(value)} is not a format of the export (use ndjson or csv)")


def parse_after_id(value: str | None) -> str | None:
    """An event id (a UUID in its 36-character form), lower-cased; else a 400 naming it."""
    if value is None:
        return None
    if not _EVENT_ID.fullmatch(value):
        _refuse(
            f"after_id: {_shown(value)} is not an event id (the id of an exported event, "
            f"e.g. {_EVENT_ID_EXAMPLE})"
        )
    return value.lower()


def _refuse(message: str) -> str:
    raise bad_parameter(message)


def parse_export(query: object, zone: tzinfo) -> ExportQuery:
    """start_time, end_time, format, after_id and the endpoints' filters; raise ApiError
    (400) naming a bad one."""
    times = query_window(query, zone)
    return ExportQuery(
        times,
        parse_format(last_value(query, "format")),
        parse_after_id(last_value(query, "after_id")),
        parse_filters(query),
    )


# ------------------------------------------------------------------ rendering


def ndjson_chunk(rows: Iterable[EventRow], zone: tzinfo, utc: bool) -> bytes:
    """One JSON line per event, each an item of the endpoints' `events` array."""
    options = _NDJSON_UTC if utc else orjson.OPT_APPEND_NEWLINE
    dumps = orjson.dumps
    return b"".join([dumps(event, option=options) for event in render_events(rows, zone, utc)])


def _cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_header() -> bytes:
    """The CSV header line."""
    return (",".join(CSV_COLUMNS) + "\r\n").encode()


def csv_chunk(rows: Iterable[EventRow], zone: tzinfo, utc: bool) -> bytes:
    """One RFC 4180 record per event (CRLF, fields quoted when they hold `,` `"` CR or LF);
    absent values are empty fields, event_data compact JSON, text cells that a spreadsheet
    would take for a formula begin with `'`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    loads, dumps = orjson.loads, orjson.dumps
    for row in rows:
        writer.writerow(
            [
                row.event_id,
                render_time(row.created_at, zone, utc),
                _cell(row.event_type),
                _cell(row.event_source),
                row.course_id,
                row.user_id,
                _cell(row.page_view_id),
                row.sis_batch_id,
                row.related_course_id,
                _cell(dumps(loads(row.event_data)).decode()),
            ]
        )
    return out.getvalue().encode()


def _instant(when: datetime | None, open_end: str) -> str:
    return open_end if when is None else when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def filename(kind: str, key: int, times: TimeRange, fmt: str) -> str:
    """`course-101_20260101T000000Z_20260131T235959Z.ndjson`: the target and the range
    (`beginning` / `latest` for an open end), in UTC."""
    return (
        f"{kind}-{key}_{_instant(times.start, 'beginning')}_{_instant(times.end, 'latest')}.{fmt}"
    )


# ------------------------------------------------------------------ concurrency


class ExportSlots:
    """How many exports this process runs at once, and how many it may."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0

    def take(self) -> bool:
        if self.running >= self.limit:
            return False
        self.running += 1
        return True

    def give_back(self) -> None:
        self.running -= 1


EXPORT_SLOTS = web.AppKey("export_slots", ExportSlots)


def export_limit(db_pool_max: int) -> int:
    """Exports one process runs at once: half its pool, so that the endpoints keep the rest."""
    return max(1, db_pool_max // 2)


# ------------------------------------------------------------------ the handler


@dataclass(frozen=True, slots=True)
class ExportTarget:
    """An export route: the endpoints' target (id resolution, tenancy probe), the column
    its events are selected by, and the name of what it exports."""

    target: Target
    column: str
    kind: str


COURSE_EXPORT = ExportTarget(COURSE, "course_id", "course")
ACCOUNT_EXPORT = ExportTarget(ACCOUNT, "account_id", "account")


@dataclass(frozen=True, slots=True)
class _Plan:
    key: int
    roots: Collection[int]
    query: ExportQuery
    after: Cursor | None


class _Stop(Exception):
    """The export ended before its last event (the client, the stall deadline or the store)."""

    def __init__(self, reason: str, error: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


async def _plan(request: web.Request, conn: Conn, info: TokenInfo, spec: ExportTarget) -> _Plan:
    """Parse, resolve the id and the resume position (400, 404)."""
    state = request.app[API_STATE]
    query = parse_export(request.query, state.zone)
    roots = info.root_account_ids
    key = await spec.target.resolve(conn, request.match_info[spec.target.param], roots)
    if key is None:
        raise not_found()
    after = None
    if query.after_id is not None:
        after = await event_position(conn, spec.column, key, roots, query.after_id)
        if after is None:
            if not await spec.target.known(conn, key, roots):
                raise not_found()
            raise bad_parameter(
                f"after_id: {query.after_id} is not an event of this {spec.kind}'s export "
                f"(use the id of an event an export of {spec.kind} {key} gave)"
            )
    return _Plan(key, roots, query, after)


async def _write(resp: web.StreamResponse, data: bytes, stall_s: float) -> None:
    """Write `data` in pieces of `WRITE_PIECE` bytes, each of which the client must take
    (into its socket buffers) within `stall_s`: a slow reader is waited for, one that takes
    next to nothing is not."""
    view = memoryview(data)
    try:
        for start in range(0, len(view), WRITE_PIECE):
            async with asyncio.timeout(stall_s):
                await resp.write(view[start : start + WRITE_PIECE])
    except TimeoutError:
        raise _Stop("stalled") from None
    except ConnectionError:
        raise _Stop("client gone") from None


async def _stream(
    request: web.Request,
    conn: Conn,
    spec: ExportTarget,
    plan: _Plan,
    answered: list[web.StreamResponse],
) -> web.StreamResponse:
    """Read the first chunk (an empty export of an unknown id is a 404), then answer (the
    response goes into `answered`) and write chunk after chunk."""
    state = request.app[API_STATE]
    stall_s = request.app[SETTINGS].export_stall_timeout_s
    query = plan.query
    chunks = export_chunks(
        conn,
        spec.column,
        plan.key,
        plan.roots,
        query.times.window,
        plan.after,
        filter_extra(query.filters),
        timeout=QUERY_TIMEOUT_S,
    )
    async with contextlib.aclosing(chunks):
        rows = None if query.times.empty else await anext(chunks, None)
        if rows is None and not await spec.target.known(conn, plan.key, plan.roots):
            raise not_found()
        csv_out = query.format == CSV
        name = filename(spec.kind, plan.key, query.times, query.format)
        resp = web.StreamResponse(
            headers={
                "Content-Type": (
                    f"{CSV_MEDIA_TYPE}; charset=utf-8; header=present"
                    if csv_out
                    else f"{NDJSON_MEDIA_TYPE}; charset=utf-8"
                ),
                "Content-Disposition": f'attachment; filename="{name}"',
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            }
        )
        await resp.prepare(request)
        answered.append(resp)
        if request.method == "HEAD":
            return resp
        render: Callable[[Iterable[EventRow], tzinfo, bool], bytes] = (
            csv_chunk if csv_out else ndjson_chunk
        )
        started = time.monotonic()
        events = 0
        try:
            if csv_out:
                await _write(resp, csv_header(), stall_s)
            while rows is not None:
                # Rendered a slice at a time: a whole chunk's event objects at once would be
                # most of what the export holds (docs/performance.md#export-render-slices).
                for start in range(0, len(rows), RENDER_SLICE):
                    data = render(rows[start : start + RENDER_SLICE], state.zone, state.utc)
                    await _write(resp, data, stall_s)
                events += len(rows)
                try:
                    rows = await anext(chunks, None)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    raise _Stop("store failed", describe(exc)) from None
        except _Stop as stop:
            _abandon(request, stop, spec, plan, events, started)
            return resp
        except Exception as exc:
            # Headers are sent: no JSON error can follow, only the cut.
            log.exception("export failed", extra=_fields(spec, plan, events, started))
            _abandon(request, _Stop("failed", describe(exc)), spec, plan, events, started)
            return resp
        log.info("export finished", extra=_fields(spec, plan, events, started))
        _count(request, plan, "finished", events)
        return resp


def _count(request: web.Request, plan: _Plan, outcome: str, events: int) -> None:
    metrics = request.app[METRICS]
    metrics.exports.labels(plan.query.format, outcome).inc()
    metrics.export_events.labels(plan.query.format).inc(events)


def _fields(spec: ExportTarget, plan: _Plan, events: int, started: float) -> dict[str, object]:
    return {
        "target": f"{spec.kind} {plan.key}",
        "format": plan.query.format,
        "events": events,
        "seconds": round(time.monotonic() - started, 3),
    }


def _abandon(
    request: web.Request,
    stop: _Stop,
    spec: ExportTarget,
    plan: _Plan,
    events: int,
    started: float,
) -> None:
    """End an export cut short: the client must not take a partial export for a whole one,
    so the connection is closed without the end of the chunked body (after what was
    written, when the store failed)."""
    transport = request.transport
    if transport is not None:
        if stop.error is not None:
            transport.close()  # what was written still reaches the client
        else:
            transport.abort()  # the client is gone or takes nothing: drop what is queued
    _count(request, plan, stop.reason.replace(" ", "_"), events)
    extra = {**_fields(spec, plan, events, started), "reason": stop.reason}
    if stop.error is None:
        log.info("export stopped", extra=extra)
    elif stop.reason != "failed":  # an unexpected failure is logged with its traceback
        log.warning("export stopped", extra={**extra, "error": stop.error})


def export_handler(spec: ExportTarget) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of one export route."""

    async def handle(request: web.Request) -> web.StreamResponse:
        token = require_token(request)
        runtime = request.app[RUNTIME]
        if runtime.pool is None:
            raise unavailable()
        if not request.app[HEALTH].migrations_ok:
            raise unavailable("The database schema is not ready; try again shortly.")
        # The token on the primary; the export itself on the read replica, if any.
        info = await token_info(request, token, request.app[API_STATE].tokens)
        pool = runtime.read_pool()
        assert pool is not None
        slots = request.app[EXPORT_SLOTS]
        if not slots.take():
            request.app[METRICS].exports_refused.inc()
            raise unavailable(
                f"{slots.running} exports are running, as many as this server runs at once; "
                "try again shortly."
            )
        running = request.app[METRICS].exports_running
        running.inc()
        try:
            return await _export(request, pool, info, spec)
        finally:
            running.dec()
            slots.give_back()

    return handle


async def _export(
    request: web.Request, pool: asyncpg.Pool, info: TokenInfo, spec: ExportTarget
) -> web.StreamResponse:
    """Run the export on a pooled connection; until its answer has begun, an unreachable
    database is a 503 (a connection lost in an outage is replaced once, as for the
    endpoints)."""
    answered: list[web.StreamResponse] = []
    for attempt in range(2):
        try:
            async with (
                pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                async with asyncio.timeout(QUERY_TIMEOUT_S):
                    plan = await _plan(request, conn, info, spec)
                return await _stream(request, conn, spec, plan, answered)
        except ApiError:
            raise
        except Exception as exc:
            if answered:
                # Ending the transaction failed after the answer began (the store went away
                # during the export, which is already cut): nothing more to tell the client.
                log.warning("export ended with an error", extra={"error": describe(exc)})
                return answered[0]
            if not is_transient(exc):
                raise
            reads = request.app[RUNTIME].reads
            if attempt == 0 and reads is not None and pool is reads.replica:
                reads.read_failed(exc)  # the primary answers instead
                pool = reads.primary
                continue
            if attempt == 0 and _connection_lost(exc):
                await pool.expire_connections()
                continue
            log.warning("database unavailable for an export", extra={"error": str(exc)})
            raise unavailable() from None
    raise unavailable()  # pragma: no cover - the loop always returns or raises
