"""The two Course Audit log endpoints (SPEC §4.1) and the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TypeVar

import asyncpg
from aiohttp import web

from course_audit.api.auth import TokenCache, authenticate, require_token
from course_audit.api.errors import ApiError, not_found, unavailable
from course_audit.api.links import base_url, link_header
from course_audit.api.openapi import openapi_document
from course_audit.api.params import Query, encode_bookmark, parse_query
from course_audit.api.render import SnapshotCache, render_document, wants_string_ids
from course_audit.api.snapshots import SnapshotTexts
from course_audit.api.tenancy import RootCache, account_within, course_within
from course_audit.runtime.web import HEALTH, RUNTIME, SETTINGS, json_response
from course_audit.store.db import Conn
from course_audit.store.errors import is_transient
from course_audit.store.queries import (
    EventRow,
    Linked,
    account_page,
    course_page,
    referenced,
    resolve_course,
)

log = logging.getLogger(__name__)

COURSE_PATH = "/api/v1/audit/course/courses/{course_id}"
ACCOUNT_PATH = "/api/v1/audit/course/accounts/{account_id}"
SIS_COURSE_PREFIX = "sis_course_id:"
#: Longest wait for a pooled connection, and for one request's queries, before a 503.
ACQUIRE_TIMEOUT_S = 5.0
QUERY_TIMEOUT_S = 15.0

_DIGITS = re.compile(r"[0-9]{1,19}")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ApiState:
    """What the API handlers share: the caches and the rendering zone."""

    tokens: TokenCache
    zone: tzinfo
    utc: bool
    roots: RootCache = field(default_factory=RootCache)
    texts: SnapshotTexts = field(default_factory=SnapshotTexts)
    snapshots: SnapshotCache = field(default_factory=SnapshotCache)


API_STATE = web.AppKey("api_state", ApiState)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of events with what the response needs besides them."""

    events: list[EventRow]
    has_more: bool
    linked: Linked
    refs: tuple[list[int], list[int], list[str]]


def _numeric(raw: str) -> int | None:
    return int(raw) if _DIGITS.fullmatch(raw) else None


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(
        exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError | ConnectionError
    )


async def with_database(request: web.Request, work: Callable[[Conn], Awaitable[_T]]) -> _T:
    """Run `work` on a pooled connection; an unreachable database is a 503, not a 500.

    A connection broken by an outage fails once: the idle ones are expired and the work is
    tried again on a fresh connection, so the first request after the database returns
    succeeds. While the database stays away, every request gets a quick 503.
    """
    pool = request.app[RUNTIME].pool
    if pool is None:
        raise unavailable()
    if not request.app[HEALTH].migrations_ok:
        raise unavailable("The database schema is not ready; try again shortly.")
    for attempt in range(2):
        try:
            async with asyncio.timeout(QUERY_TIMEOUT_S):
                async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                    return await work(conn)
        except ApiError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == 0 and _connection_lost(exc):
                await pool.expire_connections()
                continue
            log.warning("database unavailable for a request", extra={"error": str(exc)})
            raise unavailable() from None
    raise unavailable()  # pragma: no cover - the loop always returns or raises


async def _page(
    conn: Conn,
    fetch: Callable[..., Awaitable[list[EventRow]]],
    key: int,
    query: Query,
    texts: SnapshotTexts,
) -> Page:
    rows = (
        []
        if query.empty
        else await fetch(conn, key, query.window, query.cursor, query.per_page + 1)
    )
    has_more = len(rows) > query.per_page
    events = rows[: query.per_page]
    refs = referenced(events)
    linked = await texts.linked(conn, *refs)
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
        f"{base}{path}", query.start_time, query.end_time, query.page, next_page, query.per_page
    )
    return web.Response(
        body=body,
        content_type="application/json",
        charset="utf-8",
        headers={"Link": link, "Cache-Control": "no-store"},
    )


async def course_events(request: web.Request) -> web.Response:
    """GET /api/v1/audit/course/courses/{course_id}: one course's events, newest first."""
    token = require_token(request)
    settings = request.app[SETTINGS]
    base = base_url(request, settings)
    raw = request.match_info["course_id"]
    sis_id = raw[len(SIS_COURSE_PREFIX) :] if raw.startswith(SIS_COURSE_PREFIX) else None
    numeric = None if sis_id is not None else _numeric(raw)

    state = request.app[API_STATE]

    async def work(conn: Conn) -> tuple[int, Query, Page]:
        info = await authenticate(conn, token, state.tokens)
        query = parse_query(request.query, state.zone)
        roots = info.root_account_ids
        course_id: int | None
        if numeric is not None:
            known = await course_within(conn, state.roots, numeric, roots)
            course_id = numeric if known else None
        else:
            course_id = await resolve_course(conn, None, sis_id or None, roots)
        if course_id is None:
            raise not_found()
        return course_id, query, await _page(conn, course_page, course_id, query, state.texts)

    course_id, query, page = await with_database(request, work)
    return _respond(request, base, f"/api/v1/audit/course/courses/{course_id}", query, page)


async def account_events(request: web.Request) -> web.Response:
    """GET /api/v1/audit/course/accounts/{account_id}: events of courses directly in it."""
    token = require_token(request)
    settings = request.app[SETTINGS]
    base = base_url(request, settings)
    account_id = _numeric(request.match_info["account_id"])

    state = request.app[API_STATE]

    async def work(conn: Conn) -> tuple[Query, Page]:
        info = await authenticate(conn, token, state.tokens)
        query = parse_query(request.query, state.zone)
        if account_id is None or not await account_within(
            conn, state.roots, account_id, info.root_account_ids
        ):
            raise not_found()
        return query, await _page(conn, account_page, account_id, query, state.texts)

    query, page = await with_database(request, work)
    return _respond(request, base, f"/api/v1/audit/course/accounts/{account_id}", query, page)


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3.1 description, with this server as its server."""
    try:
        base = base_url(request, request.app[SETTINGS])
    except ApiError:
        base = "/"
    return json_response(openapi_document(base))
