"""The compound document of SPEC §4.5: events, their links, and the linked snapshots."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo
from typing import Any

from course_audit.model import RELATED_COURSE_TYPES
from course_audit.store.queries import EventRow, Linked

#: Canvas's Course, User and PageView JSON field order; fields a snapshot lacks are left out.
COURSE_FIELDS = (
    "id", "sis_course_id", "uuid", "integration_id", "name", "course_code", "workflow_state",
    "account_id", "root_account_id", "enrollment_term_id", "created_at", "start_at", "end_at",
    "default_view", "is_public", "license", "time_zone",
)  # fmt: skip
USER_FIELDS = (
    "id", "name", "sortable_name", "short_name", "sis_user_id", "integration_id", "login_id",
    "created_at",
)  # fmt: skip
PAGE_VIEW_FIELDS = (
    "id", "url", "context_type", "asset_type", "controller", "action", "interaction_seconds",
    "created_at", "user_request", "render_time", "user_agent", "participated", "http_method",
    "remote_ip",
)  # fmt: skip

#: Time zone names that render as `Z` (the configured zone is UTC itself).
UTC_NAMES = frozenset(
    {"UTC", "Etc/UTC", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu"}
)
STRING_IDS_MEDIA_TYPE = "application/json+canvas-string-ids"
_ID_KEY = re.compile(r"(^|_)id$")
_IDS_KEY = re.compile(r"(^|_)ids$")


def render_time(when: datetime, zone: tzinfo, utc: bool) -> str:
    """ISO 8601 at whole seconds in `zone`; `Z` when the zone is UTC."""
    text = when.astimezone(zone).replace(microsecond=0).isoformat()
    return text[:-6] + "Z" if utc and text.endswith("+00:00") else text


def canvas_object(data: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """A snapshot with Canvas's field order; fields of newer schemas follow, sorted."""
    out = {name: data[name] for name in fields if name in data}
    for name in sorted(data.keys() - out.keys()):
        out[name] = data[name]
    return out


def render_event(event: EventRow, zone: tzinfo, utc: bool) -> dict[str, Any]:
    """One event; a copy/reset event's related course comes first in `links`."""
    links: dict[str, Any] = {}
    if event.event_type in RELATED_COURSE_TYPES:
        links[event.event_type] = event.related_course_id
    links["course"] = event.course_id
    links["page_view"] = event.page_view_id
    links["user"] = event.user_id
    links["sis_batch"] = event.sis_batch_id
    return {
        "id": event.event_id,
        "created_at": render_time(event.created_at, zone, utc),
        "event_type": event.event_type,
        "event_source": event.event_source,
        "event_data": event.event_data,
        "links": links,
    }


def _pick(
    snapshots: dict[Any, dict[str, Any]], ids: Iterable[Any], fields: Sequence[str]
) -> list[dict[str, Any]]:
    return [canvas_object(snapshots[i], fields) for i in ids if i in snapshots]


def render_document(
    events: Sequence[EventRow],
    linked: Linked,
    refs: tuple[Sequence[int], Sequence[int], Sequence[str]],
    base: str,
    zone: tzinfo,
    utc: bool,
    string_ids: bool = False,
) -> dict[str, Any]:
    """The whole response body; `refs` are the ids the events refer to, in order."""
    course_ids, user_ids, page_view_ids = refs
    linked_part: dict[str, Any] = {
        "page_views": _pick(linked.page_views, page_view_ids, PAGE_VIEW_FIELDS),
        "courses": _pick(linked.courses, course_ids, COURSE_FIELDS),
        "users": _pick(linked.users, user_ids, USER_FIELDS),
    }
    if string_ids:
        linked_part = stringify_ids(linked_part)
    return {
        "links": {
            "events.course": f"{base}/api/v1/courses/{{events.course}}",
            "events.user": None,
            "events.sis_batch": None,
        },
        "events": [render_event(e, zone, utc) for e in events],
        "linked": linked_part,
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def stringify_ids(value: Any) -> Any:
    """Canvas's string-ids convention: integers under `id`/`*_id` keys (lists under `*_ids`)
    become strings, at any depth."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if _ID_KEY.search(key) and _is_int(item):
                out[key] = str(item)
            elif _IDS_KEY.search(key) and isinstance(item, list):
                out[key] = [str(v) if _is_int(v) else stringify_ids(v) for v in item]
            else:
                out[key] = stringify_ids(item)
        return out
    if isinstance(value, list):
        return [stringify_ids(v) for v in value]
    return value


def wants_string_ids(accept: str | None) -> bool:
    """True when the Accept header asks for Canvas's string ids."""
    return accept is not None and STRING_IDS_MEDIA_TYPE in accept.lower()
