"""503 with Retry-After while the database is unreachable, and recovery without a restart.

The service (`course-audit serve`) reaches PostgreSQL through a TCP proxy in the test, so the
test can cut the database off (refusing and breaking connections) and bring it back.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from test_api_support import Api, Reply, course_path, create_database, drop_database, with_database

from course_audit.store.tokens import create_token
from pipeline import eventually
from service_process import ServiceProcess, free_port

pytestmark = pytest.mark.e2e


class Proxy:
    """A TCP proxy that can be switched off (connections refused, open ones cut) and on."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.BaseTransport] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for transport in list(self.transports):
            transport.abort()
        self.transports.clear()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.transports.update((writer.transport, up_writer.transport))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, ""))


async def until(api: Api, token: str, status: int, timeout: float) -> Reply:
    reply: Reply = await eventually(
        lambda: api.get(course_path(7001), token=token), lambda r: r.status == status, timeout
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
    proxy = Proxy(target.hostname or "127.0.0.1", target.port or 5432)
    service = ServiceProcess(
        "serve", {"AUDIT_DATABASE_URL": through(db_url, proxy.port)}, tmp_path / "serve.log"
    )
    api = Api(service.base_url)
    try:
        service.start()
        # Up and answering, but the database has never been reachable: 503, not a hang.
        await service.wait_health(lambda h: h is not None and h[0] == 503, 30, "answering")
        await api.load_document()
        assert_unavailable(await api.get(course_path(7001), token=token))
        live = await api.get("/health/live")
        assert live.status == 200

        await proxy.start()
        await service.wait_ready(60)
        assert (await until(api, token, 200, 30)).json()["events"] == []

        # The database goes away under open pooled connections.
        await proxy.stop()
        assert_unavailable(await until(api, token, 503, 30))
        await service.wait_health(lambda h: h is not None and h[0] == 503, 30, "unready")

        # It comes back: the same process serves again, by itself.
        await proxy.start()
        recovered = await until(api, token, 200, 30)
        assert recovered.json()["linked"] == {"page_views": [], "courses": [], "users": []}
        assert service.proc is not None and service.proc.poll() is None
        assert api.checker is not None and api.checker.checked >= 4
    finally:
        await api.close()
        # In a thread: the proxy runs on this loop, and the service closes its pool through it.
        await asyncio.to_thread(service.stop)
        if proxy.server is not None:
            await proxy.stop()
        await drop_database(server_url, name)
