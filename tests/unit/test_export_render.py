"""The export's parameters, rendering and limits (pure logic)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from multidict import MultiDict

from course_audit.api.errors import ApiError
from course_audit.api.export import (
    ExportSlots,
    csv_chunk,
    csv_header,
    export_limit,
    filename,
    ndjson_chunk,
    parse_export,
)
from course_audit.api.params import parse_window
from course_audit.store.queries import EventRow

EVENT_ID = "5d0c61a2-7a3b-4c8e-9f10-2b3c4d5e6f70"


def message(exc: pytest.ExceptionInfo[ApiError]) -> str:
    assert exc.value.status == 400
    return str(exc.value.body["errors"][0]["message"])


def row(**fields: object) -> EventRow:
    values: dict[str, object] = {
        "event_id": EVENT_ID,
        "created_at": datetime(2026, 3, 1, 10, 0, 0, 600_000, tzinfo=UTC),
        "seq": 1,
        "event_type": "updated",
        "event_source": "api",
        "course_id": 101,
        "user_id": 7,
        "page_view_id": None,
        "sis_batch_id": None,
        "related_course_id": None,
        "event_data": '{"name": ["Old", "New"]}',
    }
    values.update(fields)
    return EventRow(**values)  # type: ignore[arg-type]


def test_defaults_and_good_values() -> None:
    query = parse_export(MultiDict(), UTC)
    assert (query.format, query.after_id, query.times.window.since) == ("ndjson", None, None)
    query = parse_export(
        MultiDict([("format", "ndjson"), ("format", "csv"), ("after_id", EVENT_ID.upper())]),
        UTC,
    )
    assert (query.format, query.after_id) == ("csv", EVENT_ID)  # the last value; lower case


@pytest.mark.parametrize(
    ("params", "starts"),
    [
        ({"format": "xml"}, "format: 'xml' is not a format of the export"),
        ({"format": ""}, "format: '' is not a format"),
        ({"format": "CSV"}, "format: 'CSV'"),
        ({"after_id": "42"}, "after_id: '42' is not an event id"),
        ({"after_id": "{" + EVENT_ID + "}"}, "after_id: "),
        ({"after_id": EVENT_ID.replace("-", "")}, "after_id: "),
        ({"start_time": "yesterday"}, "start_time: 'yesterday' is not an ISO 8601"),
        ({"end_time": "2026-02-30"}, "end_time: '2026-02-30'"),
    ],
)
def test_bad_values_are_a_400_naming_the_parameter(params: dict[str, str], starts: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_export(MultiDict(params), UTC)
    assert message(raised).startswith(starts)


def test_ndjson_lines_are_the_endpoints_events() -> None:
    rows = [
        row(),
        row(
            event_id="00000000-0000-4000-8000-000000000002",
            event_type="copied_to",
            event_source="manual",
            user_id=None,
            page_view_id="pv-1",
            sis_batch_id=42,
            related_course_id=202,
            event_data="{}",
        ),
    ]
    assert ndjson_chunk(rows, UTC, True) == (
        b'{"id":"5d0c61a2-7a3b-4c8e-9f10-2b3c4d5e6f70","created_at":"2026-03-01T10:00:00Z",'
        b'"event_type":"updated","event_source":"api","event_data":{"name":["Old","New"]},'
        b'"links":{"course":101,"page_view":null,"user":7,"sis_batch":null}}\n'
        b'{"id":"00000000-0000-4000-8000-000000000002","created_at":"2026-03-01T10:00:00Z",'
        b'"event_type":"copied_to","event_source":"manual","event_data":{},'
        b'"links":{"copied_to":202,"course":101,"page_view":"pv-1","user":null,'
        b'"sis_batch":42}}\n'
    )
    denver = ndjson_chunk([row()], ZoneInfo("America/Denver"), False)
    assert b'"created_at":"2026-03-01T03:00:00-07:00"' in denver
    assert ndjson_chunk([], UTC, True) == b""


def test_csv_rows_are_rfc_4180_with_the_documented_columns() -> None:
    assert csv_header() == (
        b"id,created_at,event_type,event_source,course_id,user_id,page_view_id,"
        b"sis_batch_id,related_course_id,event_data\r\n"
    )
    rows = [
        row(),
        row(
            event_source='a "quoted", line\r\nbreak',
            user_id=None,
            sis_batch_id=42,
            related_course_id=202,
            event_type="copied_to",
            event_data='{"x": "1,2"}',
        ),
    ]
    assert csv_chunk(rows, UTC, True) == (
        b"5d0c61a2-7a3b-4c8e-9f10-2b3c4d5e6f70,2026-03-01T10:00:00Z,updated,api,101,7,,,,"
        b'"{""name"":[""Old"",""New""]}"\r\n'
        b"5d0c61a2-7a3b-4c8e-9f10-2b3c4d5e6f70,2026-03-01T10:00:00Z,copied_to,"
        b'"a ""quoted"", line\r\nbreak",101,,,42,202,"{""x"":""1,2""}"\r\n'
    )


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_cells_a_spreadsheet_would_evaluate_begin_with_a_quote(start: str) -> None:
    text = f'{start}HYPERLINK("http://evil.example")'
    out = csv_chunk([row(event_source=text, page_view_id=text)], UTC, True).decode()
    (record,) = list(csv.reader(io.StringIO(out, newline="")))
    assert record[3] == "'" + text and record[6] == "'" + text
    # Text that merely contains those characters is left alone.
    out = csv_chunk([row(event_source="a=b", page_view_id="x-1")], UTC, True).decode()
    (record,) = list(csv.reader(io.StringIO(out, newline="")))
    assert (record[3], record[6]) == ("a=b", "x-1")


def test_filename_names_the_target_and_the_range() -> None:
    whole = parse_window(None, None, UTC)
    assert filename("course", 101, whole, "ndjson") == "course-101_beginning_latest.ndjson"
    ranged = parse_window("2026-01-31T13:45:00-07:00", "2026-02-28", UTC)
    assert (
        filename("account", 7, ranged, "csv") == "account-7_20260131T204500Z_20260228T000000Z.csv"
    )
    assert filename("course", 5, parse_window(None, "2026-02-28", UTC), "csv") == (
        "course-5_beginning_20260228T000000Z.csv"
    )


def test_half_the_pool_runs_exports() -> None:
    assert [export_limit(n) for n in (1, 2, 3, 10, 11)] == [1, 1, 1, 5, 5]
    slots = ExportSlots(2)
    assert slots.take() and slots.take() and not slots.take()
    slots.give_back()
    assert slots.take() and slots.running == 2
