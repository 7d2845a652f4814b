"""The HTTP server's connections (docs/operations.md#http-connections).

aiohttp's protocol, `RequestHandler`, waits for a request head as long as its keep-alive
timeout (an hour by default), accepts any number of connections, and logs a request it cannot
parse with the request line in the traceback. `HttpConnection`, a subclass used through
`HttpSite`, adds:

- a deadline for each request head: counted from the connection's start for its first
  request, and from the first byte of a later one on a kept-alive connection. A connection
  without a complete head by then is closed, so a client dripping a byte a second is cut too;
- aiohttp's own idle keep-alive timeout, taken from the settings;
- a cap on open connections. A connection beyond it closes the connection that has waited
  longest for a request head (idle or partial), so that slow clients holding many
  connections cannot keep `/health/live` out; when every other connection is busy with a
  request, the new one is closed instead;
- protocol errors (a request aiohttp cannot parse) answered in JSON and logged in one line
  that names the kind of error and the peer, never the request line or a header.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server
from prometheus_client import Counter
from yarl import URL

from course_audit.config import Settings
from course_audit.runtime.metrics import Metrics
from course_audit.runtime.web import json_response

log = logging.getLogger(__name__)

#: File descriptors kept for everything but client connections (database pool, Kafka, logs).
RESERVED_FDS = 64
#: Connections accepted in one go before any of them counts against the cap (the backlog).
ACCEPT_BURST = 128

#: What the protocol's own error answers say (the body is JSON, as for every other error).
_ANSWERS = {
    400: "The request is not valid HTTP.",
    500: "An internal error occurred.",
    504: "The request took too long.",
}


def _peer(address: Any) -> str | None:
    """The address part of a peer name (an (ip, port, ...) tuple for TCP)."""
    if isinstance(address, tuple) and address:
        return str(address[0])
    return None if address is None else str(address)


class Connections:
    """The open connections of one process, and which of them wait for a request head.

    `waiting` is kept in the order the connections began to wait (a new connection, or one
    whose last response is written), so its first entry is the one to close at the cap.
    """

    def __init__(self, limit: int, closed: Counter) -> None:
        self.limit = limit
        self._closed = closed
        self._open: set[HttpConnection] = set()
        self._waiting: dict[HttpConnection, None] = {}

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, conn: HttpConnection) -> bool:
        """Count `conn` in; at the cap, first close the connection that waited longest.

        False when every open connection is busy with a request: the caller closes `conn`.
        """
        if len(self._open) >= self.limit:
            oldest = next(iter(self._waiting), None)
            if oldest is None:
                self.count("refused")
                return False
            self.drop(oldest)
            self.count("evicted")
            oldest.evict(self.limit)
        self._open.add(conn)
        self._waiting[conn] = None
        return True

    def waiting(self, conn: HttpConnection) -> None:
        """`conn` has answered its requests and waits for the next head (newest waiter)."""
        if conn in self._open:
            self._waiting.pop(conn, None)
            self._waiting[conn] = None

    def busy(self, conn: HttpConnection) -> None:
        """`conn` has a complete request head: it is no longer closed to make room."""
        self._waiting.pop(conn, None)

    def drop(self, conn: HttpConnection) -> None:
        self._open.discard(conn)
        self._waiting.pop(conn, None)

    def count(self, reason: str) -> None:
        self._closed.labels(reason).inc()


class HttpConnection(web.RequestHandler):
    """aiohttp's protocol with a request-head deadline, the connection cap and quiet errors.

    A connection is *busy* from a complete request head until its response is written:
    aiohttp counts the heads it has parsed (`_request_count`), this class the responses
    it has finished.
    """

    __slots__ = (
        "_answered",
        "_connections",
        "_deadline",
        "_head_bytes",
        "_head_started",
        "_header_timeout",
        "on_lost",
    )

    def __init__(
        self,
        manager: Server,
        *,
        loop: asyncio.AbstractEventLoop,
        connections: Connections,
        header_timeout_s: float,
        keepalive_timeout_s: float,
    ) -> None:
        # No access log (its lines hold the request line); None is aiohttp's documented way
        # to turn it off, though its annotation lacks it.
        super().__init__(
            manager,
            loop=loop,
            keepalive_timeout=keepalive_timeout_s,
            access_log=None,  # type: ignore[arg-type]
        )
        self._connections = connections
        self._header_timeout = header_timeout_s
        self._answered = 0
        self._deadline: asyncio.TimerHandle | None = None
        #: Bytes of the request head in progress, and when it began; None before its first byte.
        self._head_bytes: int | None = None
        self._head_started = 0.0
        #: Called once when the connection is lost (a live tail stream ends at once, rather
        #: than at its next write).
        self.on_lost: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ connection life

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._connections.admit(self):
            log.warning(
                "connection refused: the connection limit is reached and every connection "
                "is busy with a request",
                extra={"peer": _peer(self.peername), "limit": self._connections.limit},
            )
            self.force_close()
            return
        self._arm(self._loop.time() + self._header_timeout)

    def data_received(self, data: bytes) -> None:
        if data and not self._busy():
            if self._head_bytes is None:  # the first byte of a request head
                self._head_bytes = 0
                self._head_started = self._loop.time()
            self._head_bytes += len(data)
        super().data_received(data)
        if self._busy():
            self._head_bytes = None
            self._disarm()
            self._connections.busy(self)
        elif self._head_bytes is not None and self._deadline is None:
            # Part of a later request's head: its deadline runs from its first byte (a head
            # that arrives whole in one read never needs a timer).
            self._arm(self._head_started + self._header_timeout)

    async def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1
            if not self._busy() and self.transport is not None:
                # Idle now: aiohttp's keep-alive timeout runs until the next head begins.
                self._connections.waiting(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._connections.drop(self)
        callbacks, self.on_lost = self.on_lost, []
        for callback in callbacks:
            callback()
        super().connection_lost(exc)

    def evict(self, limit: int) -> None:
        """Close this waiting connection to make room for a new one."""
        log.info(
            "connection closed to make room: the connection limit is reached",
            extra={"peer": _peer(self.peername), "limit": limit, "head_bytes": self._head_bytes},
        )
        self._disarm()
        self.force_close()

    # ------------------------------------------------------------------ the head deadline

    def _busy(self) -> bool:
        return self._request_count > self._answered

    def _arm(self, when: float) -> None:
        self._disarm()
        self._deadline = self._loop.call_at(when, self._head_overdue)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_overdue(self) -> None:
        self._deadline = None
        if self.transport is None or self._busy():
            return
        log.info(
            "connection closed: no complete request head in time",
            extra={
                "peer": _peer(self.peername),
                "timeout_s": self._header_timeout,
                "head_bytes": self._head_bytes or 0,
            },
        )
        self._connections.count("head_timeout")
        self.force_close()

    # ------------------------------------------------------------------ errors

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        """Answer in JSON and log one line; `message` and the exception's text (which hold
        the request line or a header) are never logged."""
        peer = request.remote
        if isinstance(exc, HttpProcessingError):
            log.info(
                "bad request refused",
                extra={"error": type(exc).__name__, "status": status, "peer": peer},
            )
            self._connections.count("bad_request")
        elif status == 504:
            log.warning("request handler timed out", extra={"status": status, "peer": peer})
        else:
            # The traceback keeps its frames and exception types only (runtime/logs.py).
            log.error(
                "unexpected error handling a request",
                extra={"status": status, "peer": peer},
                exc_info=exc,
            )
        if request.writer.output_size > 0:
            raise ConnectionError("a response was begun; the connection is broken")
        text = _ANSWERS.get(status, _ANSWERS[500 if status >= 500 else 400])
        response = json_response(
            {"errors": [{"message": text}]}, status=status, headers={"Cache-Control": "no-store"}
        )
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp's other error lines ("Unhandled exception", ...); the traceback is stripped
        # of exception messages by runtime/logs.py, as for this module's own lines.
        log.error(*args, **kw)


class HttpSite(web.BaseSite):
    """A TCP site whose connections are made by `factory` (aiohttp's TCPSite uses its own)."""

    __slots__ = ("_factory", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        factory: Callable[[], asyncio.Protocol],
        *,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._factory = factory
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory,
            self._host,
            self._port,
            backlog=ACCEPT_BURST,
            reuse_port=self._reuse_port or None,
        )


def http_site(
    runner: web.BaseRunner, settings: Settings, metrics: Metrics, *, reuse_port: bool = False
) -> HttpSite:
    """The process's site on AUDIT_HTTP_HOST:AUDIT_HTTP_PORT, with the limits of `settings`
    (with `reuse_port`, one of several API workers on that port: runtime/workers.py)."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    connections = Connections(settings.http_max_connections, metrics.http_connections_closed)

    def factory() -> HttpConnection:
        return HttpConnection(
            server,
            loop=loop,
            connections=connections,
            header_timeout_s=settings.http_header_timeout_s,
            keepalive_timeout_s=settings.http_keepalive_timeout_s,
        )

    return HttpSite(runner, settings.http_host, settings.http_port, factory, reuse_port=reuse_port)


def raise_open_files_limit(max_connections: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; return the soft limit now in force.

    Warns when AUDIT_HTTP_MAX_CONNECTIONS would not fit in it beside one accept burst and
    `RESERVED_FDS`.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # an unlimited hard limit is not settable on Linux
            log.warning("could not raise the open files limit", extra={"error": str(exc)})
    if soft != resource.RLIM_INFINITY and max_connections + ACCEPT_BURST + RESERVED_FDS > soft:
        log.warning(
            "AUDIT_HTTP_MAX_CONNECTIONS is above what the open files limit allows",
            extra={"max_connections": max_connections, "open_files_limit": soft},
        )
    return soft
