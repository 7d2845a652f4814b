"""The query benchmark's baseline: a bare aiohttp handler over the same keyset SQL.

No auth, no validation, no `linked`, no Link header: the route takes the id, an optional
cursor and per_page, runs the service's own page query through an asyncpg pool and returns
the rows with orjson. What the real API costs beyond this is what the benchmark measures.

    python bare_server.py --database-url URL --port P
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import asyncpg
import orjson
from aiohttp import web

from course_audit.store.queries import Cursor, Window, page_args, page_sql

POOL = web.AppKey("pool", asyncpg.Pool)


def _handler(column: str) -> web.Handler:
    async def handle(request: web.Request) -> web.Response:
        key = int(request.match_info["id"])
        limit = int(request.query.get("per_page", "100"))
        after = request.query.get("after")
        # The root accounts a token would grant: the page query reads those only.
        roots = [int(r) for r in request.query.get("roots", "1").split(",")]
        cursor = None
        if after:
            micros, seq = after.split(",")
            cursor = Cursor(datetime.fromtimestamp(int(micros) / 1e6, UTC), int(seq))
        sql, _ = page_sql(column, Window(), cursor, len(set(roots)))
        async with request.app[POOL].acquire() as conn:
            rows = await conn.fetch(sql, *page_args(key, roots, Window(), cursor, limit + 1))
        body = orjson.dumps([dict(r) for r in rows[:limit]], default=str)
        return web.Response(body=body, content_type="application/json")

    return handle


async def _pool(app: web.Application) -> object:
    app[POOL] = await asyncpg.create_pool(app["database_url"], min_size=2, max_size=10)
    yield
    await app[POOL].close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app["database_url"] = args.database_url
    app.cleanup_ctx.append(_pool)
    app.router.add_get("/bare/course/{id}", _handler("course_id"))
    app.router.add_get("/bare/account/{id}", _handler("account_id"))
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
