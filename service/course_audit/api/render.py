"""The compound document (docs/api.md#response-document): events, links, linked snapshots."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo
from typing import Any

import orjson

from course_audit.model import RELATED_COURSE_TYPES, Kind
from course_audit.store.queries import EventRow, Linked, Refs

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
#: Rendered linked objects kept per process: about the snapshots a few hundred busy pages
#: refer to, at well under 1 KB each.
SNAPSHOT_CACHE_SIZE = 20_000
#: Whole seconds, `Z` for UTC: what `render_time` gives for a UTC datetime in the UTC zone,
#: done by orjson's own datetime serialiser without a Python call per event.
_UTC_OPTIONS = orjson.OPT_OMIT_MICROSECONDS | orjson.OPT_UTC_Z
#: The `event_data` of most event types (nothing changed to list): no parse needed.
_EMPTY = orjson.Fragment(b"{}")


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


def render_events(events: Iterable[EventRow], zone: tzinfo, utc: bool) -> list[dict[str, Any]]:
    """The events of a page; a copy/reset event's related course comes first in `links`.

    In the UTC zone `created_at` stays a datetime (asyncpg gives timestamptz in UTC) for
    `render_document` to write with orjson; other zones get `render_time`'s text, since orjson
    cannot write every historical offset (LMT offsets have seconds) the way `isoformat` does.
    One loop that unpacks each row at once: this runs for up to 100 events per request.
    """
    out: list[dict[str, Any]] = []
    append = out.append
    for (event_id, created_at, _, event_type, event_source, course_id, user_id, page_view_id,
         sis_batch_id, related_course_id, event_data) in events:  # fmt: skip
        links: dict[str, Any]
        if event_type in RELATED_COURSE_TYPES:
            links = {
                event_type: related_course_id,
                "course": course_id,
                "page_view": page_view_id,
                "user": user_id,
                "sis_batch": sis_batch_id,
            }
        else:
            links = {
                "course": course_id,
                "page_view": page_view_id,
                "user": user_id,
                "sis_batch": sis_batch_id,
            }
        append(
            {
                "id": event_id,
                "created_at": created_at if utc else render_time(created_at, zone, utc),
                "event_type": event_type,
                "event_source": event_source,
                "event_data": _EMPTY if event_data == "{}" else orjson.loads(event_data),
                "links": links,
            }
        )
    return out


def render_snapshot(text: str, fields: Sequence[str], string_ids: bool) -> bytes:
    """One linked object as compact JSON: the stored snapshot in Canvas's field order."""
    value: Any = canvas_object(orjson.loads(text), fields)
    if string_ids:
        value = stringify_ids(value)
    return orjson.dumps(value)


#: Canvas's field order of each kind of linked object.
FIELDS: dict[Kind, tuple[str, ...]] = {
    Kind.COURSE: COURSE_FIELDS,
    Kind.USER: USER_FIELDS,
    Kind.PAGE_VIEW: PAGE_VIEW_FIELDS,
}


class SnapshotCache:
    """Rendered linked objects by kind, id style and stored text.

    The same courses and users appear on page after page; parsing and reordering each one
    again was a large share of a request. An object is found by the very text it was rendered
    from, so a newer snapshot (another text) is rendered afresh and nothing shown is stale.
    The texts come from the snapshot cache (api/snapshots.py), so a lookup finds the same
    string object: its hash is kept by the string and the match is by identity. At most `size`
    objects in all: when full, the one put longest ago of the kind and id style holding the
    most goes (a text no longer in use is never looked up again).
    """

    def __init__(self, size: int = SNAPSHOT_CACHE_SIZE) -> None:
        self.size = size
        self._rendered: dict[tuple[Kind, bool], dict[str, orjson.Fragment]] = {
            (kind, string_ids): {} for kind in Kind for string_ids in (False, True)
        }

    def __len__(self) -> int:
        return sum(map(len, self._rendered.values()))

    def pick(
        self, kind: Kind, ids: Sequence[Any], snapshots: dict[Any, str], string_ids: bool
    ) -> list[orjson.Fragment]:
        """The rendered objects of `ids` that have a snapshot (`snapshots`: id -> text)."""
        rendered = self._rendered[kind, string_ids]
        known = rendered.get
        out = []
        for i in ids:
            text = snapshots.get(i)
            if text is None:
                continue
            fragment = known(text)
            if fragment is None:
                fragment = orjson.Fragment(render_snapshot(text, FIELDS[kind], string_ids))
                rendered[text] = fragment
                if len(self) > self.size:
                    fullest = max(self._rendered.values(), key=len)
                    del fullest[next(iter(fullest))]
            out.append(fragment)
        return out


def render_document(
    events: Sequence[EventRow],
    linked: Linked,
    refs: Refs,
    base: str,
    zone: tzinfo,
    utc: bool,
    string_ids: bool = False,
    cache: SnapshotCache | None = None,
) -> bytes:
    """The whole response body; `refs` are the ids the events refer to, in order."""
    snapshots = SnapshotCache() if cache is None else cache
    document = {
        "links": {
            "events.course": f"{base}/api/v1/courses/{{events.course}}",
            "events.user": None,
            "events.sis_batch": None,
        },
        "events": render_events(events, zone, utc),
        "linked": {
            "page_views": snapshots.pick(
                Kind.PAGE_VIEW, refs.page_views, linked.page_views, string_ids
            ),
            "courses": snapshots.pick(Kind.COURSE, refs.courses, linked.courses, string_ids),
            "users": snapshots.pick(Kind.USER, refs.users, linked.users, string_ids),
        },
    }
    return orjson.dumps(document, option=_UTC_OPTIONS if utc else 0)


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
