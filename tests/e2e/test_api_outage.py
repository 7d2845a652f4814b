"""503 with Retry-After while the database is unreachable, and recovery without a restart.

The service (`course-audit serve`) reaches PostgreSQL through a TCP proxy in the test, so the
test can cut the database off (resetting new and open connections) and bring it back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from test_api_support import Api, Reply, course_path, create_database, drop_database, with_database

from course_audit.store.tokens import create_token
from service_process import ServiceProcess
from tcp_proxy import Proxy
from waits import eventually

pytestmark = pytest.mark.e2e


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, ""))


async def until(api: Api, token: str, status: int, timeout: float) -> Reply:
    reply: Reply = await eventually(
        lambda: api.get(course_path(7001), token=token),
        lambda r: r.status == status,
        timeout,
        f"GET {course_path(7001)} to answer {status}",
    )
    return reply


def assert_unavailable(reply: Reply) -> None:
    assert reply.status == 503
    body = reply.json()
    assert list(body) == ["errors"] and body["errors"][0]["message"]
    assert reply.headers["Retry-After"].isdigit()
    assert reply.headers["Cache-Control"] == "no-store"


async def test_503_while_the_database_is_away_then_recovery(
    server_url: str, migrated_template: str, tmp_path: Path
) -> None:
    name = await create_database(server_url, migrated_template)
    db_url = with_database(server_url, name)
    conn = await asyncpg.connect(db_url)
    try:
        token = (await create_token(conn, "outage", [1])).token
        await conn.execute(
            "INSERT INTO courses (id, root_account_id, account_id, data, as_of)"
            " VALUES (7001, 1, 1, '{\"id\": 7001}', now())"
        )
    finally:
        await conn.close()
    target = urlsplit(db_url)
    proxy = await Proxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    proxy.cut()  # the database is away from the start
    service = ServiceProcess(
        "serve", {"AUDIT_DATABASE_URL": through(db_url, proxy.port)}, tmp_path / "serve.log"
    )
    api: Api | None = None
    try:
        service.start()
        # Up and answering, but the database has never been reachable: 503, not a hang.
        await service.wait_health(lambda h: h is not None and h[0] == 503, 30, "answering")
        api = Api(service.base_url)
        await api.load_document()
        assert_unavailable(await api.get(course_path(7001), token=token))
        live = await api.get("/health/live")
        assert live.status == 200

        proxy.mend()
        await service.wait_ready(60)
        assert (await until(api, token, 200, 30)).json()["events"] == []

        # The database goes away under open pooled connections.
        proxy.cut()
        assert_unavailable(await until(api, token, 503, 30))
        await service.wait_health(lambda h: h is not None and h[0] == 503, 30, "unready")

        # It comes back: the same process serves again, by itself.
        proxy.mend()
        recovered = await until(api, token, 200, 30)
        assert recovered.json()["linked"] == {"page_views": [], "courses": [], "users": []}
        assert service.proc is not None and service.proc.poll() is None
        # Every answer was checked against the OpenAPI document (503s and 200s alike).
        assert api.checker is not None and api.checker.checked == api.answered >= 6
    finally:
        if api is not None:
            await api.close()
        # In a thread: the proxy runs on this loop, and the service closes its pool through it.
        await asyncio.to_thread(service.stop)
        await proxy.close()
        await drop_database(server_url, name)
