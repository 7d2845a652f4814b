"""Token extraction and the short-lived token cache (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp.test_utils import make_mocked_request

from course_audit.api.auth import TokenCache, bearer_token
from course_audit.store.tokens import TokenInfo

INFO = TokenInfo(1, "t", (1,), datetime(2026, 1, 1, tzinfo=UTC), None)


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


def test_cache_expires_so_revocation_takes_effect() -> None:
    now = [100.0]
    cache = TokenCache(ttl_s=2.0, clock=lambda: now[0])
    cache.put(b"d", INFO)
    assert cache.get(b"d") is INFO
    now[0] = 101.9
    assert cache.get(b"d") is INFO
    now[0] = 102.0
    assert cache.get(b"d") is None


def test_cache_is_bounded() -> None:
    cache = TokenCache(size=2)
    for key in (b"a", b"b", b"c"):
        cache.put(key, INFO)
    assert cache.get(b"a") is None
    assert cache.get(b"b") is INFO and cache.get(b"c") is INFO
