"""The log never holds what a client sent (runtime/logs.py; pure logic on LogRecords)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from aiohttp.http_exceptions import BadStatusLine, InvalidURLError, LineTooLong

from course_audit.runtime import logs

TOKEN = "Qpi6QneoN_s8faw2nhokB9QpUqUhn9zDa0o-Fk2EOSE"
LINE = f"GET /api/v1/audit/course/courses/1?access_token={TOKEN} HTTP/1.x"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger configured as the service does, writing into a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    logs.configure("INFO", "json")
    root.handlers[0].setStream(out)
    yield out
    root.handlers[:], root.level = saved[0], saved[1]


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_aiohttp_protocol_errors_become_one_line_without_the_request(
    captured: io.StringIO,
) -> None:
    server = logging.getLogger("aiohttp.server")
    for exc in (
        BadStatusLine(LINE),
        LineTooLong(LINE.encode()[:100] + b"...", 8190),
        InvalidURLError(LINE.split()[1]),
    ):
        # What aiohttp's RequestHandler.handle_error does with a parser error.
        server.exception("Error handling request from %s", "10.0.0.7", exc_info=raised(exc))
    assert TOKEN not in captured.getvalue() and "access_token" not in captured.getvalue()
    entries = lines(captured)
    assert [(e["level"], e["msg"], e["status"], e["peer"], e["error"]) for e in entries] == [
        ("info", "bad request refused", 400, "10.0.0.7", "BadStatusLine"),
        ("info", "bad request refused", 400, "10.0.0.7", "LineTooLong"),
        ("info", "bad request refused", 400, "10.0.0.7", "InvalidURLError"),
    ]
    assert all("exc" not in e for e in entries)


def test_other_request_exceptions_keep_frames_and_types_but_not_messages(
    captured: io.StringIO,
) -> None:
    def handler() -> None:
        try:
            raise ValueError(f"cannot parse {LINE}")
        except ValueError as exc:
            raise RuntimeError(f"while handling {TOKEN}") from exc

    for name in ("aiohttp.server", "asyncio", "course_audit.runtime.http_server"):
        logging.getLogger(name).error("Unhandled exception", exc_info=raised_from(handler))
    assert TOKEN not in captured.getvalue()
    for entry in lines(captured):
        text = str(entry["exc"])
        assert "builtins.ValueError" in text and "builtins.RuntimeError" in text, text
        assert "direct cause" in text and ", in handler" in text, text
        assert text.index("ValueError") < text.index("RuntimeError")  # the cause first


def raised_from(function: object) -> BaseException:
    try:
        function()
    except BaseException as caught:
        return caught
    raise AssertionError("nothing raised")


def test_the_service_s_own_exceptions_keep_their_messages(captured: io.StringIO) -> None:
    logging.getLogger("course_audit.ingest.consumer").error(
        "consumer failed", exc_info=raised(RuntimeError("broker unreachable"))
    )
    (entry,) = lines(captured)
    assert "RuntimeError: broker unreachable" in str(entry["exc"])


@pytest.mark.parametrize(
    "text",
    [
        f"retrying GET /x?access_token={TOKEN}&page=2",
        f"header was Authorization: Bearer {TOKEN}",
        f"header was authorization: bearer   {TOKEN}",
    ],
)
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_token_left_in_any_line_is_masked(text: str, fmt: str, captured: io.StringIO) -> None:
    logs.configure("INFO", fmt)
    logging.getLogger().handlers[0].setStream(captured)
    logging.getLogger("course_audit.anything").warning(text)
    out = captured.getvalue()
    assert TOKEN not in out and logs.MASK in out, out


def test_a_line_with_bytes_that_were_not_utf8_is_still_written(captured: io.StringIO) -> None:
    logging.getLogger("course_audit.anything").warning("odd", extra={"value": "a\udcffb"})
    (entry,) = lines(captured)
    assert entry["value"] == "a\udcffb"
