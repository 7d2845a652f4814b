"""The HTTP application: health and metrics for every role, plus the audit API when serving."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from course_audit.config import Settings
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics
from course_audit.runtime.replica import Reads

log = logging.getLogger(__name__)

HEALTH = web.AppKey("health", Health)
METRICS = web.AppKey("metrics", Metrics)
SETTINGS = web.AppKey("settings", Settings)


@dataclass
class Runtime:
    """Mutable per-process state shared with handlers (the app itself freezes at start)."""

    #: The process's asyncpg pool on the primary, set by the runner once the database has
    #: answered.
    pool: asyncpg.Pool | None = None
    #: Where the API's reads go (the replica's pool or this one); None: always `pool`.
    reads: Reads | None = None

    def read_pool(self) -> asyncpg.Pool | None:
        """The pool for one read: the replica's while it is usable, else the primary's."""
        return self.pool if self.reads is None else self.reads.pool()


RUNTIME = web.AppKey("runtime", Runtime)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


async def live(request: web.Request) -> web.Response:
    return json_response({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    return json_response(health.as_dict(), status=200 if health.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@functools.lru_cache(maxsize=1024)
def _request_metrics(metrics: Metrics, route: str, status: int) -> tuple[Counter, Histogram]:
    # `labels()` takes a lock and builds the label tuple on every call; the children it
    # returns live as long as their metric, and routes and statuses are few.
    return metrics.http_requests.labels(route, str(status)), metrics.http_seconds.labels(route)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by route template and status; refuse a request target
    that is not UTF-8 (`_not_http`)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request) if utf8(request.raw_path) else _not_http()
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        count, seconds = _request_metrics(request.app[METRICS], route, status)
        count.inc()
        seconds.observe(time.perf_counter() - started)


def utf8(text: str) -> bool:
    """Whether `text` came from valid UTF-8: aiohttp decodes what it reads as UTF-8 with
    `surrogateescape`, so any other byte shows as a lone surrogate."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_http() -> web.Response:
    """A request target (path and query) that is not UTF-8 is not valid HTTP: 400. aiohttp's
    C parser refuses such bytes itself; its pure-Python parser lets them through."""
    return json_response(
        {"errors": [{"message": "The request is not valid HTTP."}]},
        status=400,
        headers={"Cache-Control": "no-store"},
    )


def build_app(settings: Settings, health: Health, metrics_: Metrics) -> web.Application:
    """The base application: /health/live, /health/ready and /metrics."""
    app = web.Application(middlewares=[observe])
    app[SETTINGS] = settings
    app[RUNTIME] = Runtime()
    app[HEALTH] = health
    app[METRICS] = metrics_
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app
