"""The filters of the audit endpoints (docs/api.md#filters): parsing, Link URLs and the
clauses the page query gets (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from multidict import MultiDict

from course_audit.api.errors import ApiError
from course_audit.api.links import link_header, page_url
from course_audit.api.params import parse_query
from course_audit.store.queries import (
    Cursor,
    Filters,
    Window,
    filter_clauses,
    page_args,
    page_sql,
)

PATH = "https://audit.example.edu/api/v1/audit/course/accounts/7"
ALL_TYPES = [
    "claimed",
    "concluded",
    "copied_from",
    "copied_to",
    "created",
    "deleted",
    "published",
    "reset_from",
    "reset_to",
    "restored",
    "unconcluded",
    "unpublished",
    "updated",
]


def parse(pairs: list[tuple[str, str]]) -> Filters:
    return parse_query(MultiDict(pairs), UTC).filters


def message(pairs: list[tuple[str, str]]) -> str:
    with pytest.raises(ApiError) as raised:
        parse(pairs)
    assert raised.value.status == 400
    errors = raised.value.body["errors"]
    assert len(errors) == 1
    return str(errors[0]["message"])


def test_no_filters_by_default() -> None:
    filters = parse([])
    assert filters == Filters() and not filters.active
    assert (filters.event_types, filters.user_id, filters.event_source) == ((), None, None)


def test_event_types_are_repeatable_sorted_and_deduplicated() -> None:
    filters = parse(
        [("event_type", "published"), ("event_type", "concluded"), ("event_type", "published")]
    )
    assert filters.event_types == ("concluded", "published") and filters.active


def test_rails_array_form_counts_too() -> None:
    filters = parse([("event_type[]", "updated"), ("event_type", "created")])
    assert filters.event_types == ("created", "updated")


def test_every_event_type_at_once() -> None:
    assert parse([("event_type", t) for t in reversed(ALL_TYPES)]).event_types == tuple(ALL_TYPES)


@pytest.mark.parametrize("value", ["", "Updated", "update", "updated ", "copied", "x" * 500])
def test_an_unknown_event_type_is_a_400_listing_the_types(value: str) -> None:
    text = message([("event_type", "updated"), ("event_type", value)])
    assert text.startswith("event_type: ")
    assert "is not an event type" in text
    for name in ALL_TYPES:
        assert name in text
    assert len(text) < 400  # a long value is shortened, not echoed whole


def test_more_event_type_values_than_types_is_a_400() -> None:
    text = message([("event_type", "updated")] * 14)
    assert text.startswith("event_type: 14 values; give at most 13")
    # Thirteen values are fine, even repeated ones.
    assert parse([("event_type", "updated")] * 13).event_types == ("updated",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", 1), ("77", 77), ("0077", 77), ("9223372036854775807", 2**63 - 1)],
)
def test_user_id(value: str, expected: int) -> None:
    filters = parse([("user_id", value)])
    assert filters.user_id == expected and filters.active


@pytest.mark.parametrize("value", ["", "abc", "-1", "+5", "1.0", " 7", "7e3", "٣", "0x10"])
def test_a_user_id_that_is_not_digits_is_a_400(value: str) -> None:
    text = message([("user_id", value)])
    assert text.startswith("user_id: ") and "is not a user id" in text


@pytest.mark.parametrize("value", ["0", "000", "9223372036854775808", "1" * 40])
def test_a_user_id_out_of_range_is_a_400(value: str) -> None:
    text = message([("user_id", value)])
    assert text.startswith("user_id: ") and "out of range (use 1 to 9223372036854775807)" in text


def test_a_repeated_user_id_or_source_takes_its_last_value() -> None:
    filters = parse(
        [("user_id", "5"), ("user_id", "6"), ("event_source", "api"), ("event_source", "sis")]
    )
    assert (filters.user_id, filters.event_source) == (6, "sis")


@pytest.mark.parametrize("value", ["manual", "api", "sis", "api_in_app", "some other tool"])
def test_event_source_is_kept_as_given(value: str) -> None:
    filters = parse([("event_source", value)])
    assert filters.event_source == value and filters.active


@pytest.mark.parametrize("value", ["", "x" * 256, "a\x00b", "tab\there", "\x7f"])
def test_an_impossible_event_source_is_a_400_naming_examples(value: str) -> None:
    text = message([("event_source", value)])
    assert text.startswith("event_source: ")
    assert "api, api_in_app, manual, sis" in text


def test_a_source_of_255_characters_is_fine() -> None:
    assert parse([("event_source", "s" * 255)]).event_source == "s" * 255


def test_filters_must_be_canonical_when_built_directly() -> None:
    assert Filters.of(["updated", "created", "updated"]).event_types == ("created", "updated")
    with pytest.raises(ValueError):
        Filters(("updated", "created"))
    with pytest.raises(ValueError):
        Filters(("nope",))


# --- Link URLs --------------------------------------------------------------------------------


def test_link_urls_keep_the_filters_in_canonical_form() -> None:
    filters = Filters.of(["published", "concluded"], 77, "api_in_app")
    header = link_header(PATH, None, "2026-03-02", "first", "bookmark:WzEsMl0", 5, filters)
    kept = (
        "end_time=2026-03-02&event_type=concluded&event_type=published&user_id=77"
        "&event_source=api_in_app"
    )
    assert header == (
        f'<{PATH}?{kept}&page=first&per_page=5>; rel="current",'
        f'<{PATH}?{kept}&page=bookmark:WzEsMl0&per_page=5>; rel="next",'
        f'<{PATH}?{kept}&page=first&per_page=5>; rel="first"'
    )


def test_a_source_is_percent_encoded_in_link_urls() -> None:
    url = page_url(PATH, None, None, "first", 10, Filters(event_source="a>b, c&d=e"))
    assert url == f"{PATH}?event_source=a%3Eb%2C%20c%26d%3De&page=first&per_page=10"


def test_no_filters_leave_link_urls_as_they_were() -> None:
    assert page_url(PATH, None, None, "first", 10, Filters()) == f"{PATH}?page=first&per_page=10"


# --- the page query's clauses -----------------------------------------------------------------


def test_filter_clauses_write_only_what_is_in_use() -> None:
    assert filter_clauses(Filters(), 3) == ([], [], None)
    assert filter_clauses(Filters(("updated",)), 3) == (["event_type = $3"], ["updated"], None)
    both = Filters.of(["updated", "created"], 9, "sis")
    assert filter_clauses(both, 4) == (
        ["event_type = ANY($4::text[])", "user_id = $5", "event_source = $6"],
        [["created", "updated"], 9, "sis"],
        None,
    )
    per_type = filter_clauses(Filters.of(["updated", "created"]), 4, per_type="t.wanted")
    assert per_type == (["event_type = t.wanted"], [["created", "updated"]], 4)
    # One type is one range whatever the caller asks for.
    assert filter_clauses(Filters(("updated",)), 2, per_type="t.wanted").types_param is None


def test_without_filters_the_page_query_is_unchanged() -> None:
    window = Window()
    for roots in (1, 2):
        assert page_sql("course_id", window, None, roots) == page_sql(
            "course_id", window, None, roots, Filters()
        )


FILTER_CASES = [
    Filters(("updated",)),
    Filters.of(["updated", "created"]),
    Filters(user_id=5),
    Filters(event_source="sis"),
    Filters.of(["updated", "created"], 5, "sis"),
    Filters.of(["updated"], None, "api"),
    Filters.of(["updated", "published"], None, "api"),
]


@pytest.mark.parametrize("filters", FILTER_CASES, ids=repr)
@pytest.mark.parametrize("roots", [1, 3])
@pytest.mark.parametrize("cursor", [None, Cursor(datetime(2026, 1, 1, tzinfo=UTC), 9)])
def test_page_sql_and_args_agree_on_every_parameter(
    filters: Filters, roots: int, cursor: Cursor | None
) -> None:
    window = Window(since=datetime(2025, 1, 1, tzinfo=UTC))
    sql, n = page_sql("account_id", window, cursor, roots, filters)
    args: list[Any] = page_args(7, list(range(1, roots + 1)), window, cursor, 11, filters)
    assert len(args) == n
    for i in range(1, n + 1):
        assert f"${i}" in sql
    assert f"${n + 1}" not in sql
    assert sql.endswith(f"LIMIT ${n}") and args[-1] == 11
    several_types = len(filters.event_types) > 1 and filters.user_id is None
    assert ("unnest(" in sql and "::text[]) AS t(wanted)" in sql) == several_types
    assert ("AS r(root)" in sql) == (roots > 1)
