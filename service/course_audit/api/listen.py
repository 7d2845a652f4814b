"""The API process's one LISTEN connection, shared by everything that follows a channel.

One job: keep ONE connection (not from the pool) to the primary LISTENing on the channel of
each follower — the snapshot changes (`course_audit_snapshots`, api/announcements.py) from
start-up, the live tail (`course_audit_events`, api/stream.py) from its first stream — and tell
each follower when it is listening and when it is not. On every (re)connect each follower's
LISTEN comes first, then its `listening` (which may read what it needs on the connection, in
that order, so that no change falls between the two unseen). While the connection is down the
followers are told `not_listening` (they fall back: pages check snapshot versions, streams
poll the store), and it is tried again with backoff; a ping every PING_S finds a half-open
connection. docs/design.md#one-listen-connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import asyncpg
from aiohttp import web

from course_audit.retry import Backoff, wait_or_stop

log = logging.getLogger(__name__)

#: The LISTEN connection's application_name (pg_stat_activity shows it).
LISTEN_NAME = "course-audit listen"
#: How often the LISTEN connection is asked to answer (a half-open connection is found).
PING_S = 10.0
#: Reconnecting: soon, then every 30 s (the followers fall back meanwhile).
BACKOFF = Backoff(first=0.5, cap=30.0, jitter=0.2)
#: How often the schema is looked for at start-up.
SCHEMA_POLL_S = 0.2
#: The longest wait for one statement on the LISTEN connection.
STATEMENT_TIMEOUT_S = 5.0


class Follower(Protocol):
    """What follows one channel."""

    #: The channel to LISTEN on.
    channel: str

    def notified(self, payload: str) -> None:
        """One notification on the channel, in the order PostgreSQL delivered it."""

    async def listening(self, conn: asyncpg.Connection) -> None:
        """LISTEN is on (again): read on `conn` whatever must be read after it. An exception
        counts as a lost connection."""

    def not_listening(self, lost: bool) -> None:
        """Not listening: not yet, or no more (`lost`: it had been)."""


class Listener:
    """The LISTEN connection (see the module's docstring)."""

    def __init__(self, url: str, ready: Callable[[], bool] = lambda: True) -> None:
        self.url = url
        #: Whether the store's schema is there (followers read from it when listening).
        self._ready = ready
        self._followers: list[Follower] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        #: Held while a connection is being set up, and while a late follower is attached.
        self._attaching = asyncio.Lock()
        #: Whether `_conn` is listening for every follower attached so far.
        self._up = False

    @property
    def up(self) -> bool:
        return self._up

    async def start(self, app: web.Application | None = None) -> None:
        if self._task is None and not self._stop.is_set():
            self._task = asyncio.create_task(self._loop(), name="listen")

    async def close(self, app: web.Application | None = None) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._close_conn()

    async def follow(self, follower: Follower) -> None:
        """Add a follower; when the connection is up, it is listening when this returns."""
        follower.not_listening(False)
        async with self._attaching:
            self._followers.append(follower)
            conn = self._conn
            if not self._up or conn is None or conn.is_closed():
                return  # attached with the others at the next connect
            try:
                await self._attach(conn, follower)
            except Exception as exc:
                log.warning("cannot LISTEN on a new channel", extra={"error": str(exc)})
                conn.terminate()  # the loop reconnects and attaches every follower

    @staticmethod
    async def _attach(conn: asyncpg.Connection, follower: Follower) -> None:
        def notified(_conn: Any, _pid: int, _channel: str, payload: object) -> None:
            follower.notified(str(payload))

        async with asyncio.timeout(STATEMENT_TIMEOUT_S):
            await conn.add_listener(follower.channel, notified)
        await follower.listening(conn)

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    def _down(self, lost: bool) -> None:
        self._up = False
        for follower in list(self._followers):
            follower.not_listening(lost)

    async def _connect(self, lost: asyncio.Event) -> asyncpg.Connection:
        async with self._attaching:
            conn = await asyncpg.connect(
                self.url, timeout=5, server_settings={"application_name": LISTEN_NAME}
            )
            self._conn = conn
            conn.add_termination_listener(lambda _c: lost.set())
            for follower in list(self._followers):
                await self._attach(conn, follower)
            self._up = not lost.is_set()
            return conn

    async def _loop(self) -> None:
        # Not before the migrations are applied (what followers read is in the schema).
        while not self._ready():
            if await wait_or_stop(SCHEMA_POLL_S, self._stop):
                return
        attempt = 0
        while not self._stop.is_set():
            lost = asyncio.Event()
            try:
                conn = await self._connect(lost)
            except Exception as exc:
                self._close_conn()
                self._down(False)
                attempt += 1
                if attempt == 1:
                    log.warning("cannot LISTEN on the primary", extra={"error": str(exc)})
                if await wait_or_stop(BACKOFF.delay(attempt), self._stop):
                    return
                continue
            if lost.is_set():
                self._down(True)
                continue
            log.info("listening", extra={"channels": [f.channel for f in self._followers]})
            attempt = 0
            while not self._stop.is_set() and not lost.is_set():
                if await wait_or_stop(PING_S, lost) or self._stop.is_set():
                    break
                try:
                    await conn.fetchval("SELECT 1", timeout=STATEMENT_TIMEOUT_S)
                except Exception:
                    break
            self._close_conn()
            if self._stop.is_set():
                return
            self._down(True)
            log.warning("lost the LISTEN connection; reconnecting")
