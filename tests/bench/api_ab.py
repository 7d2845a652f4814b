"""API CPU per request of several source trees (and the bare handler), interleaved on one store.

The query benchmark's store (`query.load`, N events) and scenarios (first and deep pages of the
big courses and the deep account), each server a process of its own, all started at once; then
for each scenario, `--turns` load generator runs that each alternate between all the servers
every second, so that whatever else the machine does falls on all of them alike. Prints, per
scenario and server, the medians of requests/s and of the server's CPU per request (utime +
stime from /proc, warm-up included). A tree is a directory holding the `course_audit`
package (put first on the server's PYTHONPATH); a NAME starting with `bare` runs
tests/bench/bare_server.py.

    python tests/bench/api_ab.py base=/tmp/old/service new=service bare=service \\
        [--turns 5] [--seconds 3] [--n 200000] [--only course_first,account_deep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import asyncpg
from ingest import Databases
from query import (
    SCENARIOS,
    _alternating,
    _root_of,
    _start_bare,
    _wait_http,
    deep_cursor,
    free_port,
    load,
    scenario_urls,
)

from course_audit.store.queries import Cursor
from course_audit.store.tokens import create_token
from harness import provide_services
from service_process import ServiceProcess


async def _start(
    name: str,
    tree: str,
    db: str,
    ids: dict[str, Any],
    cursors: dict[tuple[str, int], Cursor],
    log: Path,
) -> tuple[Any, int, dict[str, list[str]]]:
    """One server: (its process, pid, urls by scenario)."""
    os.environ["PYTHONPATH"] = tree
    if name.startswith("bare"):
        port = free_port()
        proc: Any = _start_bare(db, port, log / f"{name}.log")
        base = f"http://127.0.0.1:{port}"
        await _wait_http(f"{base}/bare/course/1000?per_page=1")
        return proc, proc.pid, scenario_urls(base, True, ids, cursors)
    settings = {"AUDIT_DATABASE_URL": db, "AUDIT_MIGRATE_ON_START": "false"}
    api = ServiceProcess("serve", settings, log / f"{name}.log").start()
    await api.wait_ready(60)
    return api, api.pid, scenario_urls(api.base_url, False, ids, cursors)


def parse() -> tuple[dict[str, str], argparse.Namespace]:
    parser = argparse.ArgumentParser()
    parser.add_argument("trees", nargs="+", help="NAME=DIR (the directory holding course_audit)")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    args = parser.parse_args()
    pairs = (t.split("=", 1) for t in args.trees)
    return {name: str(Path(tree).resolve()) for name, tree in pairs}, args


async def main(trees: dict[str, str], args: argparse.Namespace) -> None:
    log = Path(tempfile.mkdtemp(prefix="course-audit-api-ab-"))
    with provide_services() as endpoints:
        dbs = Databases(endpoints.database_url)
        db = await dbs.fresh()
        ids = await load(db, args.n)
        conn = await asyncpg.connect(db)
        try:
            token = (await create_token(conn, "bench", [_root_of(ids["deep_account"])])).token
        finally:
            await conn.close()
        cursors = {
            ("course", k): await deep_cursor(db, "course_id", k, args.depth)
            for k in ids["big_courses"]
        }
        account = ids["deep_account"]
        cursors[("account", account)] = await deep_cursor(db, "account_id", account, args.depth)
        servers: dict[str, tuple[Any, int, dict[str, list[str]]]] = {}
        try:
            for name, tree in trees.items():
                servers[name] = await _start(name, tree, db, ids, cursors, log)
            os.environ.pop("PYTHONPATH", None)
            for scenario in args.only.split(","):
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
                for _ in range(args.turns):
                    # One load generator run that alternates between all servers every second
                    # (the query benchmark's way); each gets `--seconds` of it.
                    results = await asyncio.to_thread(
                        _alternating,
                        [(urls[scenario], pid) for _, pid, urls in servers.values()],
                        token,
                        16,
                        args.seconds * len(servers),
                        log,
                    )
                    for name, result in zip(servers, results, strict=True):
                        runs[name].append(result)
                print(
                    scenario,
                    "  ".join(
                        f"{name}: {statistics.median(r['cpu_us_per_request'] for r in rs):,.0f}"
                        f" µs/request, {statistics.median(r['rps'] for r in rs):,.0f} req/s"
                        for name, rs in runs.items()
                    ),
                    flush=True,
                )
        finally:
            for proc, _, _ in servers.values():
                if isinstance(proc, ServiceProcess):
                    proc.stop()
                else:
                    proc.terminate()
                    proc.wait(10)
            await dbs.drop(db)


if __name__ == "__main__":
    asyncio.run(main(*parse()))
