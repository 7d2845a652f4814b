"""Every failure becomes a JSON body: the error middleware on a tiny in-process app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from course_audit.api.errors import errors_middleware, not_found, unavailable


async def boom(request: web.Request) -> web.Response:
    raise ValueError("secret detail")


async def gone(request: web.Request) -> web.Response:
    raise not_found()


async def down(request: web.Request) -> web.Response:
    raise unavailable()


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[errors_middleware])
    app.router.add_get("/boom", boom)
    app.router.add_get("/gone", gone)
    app.router.add_get("/down", down)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_unexpected_exception_is_a_json_500_without_details(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/boom", headers={"Accept": "text/html"})
    assert resp.status == 500
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-store"
    assert await resp.json() == {"errors": [{"message": "An internal error occurred."}]}


async def test_api_errors_and_router_errors(
    client: TestClient[web.Request, web.Application],
) -> None:
    gone_resp = await client.get("/gone")
    assert (gone_resp.status, await gone_resp.json()) == (
        404,
        {"errors": [{"message": "The specified resource does not exist."}]},
    )
    nowhere = await client.get("/nowhere")
    assert (nowhere.status, await nowhere.json()) == (
        404,
        {"errors": [{"message": "The specified resource does not exist."}]},
    )
    post = await client.post("/gone")
    assert post.status == 405
    assert post.headers["Allow"] == "GET,HEAD"
    assert await post.json() == {
        "errors": [{"message": "The method POST is not allowed here; use GET or HEAD."}]
    }
    down_resp = await client.get("/down")
    assert down_resp.status == 503 and down_resp.headers["Retry-After"] == "5"
    assert down_resp.headers["Cache-Control"] == "no-store"
