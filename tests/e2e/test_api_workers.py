"""`serve` with AUDIT_API_WORKERS=2: two API processes on one port (docs/operations.md#api-workers).

Both workers log their `http listening` line with the same port and their own pid, both answer
requests on that port (each names itself in the X-Audit-Worker header), and SIGTERM to the
process started stops every worker: none is left running.

In the container layer the logged pids are the container's own: the checks through /proc
are for local processes, and there the container's exit is what shows that none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from test_api_support import create_database, drop_database, with_database

from service_process import LISTENING, ServiceProcess
from waits import eventually

pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def two_workers(server_url: str, template: str, log: Path) -> AsyncIterator[ServiceProcess]:
    name = await create_database(server_url, template)
    env = {"AUDIT_DATABASE_URL": with_database(server_url, name), "AUDIT_API_WORKERS": "2"}
    service = ServiceProcess("serve", env, log)
    try:
        service.start()
        yield service
    finally:
        service.stop()
        await drop_database(server_url, name)


async def listening_lines(service: ServiceProcess) -> list[dict[str, object]]:
    lines = await service.wait_log(f'"msg":"{LISTENING}"', 60, count=2)
    return [json.loads(line) for line in lines]


def alive(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def kill_worker(service: ServiceProcess, pid: int) -> None:
    """SIGKILL one worker (inside the service's container when it runs in one)."""
    if service.container is None:
        os.kill(pid, signal.SIGKILL)
        return
    subprocess.run(
        ["docker", "exec", service.container, "python3", "-c", f"import os; os.kill({pid}, 9)"],
        check=True,
        capture_output=True,
    )


async def answering_workers(base_url: str, seen: dict[str, int]) -> dict[str, int]:
    """GET /openapi.json on a new connection; count the answer under the worker it names."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/openapi.json") as r:
        assert r.status == 200, r.status
        body = await r.json()
        assert "paths" in body
        worker = r.headers["X-Audit-Worker"]
        seen[worker] = seen.get(worker, 0) + 1
    return seen


async def test_two_workers_share_one_port_and_stop_together(
    server_url: str, migrated_template: str, tmp_path: Path
) -> None:
    async with two_workers(server_url, migrated_template, tmp_path / "serve.log") as service:
        lines = await listening_lines(service)
        ports = {line["port"] for line in lines}
        pids = {int(str(line["pid"])) for line in lines}
        assert len(ports) == 1, lines
        assert {line["worker"] for line in lines} == {1, 2}, lines
        assert len(pids) == 2, lines
        local = service.container is None
        if local:
            assert all(parent_of(pid) == service.pid for pid in pids), lines
        await service.wait_ready(60)
        # The kernel spreads new connections over both listening workers.
        seen: dict[str, int] = {}
        await eventually(
            lambda: answering_workers(service.base_url, seen),
            lambda s: set(s) == {"1", "2"},
            60,
            "answers from both workers on the one port",
            interval=0,
        )
        service.signal(signal.SIGTERM)
        assert service.wait(30) == 0
        if local:
            assert [pid for pid in pids if alive(pid)] == []
        assert "api workers stopped" in service.log_text()


async def test_a_worker_that_dies_stops_the_others(
    server_url: str, migrated_template: str, tmp_path: Path
) -> None:
    async with two_workers(server_url, migrated_template, tmp_path / "serve.log") as service:
        lines = await listening_lines(service)
        first, second = (int(str(line["pid"])) for line in lines)
        await service.wait_ready(60)
        kill_worker(service, first)
        assert service.wait(30) == 1
        if service.container is None:
            assert not alive(first) and not alive(second)
        exited = [
            json.loads(line)
            for line in service.log_lines()
            if '"msg":"api worker exited; stopping the others"' in line
        ]
        assert [(e["pid"], e["exit_status"]) for e in exited] == [(first, -signal.SIGKILL)]
