"""Readiness and the schema registry: `registry` in /health/ready (in-process, no database)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from course_audit.config import Settings
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics
from course_audit.runtime.web import build_app


@pytest.mark.parametrize(
    ("registry", "status"),
    [
        (None, 200),  # no registry configured: it does not count
        (True, 200),
        (False, 503),  # unreachable: unready, whatever the rest says
    ],
)
async def test_readiness_says_whether_the_registry_is_reachable(
    registry: bool | None, status: int
) -> None:
    health = Health(database_ok=True, migrations_ok=True, subscribed=True, registry=registry)
    async with TestClient(TestServer(build_app(Settings(), health, Metrics()))) as client:
        response = await client.get("/health/ready")
        assert response.status == status
        assert await response.json() == {
            "ready": status == 200,
            "database": True,
            "migrations": True,
            "subscribed": True,
            "consumer_error": None,
            "registry": registry,
        }
