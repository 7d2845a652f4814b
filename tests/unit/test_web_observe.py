"""The request metrics middleware on the base app (in-process, no database)."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from course_audit.config import Settings
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics
from course_audit.runtime.web import build_app


def count(metrics: Metrics, route: str, status: str) -> float:
    value = metrics.registry.get_sample_value(
        "course_audit_http_requests_total", {"route": route, "status": status}
    )
    return 0.0 if value is None else value


async def test_every_request_is_counted_by_route_and_status_in_its_own_app() -> None:
    # Two apps in one process: the cached metric children must stay with their own registry.
    first, second = Metrics(), Metrics()
    for metrics, requests in ((first, 3), (second, 1)):
        app = build_app(Settings(), Health(), metrics)
        async with TestClient(TestServer(app)) as client:
            for _ in range(requests):
                assert (await client.get("/health/live")).status == 200
            assert (await client.get("/health/ready")).status == 503
            assert (await client.get("/nope")).status == 404
    assert count(first, "/health/live", "200") == 3
    assert count(second, "/health/live", "200") == 1
    assert count(first, "/health/ready", "503") == 1
    assert count(first, "unmatched", "404") == 1
    histogram = first.registry.get_sample_value(
        "course_audit_http_request_seconds_count", {"route": "/health/live"}
    )
    assert histogram == 3
