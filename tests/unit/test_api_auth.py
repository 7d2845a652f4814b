"""Token extraction, what is refused before any lookup, and how aiohttp hands us header bytes
(pure logic)."""

from __future__ import annotations

import asyncio
import re
from unittest import mock

import pytest
from aiohttp.http_parser import HttpRequestParserC, HttpRequestParserPy
from aiohttp.test_utils import make_mocked_request

from course_audit.api.auth import bearer_token, headers_are_utf8, require_token
from course_audit.api.errors import ApiError
from course_audit.store.tokens import new_token, well_formed

# What store/tokens.py promises, written out: 32 random bytes as unpadded URL-safe base64.
OUR_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


def test_bearer_header_then_query_parameter() -> None:
    assert (
        bearer_token(make_mocked_request("GET", "/x", headers={"Authorization": "Bearer abc"}))
        == "abc"
    )
    assert (
        bearer_token(make_mocked_request("GET", "/x", headers={"Authorization": "bearer  abc "}))
        == "abc"
    )
    assert bearer_token(make_mocked_request("GET", "/x?access_token=q")) == "q"
    both = make_mocked_request("GET", "/x?access_token=q", headers={"Authorization": "Bearer h"})
    assert bearer_token(both) == "h"


def test_no_token() -> None:
    assert bearer_token(make_mocked_request("GET", "/x")) is None
    assert bearer_token(make_mocked_request("GET", "/x?access_token=")) is None
    basic = make_mocked_request("GET", "/x", headers={"Authorization": "Basic dTpw"})
    assert bearer_token(basic) is None
    assert (
        bearer_token(make_mocked_request("GET", "/x", headers={"Authorization": "Bearer "})) is None
    )


def test_new_tokens_have_the_shape_that_is_checked() -> None:
    for _ in range(1000):
        token = new_token()
        assert OUR_SHAPE.fullmatch(token), token
        assert well_formed(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a" * 42,
        "a" * 44,
        "a" * 42 + ".",
        "a" * 40 + "+/=",
        "a" * 42 + " ",
        "é" * 43,
        "a" * 42 + "\udcff",
        "a" * 42 + "\n",
        "٣" * 43,  # a digit, but not an ASCII one
    ],
)
def test_tokens_not_shaped_like_ours(token: str) -> None:
    assert not well_formed(token)


def _refusal(request: object) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as exc:
        require_token(request)
    error = exc.value
    return error.status, error.body["errors"][0]["message"], error.headers["WWW-Authenticate"]


def test_require_token_refuses_a_token_of_another_shape_without_a_lookup() -> None:
    for request in (
        make_mocked_request("GET", "/x", headers={"Authorization": "Bearer short"}),
        make_mocked_request("GET", "/x?access_token=" + "a" * 44),
    ):
        assert _refusal(request) == (
            401,
            "Invalid access token.",
            'Bearer realm="course-audit", error="invalid_token"',
        )
    token = new_token()
    ok = make_mocked_request("GET", "/x", headers={"Authorization": f"Bearer {token}"})
    assert require_token(ok) == token


def _parse(parser_class: type, raw: bytes) -> object:
    loop = asyncio.new_event_loop()
    try:
        parser = parser_class(mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190)
        messages, _, _ = parser.feed_data(raw)
    finally:
        loop.close()
    ((message, _payload),) = messages
    return message


@pytest.mark.parametrize("parser_class", [HttpRequestParserC, HttpRequestParserPy])
def test_aiohttp_hands_header_bytes_that_are_not_utf8_as_lone_surrogates(
    parser_class: type,
) -> None:
    """Both parsers decode header values as UTF-8 with `surrogateescape`: a stray byte is a
    lone surrogate in the str (which cannot be encoded back: the 500 this guards against),
    and the raw bytes stay as they came."""
    raw = (
        b"GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xffabc\r\nX-Ok: caf\xc3\xa9\r\n\r\n"
    )
    message = _parse(parser_class, raw)
    value = message.headers["Authorization"]
    assert value == "Bearer \udcffabc"
    with pytest.raises(UnicodeEncodeError):
        value.encode("utf-8")
    assert message.headers["X-Ok"] == "café"
    assert (b"Authorization", b"Bearer \xffabc") in message.raw_headers
    assert not headers_are_utf8(message.raw_headers)
    fine = _parse(parser_class, raw.replace(b"\xffabc", b"abc"))
    assert headers_are_utf8(fine.raw_headers)


@pytest.mark.parametrize(
    "value",
    [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"ok \x80"],
)
def test_header_bytes_that_are_not_utf8(value: bytes) -> None:
    assert not headers_are_utf8([(b"Host", b"x"), (b"X-A", value)])
    assert headers_are_utf8([(b"Host", b"x"), (b"X-A", "é 日本".encode())])
