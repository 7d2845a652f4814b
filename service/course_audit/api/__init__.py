"""The audit HTTP API: Canvas's two Course Audit log endpoints over the store (docs/api.md)."""

from __future__ import annotations

from aiohttp import web

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
from course_audit.api.stream import install_stream
from course_audit.runtime.web import SETTINGS
from course_audit.viewer import install_viewer


def install_api(app: web.Application) -> None:
    """Add the audit endpoints, /openapi.json, the viewer and JSON errors to the app (before it
    starts)."""
    settings = app[SETTINGS]
    # Appended after `observe`, so the request metrics see the statuses of JSON errors.
    app.middlewares.append(errors_middleware)
    app[API_STATE] = ApiState(token_cache(), settings.zone, settings.time_zone in UTC_NAMES)
    app.router.add_get(COURSE_PATH, events_handler(COURSE))
    app.router.add_get(ACCOUNT_PATH, events_handler(ACCOUNT))
    install_stream(app, COURSE_PATH, ACCOUNT_PATH, COURSE, ACCOUNT)
    app[EXPORT_SLOTS] = ExportSlots(export_limit(settings.db_pool_max))
    app.router.add_get(COURSE_EXPORT_PATH, export_handler(COURSE_EXPORT))
    app.router.add_get(ACCOUNT_EXPORT_PATH, export_handler(ACCOUNT_EXPORT))
    app.router.add_get("/openapi.json", openapi)
    install_viewer(app)


__all__ = ["install_api"]
