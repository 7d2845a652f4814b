"""Errors as values at the HTTP edge: every failure becomes a JSON body with a status."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from course_audit.runtime.web import Handler

log = logging.getLogger(__name__)

REALM = 'Bearer realm="course-audit"'
NOT_FOUND = "The specified resource does not exist."
#: Seconds a client should wait before retrying while the database is unreachable.
RETRY_AFTER_S = 5


class ApiError(Exception):
    """An error response: status, JSON body and extra headers."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = headers or {}


def message_body(message: str) -> dict[str, Any]:
    """Canvas's error body: `{"errors":[{"message": ...}]}`."""
    return {"errors": [{"message": message}]}


def bad_parameter(message: str) -> ApiError:
    """400 for a malformed parameter; the message names it."""
    return ApiError(400, message_body(message))


def not_found() -> ApiError:
    """404, the same for an unknown and another tenant's resource."""
    return ApiError(404, message_body(NOT_FOUND))


def unauthenticated() -> ApiError:
    """401 for a request without a token."""
    return ApiError(
        401,
        {"status": "unauthenticated", "errors": [{"message": "user authorization required"}]},
        {"WWW-Authenticate": REALM},
    )


def invalid_token(revoked: bool) -> ApiError:
    """401 for an unknown or revoked token (RFC 6750 names the error)."""
    message = "Revoked access token." if revoked else "Invalid access token."
    return ApiError(
        401, message_body(message), {"WWW-Authenticate": f'{REALM}, error="invalid_token"'}
    )


def undecodable_header() -> ApiError:
    """401 for a request with a header that is not valid UTF-8: its credentials cannot be read."""
    return ApiError(
        401,
        message_body("A request header is not valid UTF-8."),
        {"WWW-Authenticate": f'{REALM}, error="invalid_request"'},
    )


def unavailable(message: str = "The database is unavailable; try again shortly.") -> ApiError:
    """503 while the store cannot answer."""
    return ApiError(503, message_body(message), {"Retry-After": str(RETRY_AFTER_S)})


def error_response(status: int, body: dict[str, Any], headers: dict[str, str]) -> web.Response:
    """An error as a JSON response that no cache keeps."""
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers={**headers, "Cache-Control": "no-store"},
    )


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        body = message_body(NOT_FOUND)
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = " or ".join(sorted(exc.allowed_methods))
        body = message_body(f"The method {exc.method} is not allowed here; use {allowed}.")
    else:
        body = message_body(exc.reason)
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return error_response(exc.status, body, headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error (ours, aiohttp's, unexpected) into a JSON body; never a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.body, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc)
    except Exception:
        log.exception("unexpected error", extra={"path": request.path})
        return error_response(500, message_body("An internal error occurred."), {})
