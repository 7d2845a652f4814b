"""The two Course Audit log endpoints (docs/api.md#endpoints), one handler over two targets, and the
OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TypeVar

import asyncpg
from aiohttp import web

from course_audit.api.auth import TokenCache, authenticate, cached_token, require_token
from course_audit.api.errors import ApiError, not_found, unavailable
from course_audit.api.links import base_url, link_header
from course_audit.api.openapi import openapi_document
from course_audit.api.params import Query, encode_bookmark, parse_query
from course_audit.api.render import SnapshotCache, render_document, wants_string_ids
from course_audit.api.snapshots import SnapshotTexts
from course_audit.runtime.web import HEALTH, RUNTIME, SETTINGS, json_response
from course_audit.store.db import Conn
from course_audit.store.errors import is_transient
from course_audit.store.queries import (
    Cursor,
    EventRow,
    Filters,
    Linked,
    PageRows,
    Refs,
    Window,
    account_known,
    account_page_rows,
    course_known,
    course_page_rows,
    referenced,
    resolve_sis_course,
)
from course_audit.store.tokens import TokenInfo

log = logging.getLogger(__name__)

COURSE_PATH = "/api/v1/audit/course/courses/{course_id}"
ACCOUNT_PATH = "/api/v1/audit/course/accounts/{account_id}"
SIS_COURSE_PREFIX = "sis_course_id:"
#: Longest wait for a pooled connection, and for one request's queries, before a 503.
ACQUIRE_TIMEOUT_S = 5.0
QUERY_TIMEOUT_S = 15.0

#: The events' Content-Type, given as a header (the content_type/charset arguments parse it).
JSON_UTF8 = "application/json; charset=utf-8"
_DIGITS = re.compile(r"[0-9]{1,19}")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ApiState:
    """What the API handlers share: the caches and the rendering zone."""

    tokens: TokenCache
    zone: tzinfo
    utc: bool
    texts: SnapshotTexts = field(default_factory=SnapshotTexts)
    snapshots: SnapshotCache = field(default_factory=SnapshotCache)


API_STATE = web.AppKey("api_state", ApiState)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of events with what the response needs besides them."""

    events: list[EventRow]
    has_more: bool
    linked: Linked
    refs: Refs


def _numeric(raw: str) -> int | None:
    return int(raw) if _DIGITS.fullmatch(raw) else None


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(
        exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError | ConnectionError
    )


async def with_database(
    request: web.Request, work: Callable[[Conn], Awaitable[_T]], *, read: bool = False
) -> _T:
    """Run `work` on a pooled connection; an unreachable database is a 503, not a 500.

    With `read`, on the read replica's pool while it is usable (docs/operations.md#read-replicas);
    otherwise, and for anything that must see the primary (tokens), on the primary's.

    A connection broken by an outage fails once: the idle ones are expired and the work is
    tried again on a fresh connection, so the first request after the database returns
    succeeds. While the database stays away, every request gets a quick 503. A replica that
    fails so is left for the primary until its next check finds it again.
    """
    runtime = request.app[RUNTIME]
    pool = runtime.read_pool() if read else runtime.pool
    if pool is None:
        raise unavailable()
    if not request.app[HEALTH].migrations_ok:
        raise unavailable("The database schema is not ready; try again shortly.")
    loop = asyncio.get_running_loop()
    for attempt in range(2):
        try:
            # One deadline: ACQUIRE_TIMEOUT_S for a connection, then QUERY_TIMEOUT_S for the
            # work (asyncpg's own acquire timeout runs the acquire as a task of its own).
            async with asyncio.timeout(ACQUIRE_TIMEOUT_S) as deadline:
                async with pool.acquire() as conn:
                    deadline.reschedule(loop.time() + QUERY_TIMEOUT_S)
                    return await work(conn)
        except ApiError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            reads = runtime.reads
            if attempt == 0 and reads is not None and pool is reads.replica:
                reads.read_failed(exc)
                pool = reads.primary
                continue
            if attempt == 0 and _connection_lost(exc):
                await pool.expire_connections()
                continue
            log.warning("database unavailable for a request", extra={"error": str(exc)})
            raise unavailable() from None
    raise unavailable()  # pragma: no cover - the loop always returns or raises


async def token_info(request: web.Request, token: str, cache: TokenCache) -> TokenInfo:
    """The token's record: from the cache, else from the primary (never a replica, so that a
    token just created or revoked counts at once, whatever the replica's lag)."""
    cached = cached_token(token, cache)
    if cached is not None:
        return cached
    return await with_database(request, lambda conn: authenticate(conn, token, cache))


PageQuery = Callable[
    [Conn, int, Collection[int], Window, Cursor | None, int, Filters], Awaitable[PageRows]
]
Known = Callable[[Conn, int, Collection[int]], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Target:
    """What an events route reads: its path parameter, how that names an id (None: 404),
    the page query over that id within the token's root accounts, and whether the store
    holds the id under one of them.

    Tenancy (docs/api.md#tenancy) follows the root account each event was stored under: the
    page query reads only the token's root accounts, so a page with events proves the id is
    the token's; only an empty page asks `known`. An id nobody holds and an id only another
    tenant holds take that same path (an empty page, one primary-key probe that finds
    nothing), and nothing about tenancy is cached, so neither timing nor a cache tells them
    apart.
    """

    param: str
    #: The route's path template, with `{param}`.
    path: str
    resolve: Callable[[Conn, str, Collection[int]], Awaitable[int | None]]
    page: PageQuery
    known: Known


async def _course_id(conn: Conn, raw: str, roots: Collection[int]) -> int | None:
    if raw.startswith(SIS_COURSE_PREFIX):
        sis_id = raw[len(SIS_COURSE_PREFIX) :]
        return await resolve_sis_course(conn, sis_id, roots) if sis_id else None
    return _numeric(raw)


async def _account_id(conn: Conn, raw: str, roots: Collection[int]) -> int | None:
    return _numeric(raw)


#: GET /api/v1/audit/course/courses/{course_id}: one course's events, newest first; the id
#: may be `sis_course_id:<value>`.
COURSE = Target("course_id", COURSE_PATH, _course_id, course_page_rows, course_known)
#: GET /api/v1/audit/course/accounts/{account_id}: events of courses directly in the account.
ACCOUNT = Target("account_id", ACCOUNT_PATH, _account_id, account_page_rows, account_known)


async def _page(
    conn: Conn,
    target: Target,
    key: int,
    roots: Collection[int],
    query: Query,
    texts: SnapshotTexts,
) -> Page:
    rows, changes = (
        PageRows([], None)
        if query.empty
        else await target.page(
            conn, key, roots, query.window, query.cursor, query.per_page + 1, query.filters
        )
    )
    if not rows and not await target.known(conn, key, roots):
        raise not_found()
    has_more = len(rows) > query.per_page
    events = rows[: query.per_page]
    refs = referenced(events)
    # `changes`: the snapshot counter the page was read at (docs/design.md#snapshot-caches).
    linked = await texts.linked(conn, refs, roots, changes)
    return Page(events, has_more, linked, refs)


def _respond(request: web.Request, base: str, path: str, query: Query, page: Page) -> web.Response:
    state = request.app[API_STATE]
    next_page = encode_bookmark(page.events[-1].cursor) if page.has_more else None
    body = render_document(
        page.events,
        page.linked,
        page.refs,
        base,
        state.zone,
        state.utc,
        string_ids=wants_string_ids(request.headers.get("Accept")),
        cache=state.snapshots,
    )
    link = link_header(
        f"{base}{path}",
        query.start_time,
        query.end_time,
        query.page,
        next_page,
        query.per_page,
        query.filters,
    )
    return web.Response(
        body=body,
        headers={"Content-Type": JSON_UTF8, "Link": link, "Cache-Control": "no-store"},
    )


def events_handler(target: Target) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of one events route: authenticate, resolve the id, read and render a page."""

    async def handle(request: web.Request) -> web.Response:
        token = require_token(request)
        base = base_url(request, request.app[SETTINGS])
        raw = request.match_info[target.param]
        state = request.app[API_STATE]

        info = await token_info(request, token, state.tokens)
        query = parse_query(request.query, state.zone)
        roots = info.root_account_ids

        async def work(conn: Conn) -> tuple[int, Page]:
            key = await target.resolve(conn, raw, roots)
            if key is None:
                raise not_found()
            return key, await _page(conn, target, key, roots, query, state.texts)

        key, page = await with_database(request, work, read=True)
        # The numeric id in links, also for a course asked for by its SIS id.
        path = target.path.format_map({target.param: key})
        return _respond(request, base, path, query, page)

    return handle


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3.1 description, with this server as its server."""
    try:
        base = base_url(request, request.app[SETTINGS])
    except ApiError:
        base = "/"
    return json_response(openapi_document(base))
