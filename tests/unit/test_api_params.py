"""Query parameters and bookmarks of the audit API (pure logic)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from multidict import MultiDict

from course_audit.api.errors import ApiError
from course_audit.api.params import (
    MAX_PER_PAGE,
    decode_bookmark,
    encode_bookmark,
    parse_page,
    parse_per_page,
    parse_query,
    parse_time,
)
from course_audit.store.queries import MAX_PAGE_ROWS, Cursor, Window, page_args

DENVER = ZoneInfo("America/Denver")


def message(exc: pytest.ExceptionInfo[ApiError]) -> str:
    assert exc.value.status == 400
    errors = exc.value.body["errors"]
    assert len(errors) == 1 and list(exc.value.body) == ["errors"]
    return str(errors[0]["message"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T10:00:00+02:00", datetime(2026, 3, 1, 8, tzinfo=UTC)),
        ("2026-03-01T10:00:00-0700", datetime(2026, 3, 1, 17, tzinfo=UTC)),
        ("2026-03-01T10:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T10:00:00.250Z", datetime(2026, 3, 1, 10, 0, 0, 250000, tzinfo=UTC)),
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
        ("20260301T100000Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        # '+' decoded as a space by form decoding: the offset is still an offset.
        ("2026-03-01T10:00:00 02:00", datetime(2026, 3, 1, 8, tzinfo=UTC)),
    ],
)
def test_times_with_offsets_or_in_utc(text: str, expected: datetime) -> None:
    assert parse_time("start_time", text, UTC) == expected


def test_offset_less_times_and_dates_are_read_in_the_configured_zone() -> None:
    # Denver is UTC-7 in March (before DST starts on the 8th) and UTC-6 in July.
    assert parse_time("end_time", "2026-03-01", DENVER) == datetime(2026, 3, 1, 7, tzinfo=UTC)
    assert parse_time("end_time", "2026-07-01T12:00:00", DENVER) == datetime(
        2026, 7, 1, 18, tzinfo=UTC
    )
    # An explicit offset wins over the zone.
    assert parse_time("end_time", "2026-07-01T12:00:00Z", DENVER) == datetime(
        2026, 7, 1, 12, tzinfo=UTC
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-13-01",
        "2026-02-30",
        "2026-03-01T25:00:00Z",
        "1700000000",
        "2026-03-01T10:00:00+25:00",
        "0001-01-01T00:00:00+01:00",
        "2026-03-01 junk",
    ],
)
@pytest.mark.parametrize("name", ["start_time", "end_time"])
def test_malformed_times_are_400s_naming_the_parameter(name: str, text: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_query(MultiDict({name: text}), UTC)
    assert message(exc).startswith(f"{name}: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, 10),
        ("1", 1),
        ("7", 7),
        ("100", 100),
        ("101", 100),
        ("100000000000000000000", 100),
        ("007", 7),
        ("+5", 5),
    ],
)
def test_per_page(text: str | None, expected: int) -> None:
    assert parse_per_page(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "-0", "ten", "", "1.5", "1e2", " 5", "0x10"])
def test_bad_per_page_is_a_400_naming_it(text: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_per_page(text)
    assert message(exc).startswith("per_page: ")


def test_bookmark_round_trip_and_format() -> None:
    cursor = Cursor(datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC), 987654321)
    token = encode_bookmark(cursor)
    assert token.startswith("bookmark:")
    payload = token.removeprefix("bookmark:")
    assert "=" not in payload
    assert set(payload) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    decoded_json = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert decoded_json == [1772359200123456, 987654321]
    assert decode_bookmark(payload) == cursor
    assert parse_page(token) == (token, cursor)


def test_first_page() -> None:
    assert parse_page(None) == ("first", None)
    assert parse_page("first") == ("first", None)


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "value",
    [
        "",
        "2",
        "last",
        "First",
        "bookmark:",
        "bookmark:!!!",
        "bookmark:a",
        "bookmark:e30",
        f"bookmark:{_b64([1, 2, 3])}",
        f"bookmark:{_b64(['x', 1])}",
        f"bookmark:{_b64([-1, 1])}",
        f"bookmark:{_b64([1, True])}",
        f"bookmark:{_b64([10**20, 1])}",
        "bookmark:" + base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_malformed_page_is_a_400_naming_it(value: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_page(value)
    assert message(exc).startswith("page: ")


def test_window_compares_at_whole_seconds() -> None:
    query = parse_query(
        MultiDict({"start_time": "2026-03-01T10:00:00.5Z", "end_time": "2026-03-01T11:00:00Z"}),
        UTC,
    )
    # Inclusive at both ends of the shown (whole-second) created_at.
    assert query.window == Window(
        datetime(2026, 3, 1, 10, 0, 1, tzinfo=UTC), datetime(2026, 3, 1, 11, 0, 1, tzinfo=UTC)
    )
    assert not query.empty


def test_start_after_end_is_an_empty_result_not_an_error() -> None:
    query = parse_query(MultiDict({"start_time": "2026-03-02", "end_time": "2026-03-01"}), UTC)
    assert query.empty
    same_second = parse_query(
        MultiDict({"start_time": "2026-03-01T10:00:00.2Z", "end_time": "2026-03-01T10:00:00.7Z"}),
        UTC,
    )
    assert same_second.empty


def test_defaults_and_kept_texts() -> None:
    query = parse_query(MultiDict(), UTC)
    assert (query.start_time, query.end_time, query.per_page, query.page, query.cursor) == (
        None,
        None,
        10,
        "first",
        None,
    )
    assert query.window == Window(None, None)
    repaired = parse_query(MultiDict({"start_time": "2026-03-01T10:00:00 02:00"}), UTC)
    assert repaired.start_time == "2026-03-01T10:00:00+02:00"


def test_a_repeated_parameter_takes_its_last_value() -> None:
    query = parse_query(MultiDict([("per_page", "2"), ("per_page", "3")]), UTC)
    assert query.per_page == 3


def test_the_largest_page_and_its_lookahead_row_fit_one_page_query() -> None:
    # The page query caps its scan at MAX_PAGE_ROWS; the API asks for per_page + 1 rows.
    assert page_args(1, [1], Window(), None, MAX_PER_PAGE + 1)[-1] == MAX_PER_PAGE + 1
    with pytest.raises(ValueError):
        page_args(1, [1], Window(), None, MAX_PAGE_ROWS + 1)
