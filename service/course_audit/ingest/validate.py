"""A decoded datum -> a validated, normalised Event or a Rejection (docs/messages.md#validation)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from course_audit.model import (
    RECORD_EVENT_TYPES,
    RELATED_COURSE_TYPES,
    Decoded,
    ErrorCode,
    Event,
    Rejection,
    Source,
)

#: Longest string kept in a change pair; longer ones are cut to this length, "..." included.
MAX_CHANGE_LENGTH = 1000
_OMISSION = "..."
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_CREATED_AT = datetime(2000, 1, 1, tzinfo=UTC)
_MIN_CREATED_AT_MS = (_MIN_CREATED_AT - _EPOCH) // timedelta(milliseconds=1)
_MAX_AHEAD = timedelta(days=1)
_MS = timedelta(milliseconds=1)
#: A UUID in its canonical text form (what the Avro uuid logical type carries).
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NIL_UUID = uuid.UUID(int=0)
_CHANGE_TYPES = frozenset({"created", "updated"})
_COURSE_IDS = ("id", "account_id", "root_account_id")
#: The most characters a text field may hold (docs/messages.md#field-sizes): Canvas keeps
#: these values in varchar(255) columns, and 255 characters (at most 1,020 bytes) stay far
#: below PostgreSQL's limit on an index row (about 2,700 bytes for a btree).
TEXT_LIMIT = 255
#: Fields Canvas keeps as unbounded text, bounded here by what a web server accepts in a
#: request line or header (8 KB): a longer one never reached Canvas.
LONG_TEXT_LIMITS: dict[tuple[str, str], int] = {
    ("page_view", "url"): 8192,
    ("page_view", "user_agent"): 8192,
}


def to_event(
    decoded: Decoded, *, source: Source | None = None, now: datetime | None = None
) -> Event | Rejection:
    """Check a decoded event against docs/messages.md#validation and normalise it.

    `now` bounds created_at; `source` (where the message was read) goes with the event.
    """
    datum = decoded.datum
    event_type = RECORD_EVENT_TYPES.get(decoded.record_name)
    if event_type is None:
        return Rejection(
            ErrorCode.NOT_AN_EVENT_TYPE,
            f"record {decoded.record_name} is not one of the course event records",
        )

    event_id = _event_id(datum.get("event_id"))
    if isinstance(event_id, Rejection):
        return event_id

    course = datum.get("course")
    problem = _course_problem(course, "course")
    if problem is not None:
        return Rejection(ErrorCode.INVALID_COURSE, problem)
    assert isinstance(course, dict)

    created_at = _created_at(datum.get("created_at"), now)
    if isinstance(created_at, Rejection):
        return created_at

    event_data: dict[str, Any] = {}
    if event_type in _CHANGE_TYPES:
        event_data = _changes(datum.get("changes"))
        if not event_data:
            return Rejection(
                ErrorCode.EMPTY_CHANGES,
                f"changes of this {event_type} event is empty once pairs whose old and new "
                "values are both blank (null, empty or false) are dropped",
            )
        if event_type == "created":
            created_source = datum.get("created_source")
            if created_source is not None:
                event_data["created_source"] = created_source

    related = None
    if event_type in RELATED_COURSE_TYPES:
        related = datum.get(event_type)
        problem = _course_problem(related, event_type)
        if problem is not None:
            return Rejection(
                ErrorCode.MISSING_RELATED_COURSE,
                f"a {event_type} event needs its related course: {problem}",
            )

    event_source = datum.get("event_source") or ""
    user = datum.get("user")
    page_view = datum.get("page_view")
    problem = _oversized(event_source, event_data, course, user, page_view, event_type, related)
    if problem is not None:
        return Rejection(ErrorCode.FIELD_TOO_LARGE, problem)

    return Event(
        event_id=event_id,
        created_at=created_at,
        event_type=event_type,
        event_source=event_source,
        course=course,
        user=user,
        page_view=page_view,
        sis_batch_id=datum.get("sis_batch_id"),
        event_data=event_data,
        related_course=related,
        source=source,
    )


def _event_id(value: Any) -> uuid.UUID | Rejection:
    if isinstance(value, uuid.UUID):
        parsed: uuid.UUID | None = value
    elif isinstance(value, str) and UUID_RE.fullmatch(value):
        parsed = uuid.UUID(value)
    else:
        parsed = None
    if parsed is None:
        return Rejection(
            ErrorCode.INVALID_EVENT_ID,
            f"event_id {value!r:.80} is not a UUID (expected 8-4-4-4-12 hexadecimal digits)",
        )
    if parsed == _NIL_UUID:
        # Every producer sending the nil UUID would collapse into one event.
        return Rejection(ErrorCode.INVALID_EVENT_ID, "event_id is the nil UUID, not a unique id")
    return parsed


def _course_problem(course: Any, field: str) -> str | None:
    """Why `course` (under `field`) is not a usable course snapshot, or None."""
    if not isinstance(course, dict):
        return f"{field} is missing"
    for key in _COURSE_IDS:
        value = course.get(key)
        if type(value) is int and value > 0:  # the usual case; `type` also rules out bool
            continue
        if value is None:
            return f"{field}.{key} is missing"
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            return f"{field}.{key} is {value!r:.40}; it must be a positive id"
    return None


def _oversized(
    event_source: Any,
    event_data: dict[str, Any],
    course: dict[str, Any],
    user: Any,
    page_view: Any,
    event_type: str,
    related: Any,
) -> str | None:
    """Which text field is longer than its limit, and by how much, or None.

    Every value of every record is looked at, on every event: one test per value decides
    (no limit is under TEXT_LIMIT), and only a longer value looks up its own limit.
    """
    if event_source.__class__ is str and len(event_source) > TEXT_LIMIT:
        return _too_large("event_source", len(event_source), TEXT_LIMIT)
    for attr, pair in event_data.items():
        if len(attr) > TEXT_LIMIT:
            return (
                f"changes has an attribute name of {len(attr)} characters ({attr[:40]!r}...);"
                f" the limit is {TEXT_LIMIT}"
            )
        if attr == "created_source" and pair.__class__ is str and len(pair) > TEXT_LIMIT:
            return _too_large("created_source", len(pair), TEXT_LIMIT)
    for value in course.values():
        if value.__class__ is str and len(value) > TEXT_LIMIT:
            return _longest("course", "course", course)
    if user.__class__ is dict:
        for value in user.values():
            if value.__class__ is str and len(value) > TEXT_LIMIT:
                return _longest("user", "user", user)
    if page_view.__class__ is dict:
        for value in page_view.values():
            if value.__class__ is str and len(value) > TEXT_LIMIT:
                # url and user_agent may be longer than TEXT_LIMIT: look closer.
                problem = _longest("page_view", "page_view", page_view)
                if problem is not None:
                    return problem
                break
    if related.__class__ is dict:
        for value in related.values():
            if value.__class__ is str and len(value) > TEXT_LIMIT:
                return _longest(event_type, "course", related)
    return None


def _longest(name: str, kind: str, record: dict[str, Any]) -> str | None:
    """The first field of `record` over its own limit, described, or None."""
    for key, value in record.items():
        if value.__class__ is str:
            limit = LONG_TEXT_LIMITS.get((kind, key), TEXT_LIMIT)
            if len(value) > limit:
                return _too_large(f"{name}.{key}", len(value), limit)
    return None


def _too_large(field: str, length: int, limit: int) -> str:
    return f"{field} is {length} characters; the limit is {limit}"


def _created_at(value: Any, now: datetime | None) -> datetime | Rejection:
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        # Compare as integers first: an absurd value must not overflow datetime.
        if value < _MIN_CREATED_AT_MS:
            return _bad_created_at(value, "is before 2000-01-01")
        if value > _latest_ms(now):
            return _bad_created_at(value, f"is more than one day after now ({_iso(now)})")
        # Positional (days, seconds, microseconds): a third faster than milliseconds=.
        return _EPOCH + timedelta(0, value // 1000, value % 1000 * 1000)
    latest = now + _MAX_AHEAD
    if isinstance(value, datetime):
        when = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
    else:
        return Rejection(
            ErrorCode.INVALID_CREATED_AT, f"created_at {value!r:.40} is not a timestamp"
        )
    if when < _MIN_CREATED_AT:
        return _bad_created_at(when, "is before 2000-01-01")
    if when > latest:
        return _bad_created_at(when, f"is more than one day after now ({_iso(now)})")
    return when


# The latest acceptable created_at in ms for the last `now` seen: a consumer validates a whole
# batch against one `now`, and the datetime arithmetic cost as much as the rest of the check.
_latest_for: tuple[datetime, int] | None = None


def _latest_ms(now: datetime) -> int:
    global _latest_for
    cached = _latest_for
    if cached is not None and cached[0] is now:
        return cached[1]
    latest = (now + _MAX_AHEAD - _EPOCH) // _MS
    _latest_for = (now, latest)
    return latest


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bad_created_at(value: int | datetime, why: str) -> Rejection:
    if isinstance(value, int):
        try:
            shown = f"{_iso(_EPOCH + timedelta(milliseconds=value))} ({value} ms)"
        except OverflowError:
            shown = f"{value} ms since 1970-01-01"
    else:
        shown = _iso(value)
    return Rejection(ErrorCode.INVALID_CREATED_AT, f"created_at {shown} {why}")


def is_blank(value: Any) -> bool:
    """Rails' `blank?` for a change value: null, false, or a string of nothing but spaces."""
    if value is None or value is False:
        return True
    return isinstance(value, str) and (not value or value.isspace())


def truncate(value: Any) -> Any:
    """Canvas's truncation of long change strings: at most 1000 characters, ending in '...'."""
    if isinstance(value, str) and len(value) > MAX_CHANGE_LENGTH:
        return value[: MAX_CHANGE_LENGTH - len(_OMISSION)] + _OMISSION
    return value


def _changes(changes: Any) -> dict[str, Any]:
    """{attr: [old, new]} without blank pairs, long strings truncated."""
    if not isinstance(changes, dict):
        return {}
    out: dict[str, Any] = {}
    for attr, pair in changes.items():
        if not isinstance(pair, dict):
            continue
        old = pair.get("old")
        new = pair.get("new")
        if is_blank(old) and is_blank(new):
            continue
        out[attr] = [truncate(old), truncate(new)]
    return out
