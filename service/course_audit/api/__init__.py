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
from course_audit.api.render import UTC_NAMES
from course_audit.api.snapshots import SnapshotTexts
from course_audit.api.stream import install_stream
from course_audit.runtime.metrics import Metrics
from course_audit.runtime.web import HEALTH, METRICS, SETTINGS
from course_audit.viewer import install_viewer

ANNOUNCEMENTS = web.AppKey("announcements", Announcements)


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
    # Snapshot changes announced by the store: pages skip the version check while they are
    # applied (docs/design.md#snapshot-caches).
    health = app[HEALTH]
    announcements = Announcements(settings, texts, metrics, lambda: health.migrations_ok)
    app[ANNOUNCEMENTS] = announcements
    app.on_startup.append(announcements.start)
    app.on_shutdown.append(announcements.close)
    app.router.add_get(COURSE_PATH, events_handler(COURSE))
    app.router.add_get(ACCOUNT_PATH, events_handler(ACCOUNT))
    install_stream(app, COURSE_PATH, ACCOUNT_PATH, COURSE, ACCOUNT)
    app[EXPORT_SLOTS] = ExportSlots(export_limit(settings.db_pool_max))
    app.router.add_get(COURSE_EXPORT_PATH, export_handler(COURSE_EXPORT))
    app.router.add_get(ACCOUNT_EXPORT_PATH, export_handler(ACCOUNT_EXPORT))
    app.router.add_get("/openapi.json", openapi)
    install_viewer(app)


__all__ = ["install_api"]
