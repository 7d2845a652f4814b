"""Query parameters of the audit endpoints (docs/api.md#parameters) and the opaque page bookmark."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

import orjson

from course_audit.api.errors import bad_parameter
from course_audit.store.queries import EVENT_TYPES, MAX_ID, NO_FILTERS, Cursor, Filters, Window

DEFAULT_PER_PAGE = 10
MAX_PER_PAGE = 100
FIRST = "first"
BOOKMARK_PREFIX = "bookmark:"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_SECOND = timedelta(seconds=1)
_MAX_MICROS = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // _US
_MAX_SEQ = 2**63 - 1
_LAST_SECOND = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_DATE_ONLY = re.compile(r"[0-9]{4}-?[0-9]{2}-?[0-9]{2}")
# A '+' of an offset that reached us as a space: the client did not percent-encode it and
# form decoding turned it into a space ("...T10:00:00 02:00").
_SPACE_OFFSET = re.compile(r"(.*[Tt ][0-9:.,]+) ([0-9]{2}(?::?[0-9]{2})?)")
_TIME_EXAMPLE = "e.g. 2026-01-31, 2026-01-31T13:45:00Z or 2026-01-31T13:45:00-07:00"
#: The sources Canvas sends (docs/messages.md): examples only, the set is open.
KNOWN_EVENT_SOURCES = ("api", "api_in_app", "manual", "sis")
#: Longest event_source the store holds (docs/messages.md#field-sizes).
MAX_EVENT_SOURCE = 255
_USER_ID = re.compile(r"[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Query:
    """The parsed parameters of one request."""

    start_time: str | None  # as the client wrote it, kept in Link URLs
    end_time: str | None
    window: Window
    empty: bool  # the window holds no instant (start after end): answer with no events
    per_page: int
    page: str  # "first" or "bookmark:..." (canonical form)
    cursor: Cursor | None
    filters: Filters = NO_FILTERS


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 60 else repr(value[:57] + "...")


def _last(query: Mapping[str, str] | object, name: str) -> str | None:
    # Like Rails, a repeated parameter takes its last value.
    getall = getattr(query, "getall", None)
    if getall is not None:
        values: list[str] = getall(name, [])
        return values[-1] if values else None
    if isinstance(query, Mapping):
        value = query.get(name)
        return None if value is None else str(value)
    return None


def _all(query: Mapping[str, str] | object, name: str) -> list[str]:
    # Every value of a repeatable parameter, in order (`name=a&name=b`).
    getall = getattr(query, "getall", None)
    if getall is not None:
        values: list[str] = getall(name, [])
        return list(values)
    if isinstance(query, Mapping):
        value = query.get(name)
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    return []


def repair_offset(value: str) -> str:
    """Give back the '+' of an offset that form decoding turned into a space."""
    match = _SPACE_OFFSET.fullmatch(value)
    return f"{match.group(1)}+{match.group(2)}" if match else value


def parse_time(name: str, value: str, zone: tzinfo) -> datetime:
    """An ISO 8601 date or date-time; offset-less ones (and dates, at midnight) in `zone`."""
    try:
        parsed = datetime.fromisoformat(repair_offset(value))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise bad_parameter(
            f"{name}: {_shown(value)} is not an ISO 8601 date or date-time ({_TIME_EXAMPLE})"
        ) from None


def parse_per_page(value: str | None) -> int:
    """Page size: default 10, at most 100; below 1 or not a whole number is an error."""
    if value is None:
        return DEFAULT_PER_PAGE
    if not _INTEGER.fullmatch(value):
        raise bad_parameter(f"per_page: {_shown(value)} is not a whole number (use 1 to 100)")
    digits = value.lstrip("+-").lstrip("0")
    if value.startswith("-") and digits:
        raise bad_parameter(f"per_page: {value} is below 1 (use 1 to 100)")
    if len(digits) > 6:  # no need to build a huge int to know it is above the cap
        return MAX_PER_PAGE
    number = int(digits or "0")
    if number < 1:
        raise bad_parameter(f"per_page: {value} is below 1 (use 1 to 100)")
    return min(number, MAX_PER_PAGE)


def encode_bookmark(cursor: Cursor) -> str:
    """`bookmark:<unpadded base64url of JSON [epoch microseconds, seq]>`."""
    micros = (cursor.created_at - _EPOCH) // _US
    payload = base64.urlsafe_b64encode(orjson.dumps([micros, cursor.seq])).rstrip(b"=")
    return BOOKMARK_PREFIX + payload.decode("ascii")


def decode_bookmark(token: str) -> Cursor:
    """The cursor in a bookmark token (the part after `bookmark:`); ValueError if malformed."""
    if not _BASE64URL.fullmatch(token) or len(token) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        value = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, orjson.JSONDecodeError) as exc:
        raise ValueError("not base64url JSON") from exc
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(type(v) is int for v in value)
        or not 0 <= value[0] <= _MAX_MICROS
        or not 0 <= value[1] <= _MAX_SEQ
    ):
        raise ValueError("not a bookmark")
    return Cursor(_EPOCH + value[0] * _US, value[1])


def parse_page(value: str | None) -> tuple[str, Cursor | None]:
    """`first` (or absent) -> no cursor; `bookmark:...` -> its cursor (canonical token back)."""
    if value is None or value == FIRST:
        return FIRST, None
    if value.startswith(BOOKMARK_PREFIX):
        try:
            cursor = decode_bookmark(value[len(BOOKMARK_PREFIX) :])
        except ValueError:
            raise bad_parameter(
                "page: the bookmark is malformed; use the page value of a Link header URL"
            ) from None
        return encode_bookmark(cursor), cursor
    raise bad_parameter(
        f"page: {_shown(value)} is neither first nor a bookmark: value from a Link header URL"
    )


def parse_event_types(values: list[str]) -> tuple[str, ...]:
    """Event types to keep (`event_type`, repeatable; also Rails' `event_type[]`), sorted and
    each once; at most as many values as there are types."""
    if len(values) > len(EVENT_TYPES):
        raise bad_parameter(
            f"event_type: {len(values)} values; give at most {len(EVENT_TYPES)},"
            f" one of each of {', '.join(EVENT_TYPES)}"
        )
    for value in values:
        if value not in EVENT_TYPES:
            raise bad_parameter(
                f"event_type: {_shown(value)} is not an event type"
                f" (use one of {', '.join(EVENT_TYPES)})"
            )
    return tuple(sorted(set(values)))


def parse_user_id(value: str | None) -> int | None:
    """The numeric id of the user who made the change: 1 to 2^63-1."""
    if value is None:
        return None
    if not _USER_ID.fullmatch(value):
        raise bad_parameter(
            f"user_id: {_shown(value)} is not a user id (digits only, 1 to {MAX_ID})"
        )
    digits = value.lstrip("0")
    if not digits or len(digits) > len(str(MAX_ID)) or int(digits) > MAX_ID:
        raise bad_parameter(f"user_id: {_shown(value)} is out of range (use 1 to {MAX_ID})")
    return int(digits)


def parse_event_source(value: str | None) -> str | None:
    """How the change was made, exactly as stored: any text the store can hold (the set is
    open: Canvas sends api, api_in_app, manual and sis)."""
    if value is None:
        return None
    known = ", ".join(KNOWN_EVENT_SOURCES)
    if not value:
        raise bad_parameter(f"event_source: empty; give a source such as {known}")
    if len(value) > MAX_EVENT_SOURCE or _CONTROL.search(value):
        raise bad_parameter(
            f"event_source: {_shown(value)} is not a source: at most {MAX_EVENT_SOURCE}"
            f" characters, none of them control characters (e.g. {known})"
        )
    return value


def parse_filters(query: Mapping[str, str] | object) -> Filters:
    """event_type (repeatable), user_id and event_source; a repeated user_id or
    event_source takes its last value, like every other parameter."""
    types = parse_event_types(_all(query, "event_type") + _all(query, "event_type[]"))
    user_id = parse_user_id(_last(query, "user_id"))
    source = parse_event_source(_last(query, "event_source"))
    return Filters(types, user_id, source)


def _ceil_second(when: datetime) -> datetime:
    floor = when.replace(microsecond=0)
    if floor == when:
        return floor
    return floor + _SECOND if floor < _LAST_SECOND else _LAST_SECOND


def _after_second(when: datetime) -> datetime | None:
    """The exclusive bound just after `when`'s whole second (None: no bound is needed)."""
    floor = when.replace(microsecond=0)
    return floor + _SECOND if floor < _LAST_SECOND else None


@dataclass(frozen=True, slots=True)
class TimeRange:
    """start_time/end_time parsed: as written (repaired), as instants, and as the store's
    window."""

    start_raw: str | None  # as the client wrote it (offset repaired), kept in Link URLs
    end_raw: str | None
    start: datetime | None  # the instants asked for, in UTC
    end: datetime | None
    window: Window
    empty: bool  # the window holds no instant (start after end): answer with no events


def parse_window(
    start_raw: str | None,
    end_raw: str | None,
    zone: tzinfo,
    names: tuple[str, str] = ("start_time", "end_time"),
) -> TimeRange:
    """Parse a start and an end time (either may be absent); raise ApiError (400) naming the
    bad one by `names`.

    created_at is compared at whole seconds, as the API shows it: an event shown at
    10:00:00Z is inside `end_time=10:00:00Z` even if it happened at 10:00:00.6.
    """
    # Link URLs carry the repaired text, percent-encoded, so the '+' survives the next hop.
    start_raw = None if start_raw is None else repair_offset(start_raw)
    end_raw = None if end_raw is None else repair_offset(end_raw)
    start = None if start_raw is None else parse_time(names[0], start_raw, zone)
    end = None if end_raw is None else parse_time(names[1], end_raw, zone)
    since = None if start is None else _ceil_second(start)
    until = None if end is None else _after_second(end)
    empty = (start is not None and end is not None and start > end) or (
        since is not None and until is not None and since >= until
    )
    return TimeRange(start_raw, end_raw, start, end, Window(since, until), empty)


def query_window(query: Mapping[str, str] | object, zone: tzinfo) -> TimeRange:
    """The start_time and end_time parameters of a request (the last of repeated ones)."""
    return parse_window(_last(query, "start_time"), _last(query, "end_time"), zone)


def last_value(query: Mapping[str, str] | object, name: str) -> str | None:
    """A parameter's value; like Rails, a repeated parameter takes its last value."""
    return _last(query, name)


def parse_query(query: Mapping[str, str] | object, zone: tzinfo) -> Query:
    """Parse start_time, end_time, per_page, page and the filters; raise ApiError (400)
    naming a bad one."""
    times = query_window(query, zone)
    per_page = parse_per_page(_last(query, "per_page"))
    page, cursor = parse_page(_last(query, "page"))
    filters = parse_filters(query)
    return Query(
        times.start_raw, times.end_raw, times.window, times.empty, per_page, page, cursor, filters
    )
