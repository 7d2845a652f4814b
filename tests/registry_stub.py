"""A Confluent schema registry stand-in, served over real HTTP from the test's event loop.

It answers `GET /schemas/ids/{id}` from `schemas` (404 for other ids) and records every request.
A test can make it fail (`failures`), hold its answers (`gate`, `open_at_in_flight`) or sit
behind tests/tcp_proxy.Proxy to make it unreachable. Given `tls` (a server context) it serves
HTTPS; given `credentials` it answers 401 to a request without that basic-auth user and
password (and counts those in `unauthorized`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from typing import Any

from aiohttp import web


class RegistryStub:
    """Schemas by id; `url` once `start()` has returned."""

    def __init__(
        self,
        schemas: dict[int, Any] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.tls = tls
        self.credentials = credentials
        #: Requests refused for want of the right credentials.
        self.unauthorized = 0
        #: id -> the answer: a JSON object (`{"schema": ...}`), or bytes sent as they are.
        self.schemas: dict[int, Any] = dict(schemas or {})
        #: The next this many requests answer 503.
        self.failures = 0
        #: Requests for these ids answer 503.
        self.unavailable_ids: set[int] = set()
        #: Every request's schema id, in arrival order.
        self.requests: list[int] = []
        #: When set up, answers wait until it is set.
        self.gate: asyncio.Event | None = None
        #: When set, answers wait until this many requests are in flight at once (after that,
        #: they flow): shows that a client asks concurrently. A client that asks one at a time
        #: is answered after `open_timeout` seconds (and then without waiting), and the test's
        #: check of `max_in_flight` fails.
        self.open_at_in_flight: int | None = None
        self.open_timeout = 5.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._opened = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        assert self.port, "start() the registry stub first"
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def register(self, schema_id: int, schema: Any, schema_type: str | None = None) -> None:
        """Hold `schema` (a JSON-able schema or its text) under `schema_id`."""
        text = schema if isinstance(schema, str) else json.dumps(schema)
        entry: dict[str, Any] = {"schema": text}
        if schema_type is not None:
            entry["schemaType"] = schema_type
        self.schemas[schema_id] = entry

    async def start(self) -> RegistryStub:
        app = web.Application()
        app.router.add_get("/schemas/ids/{id}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RegistryStub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.credentials is not None:
            user, password = self.credentials
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                self.unauthorized += 1
                return web.json_response(
                    {"error_code": 40101, "message": "Unauthorized"}, status=401
                )
        schema_id = int(request.match_info["id"])
        self.requests.append(schema_id)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.open_at_in_flight is not None:
                if self.in_flight >= self.open_at_in_flight:
                    self._opened.set()
                try:
                    await asyncio.wait_for(self._opened.wait(), self.open_timeout)
                except TimeoutError:
                    self._opened.set()
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.in_flight -= 1
        if self.failures > 0 or schema_id in self.unavailable_ids:
            self.failures = max(0, self.failures - 1)
            return web.Response(status=503, text="registry is warming up")
        entry = self.schemas.get(schema_id)
        if entry is None:
            return web.json_response(
                {"error_code": 40403, "message": "Schema not found"}, status=404
            )
        if isinstance(entry, bytes):
            return web.Response(body=entry, content_type="application/json")
        return web.json_response(entry)
