"""Snapshot changes announced by the store, applied to the API's snapshot texts.

One job: keep ONE connection (not from the pool) to the primary LISTENing on
`course_audit_snapshots` (docs/store.md#snapshot-changes) and apply each announcement to the
process's `SnapshotTexts` (docs/design.md#snapshot-caches). On every (re)connect: LISTEN
first, then read the counter, then `started` (every kept text goes). While the connection is
down the texts are told `stopped`, and every page checks its snapshots' versions instead;
meanwhile the connection is tried again with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from course_audit.api.snapshots import SnapshotTexts
from course_audit.config import Settings
from course_audit.retry import Backoff, wait_or_stop
from course_audit.runtime.metrics import Metrics

log = logging.getLogger(__name__)

#: The channel the snapshot tables' triggers notify (migration 0006).
SNAPSHOTS_CHANNEL = "course_audit_snapshots"
#: The LISTEN connection's application_name (pg_stat_activity shows it).
LISTEN_NAME = "course-audit snapshot changes"
#: How often the LISTEN connection is asked to answer (a half-open connection is found).
PING_S = 10.0
#: Reconnecting: soon, then every 30 s (pages check versions meanwhile).
BACKOFF = Backoff(first=0.5, cap=30.0, jitter=0.2)

#: How often the schema is looked for at start-up.
SCHEMA_POLL_S = 0.2

_READ_COUNTER = "SELECT n FROM snapshot_changes"


def parse(payload: str) -> tuple[int, dict[str, Any] | None] | None:
    """An announcement's counter and ids by kind key (None: every id); None if unreadable."""
    try:
        note = orjson.loads(payload)
        changes = note["n"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(changes, int) or isinstance(changes, bool):
        return None
    if note.get("all") is True:
        return changes, None
    ids = {k: v for k, v in note.items() if k != "n" and isinstance(v, list)}
    return changes, ids


class Announcements:
    """The API process's listener of snapshot changes (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        texts: SnapshotTexts,
        metrics: Metrics,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.settings = settings
        #: Whether the store's schema is there (the counter is read at each connect).
        self._ready = ready
        self.texts = texts
        self.metrics = metrics
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    @property
    def url(self) -> str:
        # On the primary, as the API's role: announcements are never sent by a replica.
        return self.settings.api_database_url or self.settings.database_url

    async def start(self, app: web.Application | None = None) -> None:
        if self._task is None and not self._stop.is_set():
            self._task = asyncio.create_task(self._loop(), name="snapshot-announcements")

    async def close(self, app: web.Application | None = None) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_conn()

    def _notified(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        parsed = parse(str(payload))
        if parsed is None:
            # The counter is unknown: forget everything; the next announcement's gap (or a
            # page read past `received`) keeps pages checked until then.
            log.warning("unreadable snapshot announcement", extra={"payload": str(payload)[:200]})
            self.texts.announced(self.texts.received, None)
            return
        self.texts.announced(*parsed)

    def _set(self, up: bool, changes: int = 0) -> None:
        if up:
            self.texts.started(changes)
        else:
            self.texts.stopped()
        self.metrics.snapshot_listening.set(1 if up else 0)

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _loop(self) -> None:
        self._set(False)
        # Not before the migrations are applied (pages are refused until then anyway).
        while not self._ready():
            if await wait_or_stop(SCHEMA_POLL_S, self._stop):
                return
        attempt = 0
        while not self._stop.is_set():
            lost = asyncio.Event()
            self._set(False)
            try:
                conn = await asyncpg.connect(
                    self.url, timeout=5, server_settings={"application_name": LISTEN_NAME}
                )
                self._conn = conn
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                # LISTEN first, then the counter: no change is between the two unseen.
                await conn.add_listener(SNAPSHOTS_CHANNEL, self._notified)
                changes = await conn.fetchval(_READ_COUNTER, timeout=5)
            except Exception as exc:
                await self._close_conn()
                attempt += 1
                if attempt == 1:
                    log.warning(
                        "cannot LISTEN for snapshot changes; pages check snapshot versions",
                        extra={"error": str(exc)},
                    )
                if await wait_or_stop(BACKOFF.delay(attempt), self._stop):
                    return
                continue
            if lost.is_set():
                continue
            self._set(True, int(changes))
            log.info(
                "listening for snapshot changes",
                extra={"channel": SNAPSHOTS_CHANNEL, "changes": int(changes)},
            )
            attempt = 0
            while not self._stop.is_set() and not lost.is_set():
                if await wait_or_stop(PING_S, lost) or self._stop.is_set():
                    break
                try:
                    await conn.fetchval("SELECT 1", timeout=5)
                except Exception:
                    break
            self._set(False)
            await self._close_conn()
            if self._stop.is_set():
                return
            log.warning("lost the LISTEN connection for snapshot changes; reconnecting")
