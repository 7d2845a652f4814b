"""The OpenAPI 3.1 description of the HTTP API (served at GET /openapi.json)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from course_audit import __version__
from course_audit.api.errors import NOT_FOUND, RETRY_AFTER_S
from course_audit.model import EVENT_RECORDS

_REF = "#/components/schemas/"
_RESPONSES = "#/components/responses/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


_ID = {
    "description": "An integer id; a decimal string with "
    "`Accept: application/json+canvas-string-ids`.",
    "oneOf": [
        {"type": "integer", "format": "int64"},
        {"type": "string", "pattern": "^[0-9]+$"},
    ],
}
_NULLABLE_ID = {"oneOf": [*_ID["oneOf"], {"type": "null"}]}

_TIME_PARAMETER_TEXT = (
    "An ISO 8601 date (`2026-01-31`, midnight) or date-time (`2026-01-31T13:45:00Z`, "
    "`2026-01-31T13:45:00-07:00`); without an offset it is read in the service's time zone "
    "(AUDIT_TIME_ZONE, default UTC). Compared with `created_at` at whole seconds, as shown. "
    "Unparseable: 400."
)

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["errors"],
        "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "enum": ["unauthenticated"]},
            "errors": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["message"],
                    "additionalProperties": False,
                    "properties": {"message": {"type": "string"}},
                },
            },
        },
    },
    "CourseEventLinks": {
        "type": "object",
        "description": "Ids the event refers to. For copied_from, copied_to, reset_from and "
        "reset_to the related course's id comes first, under the event type's name.",
        "required": ["course", "page_view", "user", "sis_batch"],
        "additionalProperties": False,
        "properties": {
            "copied_from": {"type": "integer", "format": "int64"},
            "copied_to": {"type": "integer", "format": "int64"},
            "reset_from": {"type": "integer", "format": "int64"},
            "reset_to": {"type": "integer", "format": "int64"},
            "course": {"type": "integer", "format": "int64"},
            "page_view": _nullable("string"),
            "user": _nullable("integer", format="int64"),
            "sis_batch": _nullable("integer", format="int64"),
        },
    },
    "CourseEvent": {
        "type": "object",
        "required": ["id", "created_at", "event_type", "event_source", "event_data", "links"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "created_at": {
                "type": "string",
                "format": "date-time",
                "description": "Whole seconds, in the service's time zone (`Z` for UTC).",
            },
            "event_type": {"type": "string", "enum": list(EVENT_RECORDS)},
            "event_source": {
                "type": "string",
                "description": "manual, api, sis, api_in_app or another source.",
            },
            "event_data": {
                "type": "object",
                "description": "created/updated: {attribute: [old, new]} (created may add "
                "created_source); {} for every other type.",
                "additionalProperties": {
                    "oneOf": [
                        {"type": "array", "minItems": 2, "maxItems": 2},
                        {"type": ["string", "null"]},
                    ]
                },
            },
            "links": _ref("CourseEventLinks"),
        },
    },
    "Course": {
        "type": "object",
        "description": "Latest snapshot, with Canvas's Course field names.",
        "required": ["id"],
        "properties": {
            "id": _ID,
            "sis_course_id": _nullable("string"),
            "uuid": _nullable("string"),
            "integration_id": _nullable("string"),
            "name": _nullable("string"),
            "course_code": _nullable("string"),
            "workflow_state": _nullable("string"),
            "account_id": _ID,
            "root_account_id": _ID,
            "enrollment_term_id": _NULLABLE_ID,
            "created_at": _nullable("string"),
            "start_at": _nullable("string"),
            "end_at": _nullable("string"),
            "default_view": _nullable("string"),
            "is_public": _nullable("boolean"),
            "license": _nullable("string"),
            "time_zone": _nullable("string"),
        },
    },
    "User": {
        "type": "object",
        "description": "Latest snapshot, with Canvas's User field names.",
        "required": ["id"],
        "properties": {
            "id": _ID,
            "name": _nullable("string"),
            "sortable_name": _nullable("string"),
            "short_name": _nullable("string"),
            "sis_user_id": _nullable("string"),
            "integration_id": _nullable("string"),
            "login_id": _nullable("string"),
            "created_at": _nullable("string"),
        },
    },
    "PageView": {
        "type": "object",
        "description": "Latest snapshot, with Canvas's PageView field names.",
        "required": ["id"],
        "properties": {
            "id": {"type": "string"},
            "url": _nullable("string"),
            "context_type": _nullable("string"),
            "asset_type": _nullable("string"),
            "controller": _nullable("string"),
            "action": _nullable("string"),
            "interaction_seconds": _nullable("number"),
            "created_at": _nullable("string"),
            "user_request": _nullable("boolean"),
            "render_time": _nullable("number"),
            "user_agent": _nullable("string"),
            "participated": _nullable("boolean"),
            "http_method": _nullable("string"),
            "remote_ip": _nullable("string"),
        },
    },
    "CourseAuditDocument": {
        "type": "object",
        "required": ["links", "events", "linked"],
        "additionalProperties": False,
        "properties": {
            "links": {
                "type": "object",
                "required": ["events.course", "events.user", "events.sis_batch"],
                "additionalProperties": False,
                "properties": {
                    "events.course": {
                        "type": "string",
                        "description": "URL template: <base>/api/v1/courses/{events.course}",
                    },
                    "events.user": {"type": "null"},
                    "events.sis_batch": {"type": "null"},
                },
            },
            "events": {"type": "array", "items": _ref("CourseEvent")},
            "linked": {
                "type": "object",
                "description": "The objects the events refer to, as the token's root "
                "accounts' latest snapshots; a copy/reset course of another root account is "
                "left out (linked by id only).",
                "required": ["page_views", "courses", "users"],
                "additionalProperties": False,
                "properties": {
                    "page_views": {"type": "array", "items": _ref("PageView")},
                    "courses": {"type": "array", "items": _ref("Course")},
                    "users": {"type": "array", "items": _ref("User")},
                },
            },
        },
    },
    "Liveness": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["live"]}},
    },
    "Readiness": {
        "type": "object",
        "required": [
            "ready",
            "database",
            "migrations",
            "subscribed",
            "consumer_error",
            "registry",
        ],
        "properties": {
            "ready": {"type": "boolean"},
            "database": {"type": "boolean"},
            "migrations": {"type": "boolean"},
            "subscribed": {
                "type": ["boolean", "null"],
                "description": "null when the process does not consume",
            },
            "consumer_error": {
                "type": ["string", "null"],
                "description": "why the last consumer failed, until a new one has joined",
            },
            "registry": {
                "type": ["boolean", "null"],
                "description": "null without a schema registry; false while it is unreachable",
            },
            "replica": {
                "type": "object",
                "description": "only with a read replica (AUDIT_DATABASE_READ_URL)",
                "required": ["ok", "lag_s", "error"],
                "properties": {
                    "ok": {
                        "type": "boolean",
                        "description": "it answers and is within AUDIT_DATABASE_READ_MAX_LAG_S",
                    },
                    "lag_s": {"type": ["number", "null"]},
                    "error": {"type": ["string", "null"]},
                },
            },
        },
    },
}


def _error(description: str, example: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
        "content": {
            "application/json": {
                "schema": _ref("Error"),
                "example": {"errors": [{"message": example}]},
            }
        },
    }
    response["headers"].update(headers or {})
    return response


_WWW_AUTHENTICATE = {
    "description": 'Bearer realm="course-audit" (with error="invalid_token" for a bad token, '
    'error="invalid_request" for a header that is not UTF-8)',
    "required": True,
    "schema": {"type": "string"},
}

_RESPONSE_OBJECTS: dict[str, Any] = {
    "BadParameter": _error(
        "A malformed parameter; the message names it.",
        "per_page: 'ten' is not a whole number (use 1 to 100)",
    ),
    "Unauthorized": {
        "description": "No token (`status: unauthenticated`), an unknown token or one not "
        "shaped like ours (`Invalid access token.`), a revoked one (`Revoked access token.`), "
        "or a header that is not UTF-8.",
        "headers": {
            "WWW-Authenticate": _WWW_AUTHENTICATE,
            "Cache-Control": {"$ref": "#/components/headers/NoStore"},
        },
        "content": {
            "application/json": {
                "schema": _ref("Error"),
                "examples": {
                    "missing": {
                        "value": {
                            "status": "unauthenticated",
                            "errors": [{"message": "user authorization required"}],
                        }
                    },
                    "unknown": {"value": {"errors": [{"message": "Invalid access token."}]}},
                    "revoked": {"value": {"errors": [{"message": "Revoked access token."}]}},
                    "unreadable_header": {
                        "value": {"errors": [{"message": "A request header is not valid UTF-8."}]}
                    },
                },
            }
        },
    },
    "NotFound": _error(
        "Unknown, or outside the token's root accounts (indistinguishable); or no such route.",
        NOT_FOUND,
    ),
    "MethodNotAllowed": _error(
        "A method other than GET or HEAD.",
        "The method POST is not allowed here; use GET or HEAD.",
        {"Allow": {"schema": {"type": "string"}}},
    ),
    "Unavailable": _error(
        "The database is unreachable (the service recovers by itself when it returns).",
        "The database is unavailable; try again shortly.",
        {
            "Retry-After": {
                "description": f"Seconds to wait ({RETRY_AFTER_S}).",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        },
    ),
    "InternalError": _error(
        "An unexpected error (never a stack trace).", "An internal error occurred."
    ),
    "AuditDocument": {
        "description": "A page of events, newest first, with the courses, users and page "
        "views they refer to.",
        "headers": {
            "Link": {
                "description": '`<URL>; rel="current"`, `<URL>; rel="next"` (only when more '
                'events exist) and `<URL>; rel="first"`, joined by `,`. Absolute URLs with '
                "the numeric id, keeping start_time/end_time and the filters (event_type sorted, "
                "then user_id, event_source), ending in `page=...&per_page=N`.",
                "required": True,
                "schema": {"type": "string"},
            },
        },
        "content": {"application/json": {"schema": _ref("CourseAuditDocument")}},
    },
}

_RESPONSE_OBJECTS["EventStream"] = {
    "description": "A live tail (text/event-stream) that stays open: first the stored events "
    "after the resume id (if one was given), then each new event as it is stored. Each event "
    "is one message: `id: <event id>`, `event: event`, `data: <the event as one JSON object, "
    "shaped like an item of events[]>`. Lines starting with `:` are heartbeats. A message "
    '`event: error` with an error body (e.g. `{"errors":[{"message":"Revoked access token."}]}`)'
    " ends the stream.",
    "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
    "content": {
        "text/event-stream": {
            "schema": {"type": "string"},
            "example": "retry: 2000\n: live tail\n\nid: 5b1b5e3e-8f0a-4c51-9d55-2f6f4fd5c2a1\n"
            'event: event\ndata: {"id":"5b1b5e3e-8f0a-4c51-9d55-2f6f4fd5c2a1",...}\n\n',
        }
    },
}
_RESPONSE_OBJECTS["TooManyStreams"] = _error(
    "The database is unreachable, or this process already holds "
    "AUDIT_STREAM_MAX_SUBSCRIBERS live streams.",
    "This server holds as many live streams as it may; try again shortly.",
    {
        "Retry-After": {
            "description": f"Seconds to wait ({RETRY_AFTER_S}).",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
)

_STREAM_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "last_event_id",
        "in": "query",
        "description": "Resume: first send this stream's stored events after this event "
        "(created_at, then arrival order) that the filters keep, then the live ones. It may "
        "be any event of this course or account, kept by the filters or not. The "
        "Last-Event-ID header, when sent, takes precedence. Not an event of this course or "
        "account: 400.",
        "schema": {"type": "string", "format": "uuid"},
    },
    {
        "name": "Last-Event-ID",
        "in": "header",
        "description": "What a reconnecting EventSource sends: the id of the last event it "
        "received (as last_event_id).",
        "schema": {"type": "string", "format": "uuid"},
    },
    # The endpoints' filters, parsed alike: only the events they keep are sent (live or
    # resumed).
    {"$ref": "#/components/parameters/event_type"},
    {"$ref": "#/components/parameters/user_id"},
    {"$ref": "#/components/parameters/event_source"},
    {"$ref": "#/components/parameters/access_token"},
]


def _stream_operation(
    summary: str, description: str, path_parameter: dict[str, Any], op_id: str
) -> dict[str, Any]:
    return {
        "operationId": op_id,
        "summary": summary,
        "description": description,
        "tags": ["Live tail"],
        "security": [{"bearer": []}, {"access_token": []}],
        "parameters": [path_parameter, *_STREAM_PARAMETERS],
        "responses": {
            "200": {"$ref": _RESPONSES + "EventStream"},
            "400": {"$ref": _RESPONSES + "BadParameter"},
            "401": {"$ref": _RESPONSES + "Unauthorized"},
            "404": {"$ref": _RESPONSES + "NotFound"},
            "405": {"$ref": _RESPONSES + "MethodNotAllowed"},
            "500": {"$ref": _RESPONSES + "InternalError"},
            "503": {"$ref": _RESPONSES + "TooManyStreams"},
        },
    }


_RESPONSE_OBJECTS["Export"] = {
    "description": "Every event of the window, oldest first (created_at, then arrival, "
    "ascending), streamed: one JSON line per event (`format=ndjson`, the default), each an "
    "item of the endpoints' `events` array (no linked objects), or a CSV header line and one "
    "row per event (`format=csv`; RFC 4180, CRLF; columns id, created_at, event_type, "
    "event_source, course_id, user_id, page_view_id, sis_batch_id, related_course_id, "
    "event_data as compact JSON; a text cell starting with = + - @ tab or CR begins with "
    "`'`). An export cut short (client too slow, store failure) ends without the chunked "
    "body's last chunk; resume it with `after_id` set to the last complete line's id.",
    "headers": {
        "Content-Disposition": {
            "description": 'attachment; filename="<course|account>-<id>_<start>_<end>.<format>"'
            " (start/end in UTC as 20260131T134500Z, or beginning/latest).",
            "required": True,
            "schema": {"type": "string", "pattern": '^attachment; filename="[A-Za-z0-9_.-]+"$'},
        },
        "Cache-Control": {"$ref": "#/components/headers/NoStore"},
    },
    "content": {
        "application/x-ndjson": {
            "schema": {"type": "string", "description": "One CourseEvent JSON object a line."}
        },
        "text/csv": {"schema": {"type": "string"}},
    },
}

_QUERY_PARAMETERS: dict[str, Any] = {
    "start_time": {
        "name": "start_time",
        "in": "query",
        "description": "Only events with created_at >= start_time. " + _TIME_PARAMETER_TEXT,
        "schema": {"type": "string"},
        "example": "2026-01-31T00:00:00Z",
    },
    "end_time": {
        "name": "end_time",
        "in": "query",
        "description": "Only events with created_at <= end_time (start_time > end_time: no "
        "events). " + _TIME_PARAMETER_TEXT,
        "schema": {"type": "string"},
        "example": "2026-02-28",
    },
    "event_type": {
        "name": "event_type",
        "in": "query",
        "description": "Only events of these types: repeat the parameter for several "
        "(`event_type=published&event_type=concluded`; Rails' `event_type[]=` works too), at "
        "most one of each type. A value that is not an event type: 400.",
        "style": "form",
        "explode": True,
        "schema": {
            "type": "array",
            "items": {"type": "string", "enum": sorted(EVENT_RECORDS)},
            "maxItems": len(EVENT_RECORDS),
        },
        "example": ["published", "concluded"],
    },
    "user_id": {
        "name": "user_id",
        "in": "query",
        "description": "Only events made by this user (the numeric Canvas user id). Not "
        "digits, 0 or above 2^63-1: 400.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
        "example": 77,
    },
    "event_source": {
        "name": "event_source",
        "in": "query",
        "description": "Only events with exactly this source, as the producer sent it: "
        "Canvas sends `api`, `api_in_app`, `manual` and `sis`; other sources are stored as "
        "they came, so any text is accepted. Empty, longer than 255 characters or holding "
        "control characters: 400.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        "examples": {"sis": {"value": "sis"}, "manual": {"value": "manual"}},
    },
    "per_page": {
        "name": "per_page",
        "in": "query",
        "description": "Page size: default 10; above 100 means 100; below 1 or not a whole "
        "number: 400.",
        "schema": {"type": "integer", "minimum": 1, "default": 10},
    },
    "page": {
        "name": "page",
        "in": "query",
        "description": "`first` (default), or the opaque `bookmark:...` value of a Link URL.",
        "schema": {"type": "string", "pattern": "^(first|bookmark:[A-Za-z0-9_-]+)$"},
    },
    "format": {
        "name": "format",
        "in": "query",
        "description": "Export format: `ndjson` (default) or `csv`; anything else: 400.",
        "schema": {"type": "string", "enum": ["ndjson", "csv"], "default": "ndjson"},
    },
    "after_id": {
        "name": "after_id",
        "in": "query",
        "description": "Resume an export after this event (the id of its last complete "
        "line): the events strictly after it in the export's order. Not an event id: 400; "
        "not an event of this course or account within the token's root accounts: 400.",
        "schema": {
            "type": "string",
            "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
            "[0-9a-fA-F]{12}$",
        },
    },
    "access_token": {
        "name": "access_token",
        "in": "query",
        "description": "The token, when it cannot go in the Authorization header; never "
        "echoed in Link URLs.",
        "schema": {"type": "string"},
    },
}


_FILTERS = ("event_type", "user_id", "event_source")
_PAGE_PARAMETERS = ("start_time", "end_time", *_FILTERS, "per_page", "page", "access_token")
_EXPORT_PARAMETERS = ("start_time", "end_time", *_FILTERS, "format", "after_id", "access_token")


def _operation(
    summary: str,
    description: str,
    path_parameter: dict[str, Any],
    op_id: str,
    parameters: tuple[str, ...] = _PAGE_PARAMETERS,
    success: str = "AuditDocument",
) -> dict[str, Any]:
    return {
        "operationId": op_id,
        "summary": summary,
        "description": description,
        "tags": ["Course Audit log"],
        "security": [{"bearer": []}, {"access_token": []}],
        "parameters": [
            path_parameter,
            *({"$ref": f"#/components/parameters/{name}"} for name in parameters),
        ],
        "responses": {
            "200": {"$ref": _RESPONSES + success},
            "400": {"$ref": _RESPONSES + "BadParameter"},
            "401": {"$ref": _RESPONSES + "Unauthorized"},
            "404": {"$ref": _RESPONSES + "NotFound"},
            "405": {"$ref": _RESPONSES + "MethodNotAllowed"},
            "500": {"$ref": _RESPONSES + "InternalError"},
            "503": {"$ref": _RESPONSES + "Unavailable"},
        },
    }


def _plain(summary: str, responses: dict[str, Any], op_id: str) -> dict[str, Any]:
    return {
        "operationId": op_id,
        "summary": summary,
        "tags": ["Operations"],
        "security": [],
        "responses": {**responses, "405": {"$ref": _RESPONSES + "MethodNotAllowed"}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_COURSE_ID = {
    "name": "course_id",
    "in": "path",
    "required": True,
    "description": "A numeric course id, or `sis_course_id:<value>`.",
    "schema": {"type": "string", "pattern": "^([0-9]+|sis_course_id:.+)$"},
}
_ACCOUNT_ID = {
    "name": "account_id",
    "in": "path",
    "required": True,
    "description": "A numeric account id.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_EXPORT_TEXT = (
    " Streamed in constant memory from one consistent snapshot of the store; a client may "
    "read slowly, but one that takes less than 64 KiB in AUDIT_EXPORT_STALL_TIMEOUT_S is cut "
    "off. Each server runs at most half its database pool's size of exports at once; "
    "beyond that: 503 with Retry-After."
)


@lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    course_export = _operation(
        "Export a course's change events",
        "Every event of one course in the window, oldest first, as NDJSON or CSV." + _EXPORT_TEXT,
        _COURSE_ID,
        "exportCourseEventsForCourse",
        _EXPORT_PARAMETERS,
        "Export",
    )
    account_export = _operation(
        "Export an account's course change events",
        "Every event of the courses whose direct account was this account when the event "
        "happened, in the window, oldest first, as NDJSON or CSV." + _EXPORT_TEXT,
        _ACCOUNT_ID,
        "exportCourseEventsForAccount",
        _EXPORT_PARAMETERS,
        "Export",
    )
    course = _operation(
        "List course change events for a course",
        "Events of one course, newest first (created_at, then arrival, descending), as a "
        "compound document. Keyset pagination through the Link header.",
        {
            "name": "course_id",
            "in": "path",
            "required": True,
            "description": "A numeric course id, or `sis_course_id:<value>`.",
            "schema": {"type": "string", "pattern": "^([0-9]+|sis_course_id:.+)$"},
        },
        "listCourseEventsForCourse",
    )
    account = _operation(
        "List course change events for an account",
        "Events of courses whose direct account was this account when the event happened "
        "(sub-accounts are not included).",
        {
            "name": "account_id",
            "in": "path",
            "required": True,
            "description": "A numeric account id.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
        "listCourseEventsForAccount",
    )
    course_id = course["parameters"][0]
    account_id = account["parameters"][0]
    course_stream = _stream_operation(
        "Live tail of a course's events",
        "Server-Sent Events: each event of the course as it is stored (oldest first within "
        "a stored batch), or only those event_type, user_id and event_source keep. Resume with "
        "Last-Event-ID or last_event_id.",
        course_id,
        "streamCourseEventsForCourse",
    )
    account_stream = _stream_operation(
        "Live tail of an account's events",
        "Server-Sent Events: each event of the courses whose direct account is this one, as "
        "it is stored, or only those event_type, user_id and event_source keep. Resume with "
        "Last-Event-ID or last_event_id.",
        account_id,
        "streamCourseEventsForAccount",
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "course-audit",
            "version": __version__,
            "description": "Canvas LMS's Course Audit log API served from a Kafka-fed store. "
            'Errors are JSON: `{"errors":[{"message":...}]}`, with '
            "`Cache-Control: no-store`.\n\n"
            "Tenancy: a token reads what was stored under its root accounts only. Each event "
            "is stored under the root account its course carried when it was produced, so a "
            "course id sent under two root accounts shows each its own events; linked "
            "courses, users and page views are the token's root accounts' own snapshots (a "
            "user's login_id and sis_user_id as that root account sent them); a copy/reset "
            "course of another root account is linked by id only; and another tenant's "
            "course or account is a 404 exactly like an unknown id.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": "Course Audit log"}, {"name": "Live tail"}, {"name": "Operations"}],
        "paths": {
            "/api/v1/audit/course/courses/{course_id}": {"get": course},
            "/api/v1/audit/course/accounts/{account_id}": {"get": account},
            "/api/v1/audit/course/courses/{course_id}/stream": {"get": course_stream},
            "/api/v1/audit/course/accounts/{account_id}/stream": {"get": account_stream},
            "/api/v1/audit/course/courses/{course_id}/export": {"get": course_export},
            "/api/v1/audit/course/accounts/{account_id}/export": {"get": account_export},
            "/openapi.json": {
                "get": _plain(
                    "This document",
                    {"200": _json("The OpenAPI 3.1 document.", {"type": "object"})},
                    "getOpenApi",
                )
            },
            "/health/live": {
                "get": _plain(
                    "Liveness: the process answers",
                    {"200": _json("Alive.", _ref("Liveness"))},
                    "getLiveness",
                )
            },
            "/health/ready": {
                "get": _plain(
                    "Readiness: database reachable, migrations applied, subscribed and registry "
                    "reachable (consumer)",
                    {
                        "200": _json("Ready.", _ref("Readiness")),
                        "503": _json("Not ready.", _ref("Readiness")),
                    },
                    "getReadiness",
                )
            },
            "/metrics": {
                "get": _plain(
                    "Prometheus metrics",
                    {
                        "200": {
                            "description": "Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                    "getMetrics",
                )
            },
        },
        "components": {
            "schemas": _SCHEMAS,
            "responses": _RESPONSE_OBJECTS,
            "parameters": _QUERY_PARAMETERS,
            "headers": {
                "NoStore": {
                    "description": "no-store",
                    "schema": {"type": "string", "const": "no-store"},
                }
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `course-audit token create`; it grants its "
                    "root accounts.",
                },
                "access_token": {"type": "apiKey", "in": "query", "name": "access_token"},
            },
        },
    }


def openapi_document(server_url: str = "/") -> dict[str, Any]:
    """The document, with `server_url` as its server (the base of the API's own links)."""
    # A shallow copy: the shared template itself is never modified.
    return {**_template(), "servers": [{"url": server_url}]}
