"""Token extraction and the short-lived token cache (pure logic)."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request

from course_audit.api.auth import bearer_token


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
