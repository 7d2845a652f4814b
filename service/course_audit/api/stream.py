"""Live tail (docs/api.md#live-tail): Server-Sent Events of a course's or account's new events.

One `StreamHub` per API process (docs/design.md#live-tail):

- The process's LISTEN connection (api/listen.py, shared with the snapshot changes) LISTENs,
  from the first stream on, on the channel the consumer's batch statement notifies after each
  commit (store/writer.py). A notification names where to look
  (oldest created_at, seq range, courses and accounts), never the rows.
- Subscribers share a *group* per (course or account, token's root accounts, filters). On a
  notification, each group that has subscribers and that the notification names runs one
  query for the batch's events, renders each event once, and appends the same bytes to every
  subscriber's bounded queue.
- A subscriber whose queue overflows (a slow reader) loses its queue and is caught up from
  the store by keyset, from the last event it was sent; memory stays bounded.
- If the LISTEN connection drops, the hub polls every group from its last position at
  AUDIT_STREAM_POLL_INTERVAL_S while it is reconnected (api/listen.py), then catches up once
  more.
- Tokens are checked again every TOKEN_TTL_S (one query for all of them): a revoked token's
  stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

import asyncpg
import orjson
from aiohttp import web

from course_audit.api.auth import TOKEN_TTL_S, require_token
from course_audit.api.errors import ApiError, bad_parameter, message_body, not_found
from course_audit.api.handlers import API_STATE, Target, token_info, with_database
from course_audit.api.listen import Listener
from course_audit.api.params import parse_filters
from course_audit.api.render import render_events
from course_audit.config import Settings
from course_audit.retry import wait_or_stop
from course_audit.runtime.http_server import HttpConnection
from course_audit.runtime.metrics import Metrics
from course_audit.runtime.replica import Reads
from course_audit.runtime.web import METRICS, RUNTIME, SETTINGS
from course_audit.store.db import Conn
from course_audit.store.errors import is_transient
from course_audit.store.queries import NO_FILTERS, Cursor, EventRow, Filters
from course_audit.store.tail import (
    EVENTS_CHANNEL,
    Announcement,
    event_position,
    latest_position,
    parse_announcement,
    tail_page,
)
from course_audit.store.tokens import hash_token

log = logging.getLogger(__name__)

#: Messages waiting for one subscriber; beyond it the queue is dropped and the subscriber is
#: caught up from the store.
QUEUE_MAX = 2000
#: A subscriber that does not take a write within this long is disconnected.
WRITE_TIMEOUT_S = 30.0
#: How far below a group's last key a catch-up looks for events stored late (an earlier
#: created_at than events already sent).
LATE_SLACK = timedelta(seconds=10)
#: How much older than the newest event a group has seen a newly stored event may be and
#: still be sent live. Older ones (a replay of old data) are left to the endpoints: reading
#: them would scan the group's index from that far back on every notification.
LATE_WINDOW = timedelta(hours=1)
#: Seqs a subscriber remembers having been sent, to skip an event that comes both from a
#: catch-up read and from the live queue.
RECENT_SEQS = 8192
#: Rows per catch-up page written to one subscriber.
BACKFILL_PAGE = 500
#: Group queries run at once (each on a pooled connection).
QUERY_CONCURRENCY = 4
#: How a client reconnects: EventSource waits this many milliseconds.
RETRY_MS = 2000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UTC_OPTIONS = orjson.OPT_OMIT_MICROSECONDS | orjson.OPT_UTC_Z
_COLUMNS = {"course_id": "course_id", "account_id": "account_id"}
_NAMES = {"course_id": "course", "account_id": "account"}

#: One queued message: the event's key and its whole SSE message.
Item = tuple[datetime, int, bytes]
GroupKey = tuple[str, int, tuple[int, ...], Filters]


def _after(a: Cursor, b: Cursor | None) -> bool:
    return b is None or (a.created_at, a.seq) > (b.created_at, b.seq)


def sse_messages(rows: Iterable[EventRow], zone: tzinfo, utc: bool) -> list[Item]:
    """Each event as one SSE message (`id`, `event: event`, `data`: the endpoints' JSON)."""
    rows = list(rows)
    option = _UTC_OPTIONS if utc else 0
    out: list[Item] = []
    for row, doc in zip(rows, render_events(rows, zone, utc), strict=True):
        data = orjson.dumps(doc, option=option)
        message = b"id: " + row.event_id.encode() + b"\nevent: event\ndata: " + data + b"\n\n"
        out.append((row.created_at, row.seq, message))
    return out


def error_message(body: dict[str, object]) -> bytes:
    """An `event: error` message whose data is an error body (then the stream ends)."""
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


class Subscriber:
    """One open stream: its queue, what it was sent last, and why it must end (if it must)."""

    __slots__ = (
        "digest",
        "ended",
        "group",
        "last",
        "overflowed",
        "queue",
        "recent",
        "recent_order",
        "request",
        "wake",
    )

    def __init__(self, group: Group, digest: bytes, request: web.Request) -> None:
        self.group = group
        self.digest = digest
        self.request = request
        self.queue: deque[Item] = deque()
        self.wake = asyncio.Event()
        self.overflowed = False
        #: Why the server ends the stream: an `event: error` message to send last, or b"".
        self.ended: bytes | None = None
        #: The key the subscriber is at: the newest event sent (or "now" when it joined).
        self.last: Cursor | None = group.last
        self.recent: set[int] = set()
        self.recent_order: deque[int] = deque()

    def offer(self, items: list[Item]) -> bool:
        """Queue `items`; False (and the queue dropped) when they do not fit."""
        if self.overflowed:
            return True
        if len(self.queue) + len(items) > QUEUE_MAX:
            self.queue.clear()
            self.overflowed = True
            self.wake.set()
            return False
        self.queue.extend(items)
        self.wake.set()
        return True

    def end(self, last_message: bytes = b"") -> None:
        if self.ended is None:
            self.ended = last_message
        self.wake.set()

    def fresh(self, created_at: datetime, seq: int) -> bool:
        """Whether the event was not sent yet; if not, note it as sent."""
        if seq in self.recent:
            return False
        self.recent.add(seq)
        self.recent_order.append(seq)
        if len(self.recent_order) > RECENT_SEQS:
            self.recent.discard(self.recent_order.popleft())
        at = Cursor(created_at, seq)
        if _after(at, self.last):
            self.last = at
        return True


@dataclass(eq=False)
class Group:
    """Subscribers of one course or account under one set of root accounts, with the same
    filters (docs/api.md#filters): the group's queries read only the events these keep."""

    column: str
    key: int
    roots: tuple[int, ...]
    #: The newest event's key the hub has seen of this group (None: it had none), and the
    #: highest seq among the events it has read.
    last: Cursor | None
    top_seq: int
    subscribers: set[Subscriber] = field(default_factory=set)
    filters: Filters = NO_FILTERS


@dataclass
class Pending:
    """Notifications not yet handled, merged: one round of group queries answers them all."""

    since: datetime | None = None
    lo: int = 0
    hi: int = 0
    every: bool = False  # a notification that named no ids: every group looks
    courses: set[int] = field(default_factory=set)
    accounts: set[int] = field(default_factory=set)
    catch_up: bool = False  # every group reads from its last position
    received: float | None = None

    def add(self, note: Announcement, at: float) -> None:
        if self.since is None:
            self.since, self.lo, self.hi = note.since, note.lo, note.hi
        else:
            self.since = min(self.since, note.since)
            self.lo, self.hi = min(self.lo, note.lo), max(self.hi, note.hi)
        if note.courses is None or note.accounts is None:
            self.every = True
        else:
            self.courses |= note.courses
            self.accounts |= note.accounts
        self.received = at if self.received is None else min(self.received, at)

    def names(self, group: Group) -> bool:
        if self.since is None:
            return False
        if self.every:
            return True
        ids = self.courses if group.column == "course_id" else self.accounts
        return group.key in ids

    def __bool__(self) -> bool:
        return self.since is not None or self.catch_up


class StreamHub:
    """The live tail of one API process (see the module's docstring)."""

    channel = EVENTS_CHANNEL

    def __init__(
        self, settings: Settings, metrics: Metrics, zone: tzinfo, utc: bool, listener: Listener
    ) -> None:
        self.settings = settings
        self._listener = listener
        self.metrics = metrics
        self.zone = zone
        self.utc = utc
        self.groups: dict[GroupKey, Group] = {}
        self.count = 0
        #: Whether the channel is listened to (else every group is polled).
        self.live = False
        self._pool: asyncpg.Pool | None = None
        self._reads: Reads | None = None
        self._pending = Pending()
        self._work = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: Polls every group while not listening.
        self._poller: asyncio.Task[None] | None = None
        self._listened = False
        self._semaphore = asyncio.Semaphore(QUERY_CONCURRENCY)
        #: Set while no stream is open (shutdown waits for it).
        self._empty = asyncio.Event()
        self._empty.set()

    def full(self) -> bool:
        return self.count >= self.settings.stream_max_subscribers

    # ------------------------------------------------------------------ lifecycle

    async def start(self, pool: asyncpg.Pool, reads: Reads | None = None) -> None:
        """Start following the channel (once, at the first subscriber); listening when this
        returns if the process's LISTEN connection is up.

        `pool` is the primary's (tokens); group queries read through `reads` when the API
        has a read replica (docs/operations.md#read-replicas).
        """
        if self._stop.is_set():
            return
        if not self._tasks:
            self._pool = pool
            self._reads = reads
            self._tasks = [
                asyncio.create_task(self._fanout_loop(), name="stream-fanout"),
                asyncio.create_task(self._token_loop(), name="stream-tokens"),
            ]
            await self._listener.follow(self)

    async def close(self, app: web.Application | None = None) -> None:
        """End every stream and stop (an on_shutdown hook: before aiohttp waits for handlers)."""
        self._stop.set()
        subscribers = [s for g in self.groups.values() for s in g.subscribers]
        for sub in subscribers:
            self.metrics.stream_ended.labels("shutdown").inc()
            sub.end()
        # Handlers leave once woken; one stuck writing to a client that does not read is cut.
        if self.count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), 2.0)
        for sub in subscribers:
            transport = sub.request.transport
            if transport is not None and not transport.is_closing():
                transport.abort()
        tasks = [*self._tasks, *([self._poller] if self._poller is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        self._poller = None

    # ------------------------------------------------------------------ subscribers

    def group_of(
        self, column: str, key: int, roots: Collection[int], filters: Filters = NO_FILTERS
    ) -> Group | None:
        return self.groups.get((column, key, tuple(sorted(set(roots))), filters))

    def join(
        self,
        column: str,
        key: int,
        roots: Collection[int],
        start: tuple[Cursor, int] | None,
        digest: bytes,
        request: web.Request,
        filters: Filters = NO_FILTERS,
    ) -> Subscriber:
        gkey = (column, key, tuple(sorted(set(roots))), filters)
        group = self.groups.get(gkey)
        if group is None:
            last, top = start if start is not None else (None, 0)
            group = Group(column, key, gkey[2], last, top, filters=filters)
            self.groups[gkey] = group
        sub = Subscriber(group, digest, request)
        group.subscribers.add(sub)
        self.count += 1
        self._empty.clear()
        self.metrics.stream_subscribers.set(self.count)
        return sub

    def leave(self, sub: Subscriber) -> None:
        group = sub.group
        if sub in group.subscribers:
            group.subscribers.discard(sub)
            self.count -= 1
            if not self.count:
                self._empty.set()
            self.metrics.stream_subscribers.set(self.count)
        if not group.subscribers:
            gkey = (group.column, group.key, group.roots, group.filters)
            if self.groups.get(gkey) is group:
                del self.groups[gkey]

    # ------------------------------------------------------------------ notifications

    def notified(self, payload: str) -> None:
        self.metrics.stream_notifications.inc()
        note = parse_announcement(payload)
        if note is None:
            log.warning("unreadable stream notification", extra={"payload": payload[:200]})
            self._catch_up()
            return
        if self.groups:
            self._pending.add(note, time.monotonic())
            self._work.set()

    def _catch_up(self) -> None:
        self._pending.catch_up = True
        if self._pending.received is None:
            self._pending.received = time.monotonic()
        self._work.set()

    def _set_listening(self, up: bool) -> None:
        self.live = up
        self.metrics.stream_listening.set(1 if up else 0)

    async def listening(self, conn: asyncpg.Connection) -> None:
        if self._listened:
            log.info("live tail listening again; catching up from each stream's position")
        else:
            log.info("live tail listening for stored batches", extra={"channel": EVENTS_CHANNEL})
        self._listened = True
        self._set_listening(True)
        # Whatever was stored while not listening (nothing, the first time).
        self._catch_up()

    def not_listening(self, lost: bool) -> None:
        was = self.live
        self._set_listening(False)
        if lost and was:
            log.warning(
                "live tail lost its LISTEN connection; polling the store until it is back",
                extra={"poll_interval_s": self.settings.stream_poll_interval_s},
            )
        polling = self._poller is not None and not self._poller.done()
        if self._tasks and not self._stop.is_set() and not polling:
            self._poller = asyncio.create_task(self._poll_loop(), name="stream-poll")

    async def _poll_loop(self) -> None:
        """While not listening: read every group from its position, every poll interval."""
        poll = float(self.settings.stream_poll_interval_s)
        while not self.live and not self._stop.is_set():
            self._catch_up()
            if await wait_or_stop(poll, self._stop):
                return

    async def _fanout_loop(self) -> None:
        poll = float(self.settings.stream_poll_interval_s)
        while True:
            await self._work.wait()
            self._work.clear()
            pending, self._pending = self._pending, Pending()
            if not pending or not self.groups:
                continue
            try:
                await self._deliver(pending)
            except Exception as exc:
                # The store did not answer: read everything again from each group's position.
                log.warning("live tail could not read new events", extra={"error": str(exc)})
                await asyncio.sleep(poll)
                self._catch_up()

    async def _deliver(self, pending: Pending) -> None:
        if pending.catch_up:
            self.metrics.stream_polls.inc()
        groups = [g for g in self.groups.values() if pending.catch_up or pending.names(g)]
        pool = await self._round_pool()
        await asyncio.gather(*(self._read_group(pool, g, pending) for g in groups))
        if pending.received is not None:
            self.metrics.stream_fanout_seconds.observe(time.monotonic() - pending.received)

    async def _round_pool(self) -> asyncpg.Pool:
        """Where a round of group queries reads: with a read replica, the replica once it has
        replayed everything committed before the round began (so every notified batch is
        visible there: a query run too early would find nothing and never look again), else
        the primary."""
        assert self._pool is not None
        if self._reads is None:
            return self._pool
        return await self._reads.caught_up()

    async def _read_group(self, pool: asyncpg.Pool, group: Group, pending: Pending) -> None:
        """One group's new events (a query per page, whatever the number of subscribers)."""
        rows: list[EventRow] = []
        async with self._semaphore, pool.acquire(timeout=10) as conn:
            if pending.catch_up:
                rows.extend(await self._group_rows(conn, group, None))
            if pending.names(group):
                assert pending.since is not None
                rows.extend(await self._group_rows(conn, group, pending))
        if not rows:
            return
        seen: set[int] = set()
        fresh = []
        for row in sorted(rows, key=lambda r: (r.created_at, r.seq)):
            if row.seq not in seen:
                seen.add(row.seq)
                fresh.append(row)
        for row in fresh:
            if _after(row.cursor, group.last):
                group.last = row.cursor
            group.top_seq = max(group.top_seq, row.seq)
        items = sse_messages(fresh, self.zone, self.utc)
        self.metrics.stream_events.inc(len(items) * len(group.subscribers))
        for sub in list(group.subscribers):
            if not sub.offer(items):
                self.metrics.stream_resyncs.inc()

    async def _group_rows(
        self, conn: Conn, group: Group, pending: Pending | None
    ) -> list[EventRow]:
        column, key, roots, filters = group.column, group.key, group.roots, group.filters
        out: list[EventRow] = []
        page: Cursor | None = None
        while True:
            if pending is not None:
                assert pending.since is not None
                since = pending.since
                if group.last is not None:
                    since = max(since, group.last.created_at - LATE_WINDOW)
                rows = await tail_page(
                    conn, column, key, roots, since,
                    seq_range=(pending.lo, pending.hi), page=page, filters=filters,
                )  # fmt: skip
            elif group.last is None:
                rows = await tail_page(conn, column, key, roots, _EPOCH, page=page, filters=filters)
            else:
                rows = await tail_page(
                    conn, column, key, roots, group.last.created_at - LATE_SLACK,
                    after=group.last, late_seq=group.top_seq, page=page, filters=filters,
                )  # fmt: skip
            out.extend(rows)
            if len(rows) < 1000:
                return out
            page = rows[-1].cursor

    async def _token_loop(self) -> None:
        """End the streams of tokens revoked (or deleted) since they were opened."""
        while not self._stop.is_set():
            if await wait_or_stop(TOKEN_TTL_S, self._stop):
                return
            digests = {s.digest for g in self.groups.values() for s in g.subscribers}
            if not digests or self._pool is None:
                continue
            try:
                async with self._pool.acquire(timeout=5) as conn:
                    rows = await conn.fetch(
                        "SELECT token_hash FROM api_tokens"
                        " WHERE token_hash = ANY($1::bytea[]) AND revoked_at IS NULL",
                        list(digests),
                    )
            except Exception as exc:
                log.debug("live tail could not check tokens", extra={"error": str(exc)})
                continue
            active = {bytes(r["token_hash"]) for r in rows}
            message = error_message(message_body("Revoked access token."))
            for group in list(self.groups.values()):
                for sub in list(group.subscribers):
                    if sub.digest not in active:
                        self.metrics.stream_ended.labels("token_revoked").inc()
                        sub.end(message)


STREAM_HUB = web.AppKey("stream_hub", StreamHub)


def too_many_streams() -> ApiError:
    return ApiError(
        503,
        message_body("This server holds as many live streams as it may; try again shortly."),
        {"Retry-After": "5"},
    )


def parse_resume(request: web.Request) -> str | None:
    """The event id to resume after: the Last-Event-ID header (what a reconnecting
    EventSource sends), else the last `last_event_id` parameter; 400 if it is no event id."""
    header = request.headers.get("Last-Event-ID")
    if header is not None and header.strip():
        name, value = "Last-Event-ID", header.strip()
    else:
        values = request.query.getall("last_event_id", [])
        if not values:
            return None
        name, value = "last_event_id", values[-1]
    try:
        return str(uuid.UUID(value)) if len(value) == 36 else _bad_id(name, value)
    except ValueError:
        return _bad_id(name, value)


def _bad_id(name: str, value: str) -> str:
    shown = repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    raise bad_parameter(f"{name}: {shown} is not an event id (a UUID such as an event's `id`)")


@dataclass(frozen=True, slots=True)
class Opened:
    key: int
    roots: tuple[int, ...]
    resume: Cursor | None
    start: tuple[Cursor, int] | None
    filters: Filters = NO_FILTERS


def stream_handler(target: Target) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """GET .../{id}/stream: authenticate, resolve, then stream new events until the end."""
    column = _COLUMNS[target.param]
    name = _NAMES[target.param]

    async def handle(request: web.Request) -> web.StreamResponse:
        token = require_token(request)
        raw = request.match_info[target.param]
        state = request.app[API_STATE]
        hub = request.app[STREAM_HUB]

        info = await token_info(request, token, state.tokens)
        # After the token, as the endpoints' parameters; the filters parsed as theirs.
        filters = parse_filters(request.query)
        resume_id = parse_resume(request)
        roots = info.root_account_ids

        async def work(conn: Conn) -> Opened:
            key = await target.resolve(conn, raw, roots)
            if key is None or not await target.known(conn, key, roots):
                raise not_found()
            resume = None
            if resume_id is not None:
                resume = await event_position(conn, column, key, roots, resume_id)
                if resume is None:
                    raise bad_parameter(
                        f"last_event_id: {resume_id} is not an event of this {name}"
                    )
            start = None
            if hub.group_of(column, key, roots, filters) is None:
                # Unfiltered: every event after the newest one is new, whatever it is (the
                # newest event a filter keeps may be far back).
                start = await latest_position(conn, column, key, roots, LATE_SLACK)
            return Opened(key, roots, resume, start, filters)

        opened = await with_database(request, work, read=True)
        if request.method == "HEAD":
            return web.Response(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                         "Cache-Control": "no-store"})  # fmt: skip
        runtime = request.app[RUNTIME]
        assert runtime.pool is not None  # with_database answered 503 otherwise
        await hub.start(runtime.pool, runtime.reads)
        # Checked and joined with no await between: concurrent requests cannot pass the cap.
        if hub.full():
            hub.metrics.stream_ended.labels("refused_full").inc()
            raise too_many_streams()
        sub = hub.join(
            column, opened.key, opened.roots, opened.start, hash_token(token), request,
            opened.filters,
        )  # fmt: skip
        protocol = request.protocol
        if isinstance(protocol, HttpConnection):
            protocol.on_lost.append(sub.end)
        try:
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream; charset=utf-8",
                    "Cache-Control": "no-store",
                    "X-Accel-Buffering": "no",
                }
            )
            await response.prepare(request)
            try:
                await _pump(request, response, hub, sub, column, opened)
            except Exception as exc:
                # Headers are sent: no JSON error response any more, an error event instead.
                hub.metrics.stream_ended.labels("error").inc()
                if is_transient(exc):
                    log.warning("live tail stream cut: database", extra={"error": str(exc)})
                    body = message_body("The database is unavailable; try again shortly.")
                else:
                    log.exception("unexpected error in a live tail stream")
                    body = message_body("An internal error occurred.")
                await _write(request, response, error_message(body))
            return response
        finally:
            hub.leave(sub)
            if isinstance(protocol, HttpConnection) and sub.end in protocol.on_lost:
                protocol.on_lost.remove(sub.end)

    return handle


async def _write(request: web.Request, response: web.StreamResponse, data: bytes) -> bool:
    """Write `data`; False when the client is gone or too slow to take it (then cut)."""
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await response.write(data)
        return True
    except TimeoutError:
        request.app[METRICS].stream_ended.labels("slow_client").inc()
        if request.transport is not None:
            request.transport.abort()
        return False
    except (ConnectionError, RuntimeError):
        return False


async def _backfill(
    request: web.Request,
    response: web.StreamResponse,
    hub: StreamHub,
    sub: Subscriber,
    column: str,
    opened: Opened,
    after: Cursor | None,
) -> bool:
    """Send the stored events after `after` (keyset), a page at a time; False if cut off."""
    runtime = request.app[RUNTIME]
    assert runtime.pool is not None
    # With a replica: once it has replayed what the hub may already have read from the
    # primary (a catch-up must not miss what the cleared queue held).
    pool = runtime.pool if runtime.reads is None else await runtime.reads.caught_up()
    page: Cursor | None = None
    since = _EPOCH if after is None else after.created_at
    while sub.ended is None:
        async with pool.acquire(timeout=10) as conn:
            rows = await tail_page(
                conn, column, opened.key, opened.roots, since,
                after=after, page=page, limit=BACKFILL_PAGE, filters=opened.filters,
            )  # fmt: skip
        items = [i for i in sse_messages(rows, hub.zone, hub.utc) if sub.fresh(i[0], i[1])]
        if items and not await _write(request, response, b"".join(i[2] for i in items)):
            return False
        if len(rows) < BACKFILL_PAGE:
            return True
        page = rows[-1].cursor
    return True


async def _pump(
    request: web.Request,
    response: web.StreamResponse,
    hub: StreamHub,
    sub: Subscriber,
    column: str,
    opened: Opened,
) -> None:
    heartbeat = float(request.app[SETTINGS].stream_heartbeat_s)
    if not await _write(request, response, f"retry: {RETRY_MS}\n: live tail\n\n".encode()):
        return
    if opened.resume is not None:
        sub.last = opened.resume
        if not await _backfill(request, response, hub, sub, column, opened, opened.resume):
            return
    while True:
        if sub.ended is not None:
            if sub.ended:
                await _write(request, response, sub.ended)
            return
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        if sub.overflowed:
            # Too slow for the live queue: catch up from the store, from what it was sent.
            sub.queue.clear()
            sub.overflowed = False
            if not await _backfill(request, response, hub, sub, column, opened, sub.last):
                return
            continue
        if sub.queue:
            items, sub.queue = sub.queue, deque()
            chunk = b"".join(m for at, seq, m in items if sub.fresh(at, seq))
            if chunk and not await _write(request, response, chunk):
                return
            continue
        sub.wake.clear()
        try:
            await asyncio.wait_for(sub.wake.wait(), heartbeat)
        except TimeoutError:
            if not await _write(request, response, b": keep-alive\n\n"):
                return


def install_stream(app: web.Application, listener: Listener, course_path: str,
                   account_path: str, course: Target, account: Target) -> None:  # fmt: skip
    """Add the two stream routes and the process's hub (closed at shutdown), which follows
    the process's LISTEN connection (`listener`) from its first stream."""
    state = app[API_STATE]
    hub = StreamHub(app[SETTINGS], app[METRICS], state.zone, state.utc, listener)
    app[STREAM_HUB] = hub
    app.on_shutdown.append(hub.close)
    app.router.add_get(course_path + "/stream", stream_handler(course))
    app.router.add_get(account_path + "/stream", stream_handler(account))
