"""Base URLs and the Link header (docs/api.md#link-header), pure logic."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from course_audit.api.errors import ApiError
from course_audit.api.links import base_url, link_header, page_url
from course_audit.config import Settings

PATH = "https://audit.example.edu/api/v1/audit/course/courses/42"


def test_link_header_with_next() -> None:
    header = link_header(PATH, None, None, "first", "bookmark:WzEsMl0", 10)
    assert header == (
        f'<{PATH}?page=first&per_page=10>; rel="current",'
        f'<{PATH}?page=bookmark:WzEsMl0&per_page=10>; rel="next",'
        f'<{PATH}?page=first&per_page=10>; rel="first"'
    )


def test_link_header_without_next_keeps_the_time_filters_first() -> None:
    header = link_header(
        PATH, "2026-03-01T10:00:00+02:00", "2026-03-02", "bookmark:WzEsMl0", None, 100
    )
    query = "start_time=2026-03-01T10:00:00%2B02:00&end_time=2026-03-02"
    assert header == (
        f'<{PATH}?{query}&page=bookmark:WzEsMl0&per_page=100>; rel="current",'
        f'<{PATH}?{query}&page=first&per_page=100>; rel="first"'
    )
    assert ", " not in header


def test_page_url_percent_encodes_what_could_break_the_header() -> None:
    url = page_url(PATH, "a>b,c d", None, "first", 5)
    assert url == f"{PATH}?start_time=a%3Eb%2Cc%20d&page=first&per_page=5"


def test_base_url_from_the_request() -> None:
    req = make_mocked_request("GET", "/x", headers={"Host": "api.local:8080"})
    assert base_url(req, Settings()) == "http://api.local:8080"


def test_forwarded_headers_count_only_when_the_proxy_is_trusted() -> None:
    headers = {
        "Host": "10.0.0.5:8080",
        "X-Forwarded-Proto": "https, http",
        "X-Forwarded-Host": "audit.example.edu, proxy.internal",
    }
    req = make_mocked_request("GET", "/x", headers=headers)
    assert base_url(req, Settings()) == "http://10.0.0.5:8080"
    assert base_url(req, Settings(trust_proxy=True)) == "https://audit.example.edu"


def test_the_configured_public_base_url_wins() -> None:
    req = make_mocked_request(
        "GET", "/x", headers={"Host": "evil.example", "X-Forwarded-Host": "x"}
    )
    settings = Settings(public_base_url="https://lms.example.edu/audit", trust_proxy=True)
    assert base_url(req, settings) == "https://lms.example.edu/audit"


@pytest.mark.parametrize("host", ["a>b", "a;b", "a b", 'x"y', "<x>"])
def test_a_host_that_could_inject_into_link_is_refused(host: str) -> None:
    req = make_mocked_request("GET", "/x", headers={"Host": "ok.example", "X-Forwarded-Host": host})
    with pytest.raises(ApiError) as exc:
        base_url(req, Settings(trust_proxy=True))
    assert exc.value.status == 400


def test_ipv6_hosts_are_fine() -> None:
    req = make_mocked_request("GET", "/x", headers={"Host": "[::1]:8080"})
    assert base_url(req, Settings()) == "http://[::1]:8080"


def test_a_host_longer_than_any_dns_name_is_refused() -> None:
    longest = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61 + ":65535"  # 253 + port
    assert base_url(make_mocked_request("GET", "/x", headers={"Host": longest}), Settings())
    for host in ("a" * 5000, "a" * 256 + ":8080"):
        req = make_mocked_request("GET", "/x", headers={"Host": host})
        with pytest.raises(ApiError) as exc:
            base_url(req, Settings())
        assert exc.value.status == 400
