"""The audit HTTP API: Canvas's two Course Audit log endpoints over the store (docs/api.md)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from course_audit.api.announcements import Announcements
from course_audit.api.auth import token_cache
from course_audit.api.errors import errors_middleware
from course_audit.api.export import (
    ACCOUNT_EXPORT,
    ACCOUNT_EXPORT_PATH,
    COURSE_EXPORT,
    COURSE_EXPORT_PATH,
    EXPORT_SLOTS,
    ExportSlots,
    export_handler,
    export_limit,
)
from course_audit.api.handlers import (
    ACCOUNT,
    ACCOUNT_PATH,
    API_STATE,
    COURSE,
    COURSE_PATH,
    ApiState,
    events_handler,
    openapi,
)
from course_audit.api.listen import Listener
from course_audit.api.render import UTC_NAMES
from course_audit.api.snapshots import SnapshotTexts
from course_audit.api.stream import install_stream
from course_audit.runtime.metrics import Metrics
from course_audit.runtime.web import HEALTH, METRICS, SETTINGS
from course_audit.viewer import install_viewer

LISTENER = web.AppKey("listener", Listener)


def _count_pages(metrics: Metrics) -> Callable[[bool], None]:
    trusted, checked = metrics.snapshot_trusted.inc, metrics.snapshot_checked.inc

    def count(was_trusted: bool) -> None:
        (trusted if was_trusted else checked)()

    return count


def install_api(app: web.Application) -> None:
    """Add the audit endpoints, /openapi.json, the viewer and JSON errors to the app (before it
    starts)."""
    settings = app[SETTINGS]
    # Appended after `observe`, so the request metrics see the statuses of JSON errors.
    app.middlewares.append(errors_middleware)
    metrics = app[METRICS]
    texts = SnapshotTexts(counted=_count_pages(metrics))
    app[API_STATE] = ApiState(
        token_cache(), settings.zone, settings.time_zone in UTC_NAMES, texts=texts
    )
    # One LISTEN connection for the process (docs/design.md#one-listen-connection): snapshot
    # changes from start-up (pages skip the version check while they are applied:
    # docs/design.md#snapshot-caches), the live tail from its first stream.
    health = app[HEALTH]
    listener = Listener(
        settings.api_database_url or settings.database_url, lambda: health.migrations_ok
    )
    app[LISTENER] = listener
    announcements = Announcements(texts, metrics)

    async def start_listening(app: web.Application) -> None:
        await listener.follow(announcements)
        await listener.start()

    app.on_startup.append(start_listening)
    app.on_shutdown.append(listener.close)
    app.router.add_get(COURSE_PATH, events_handler(COURSE))
    app.router.add_get(ACCOUNT_PATH, events_handler(ACCOUNT))
    install_stream(app, listener, COURSE_PATH, ACCOUNT_PATH, COURSE, ACCOUNT)
    app[EXPORT_SLOTS] = ExportSlots(export_limit(settings.db_pool_max))
    app.router.add_get(COURSE_EXPORT_PATH, export_handler(COURSE_EXPORT))
    app.router.add_get(ACCOUNT_EXPORT_PATH, export_handler(ACCOUNT_EXPORT))
    app.router.add_get("/openapi.json", openapi)
    install_viewer(app)


__all__ = ["install_api"]
