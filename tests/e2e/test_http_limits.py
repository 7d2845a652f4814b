"""Connection limits of the real process (docs/operations.md#http-connections).

A request head must arrive whole within AUDIT_HTTP_HEADER_TIMEOUT_S, an idle kept-alive
connection is closed after AUDIT_HTTP_KEEPALIVE_TIMEOUT_S, and beyond
AUDIT_HTTP_MAX_CONNECTIONS the connection waiting longest for a request head makes room. The
waits below are for the server's close, with generous deadlines; nothing is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from test_api_support import create_database, drop_database, with_database

from raw_http import closed_by_server, connect, exchange, read_answer, send
from service_process import ServiceProcess
from waits import eventually, within

pytestmark = pytest.mark.e2e

LIVE = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
HEAD_TIMEOUT = "connection closed: no complete request head in time"
MADE_ROOM = "connection closed to make room: the connection limit is reached"
#: Longest wait for the server to close a connection (its own deadlines are a few seconds).
CLOSE_WITHIN_S = 30


@contextlib.asynccontextmanager
async def serving(
    server_url: str, template: str, log: Path, env: dict[str, str]
) -> AsyncIterator[ServiceProcess]:
    name = await create_database(server_url, template)
    service = ServiceProcess(
        "serve", {"AUDIT_DATABASE_URL": with_database(server_url, name), **env}, log
    )
    try:
        service.start()
        await service.listening()
        yield service
    finally:
        service.stop()
        await drop_database(server_url, name)


@pytest.fixture(scope="module")
async def deadlines(
    server_url: str, migrated_template: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServiceProcess]:
    """A process with a 1 s head deadline and an 8 s keep-alive."""
    env = {"AUDIT_HTTP_HEADER_TIMEOUT_S": "1", "AUDIT_HTTP_KEEPALIVE_TIMEOUT_S": "8"}
    log = tmp_path_factory.mktemp("deadlines") / "serve.log"
    async with serving(server_url, migrated_template, log, env) as service:
        yield service


def head_timeouts(service: ServiceProcess, after: int) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for line in service.log_lines()[after:]
        if f'"msg":"{HEAD_TIMEOUT}"' in line
    ]


async def test_a_partial_request_is_closed(deadlines: ServiceProcess) -> None:
    before = len(deadlines.log_lines())
    reader, writer = await connect(deadlines.port)
    partial = b"GET /health/live HTTP/1.1\r\nHost: x\r\n"
    await send(writer, partial)
    sent = await closed_by_server(reader, CLOSE_WITHIN_S, "the server to close a partial request")
    writer.close()
    assert sent == b""  # closed without an answer
    await deadlines.wait_log(HEAD_TIMEOUT, 10, after=before)
    (entry,) = head_timeouts(deadlines, before)
    assert (entry["head_bytes"], entry["timeout_s"], entry["peer"]) == (
        len(partial),
        1,
        "127.0.0.1",
    )


async def test_a_connection_that_sends_nothing_is_closed(deadlines: ServiceProcess) -> None:
    before = len(deadlines.log_lines())
    reader, writer = await connect(deadlines.port)
    assert await closed_by_server(reader, CLOSE_WITHIN_S, "the server to close") == b""
    writer.close()
    await deadlines.wait_log(HEAD_TIMEOUT, 10, after=before)
    assert [entry["head_bytes"] for entry in head_timeouts(deadlines, before)] == [0]


async def test_a_client_dripping_its_head_is_cut(deadlines: ServiceProcess) -> None:
    """Each byte arrives well within the deadline; the head as a whole does not."""
    head = b"GET /health/live HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"d" * 200 + b"\r\n\r\n"
    before = len(deadlines.log_lines())
    reader, writer = await connect(deadlines.port)
    dripped = 0

    async def drip() -> None:
        nonlocal dripped
        for i in range(len(head)):
            if writer.is_closing() or reader.at_eof():
                return
            await send(writer, head[i : i + 1])
            dripped += 1
            await asyncio.sleep(0.1)  # the client's pace: 10 bytes a second

    dripping = asyncio.create_task(drip())
    try:
        received = await closed_by_server(reader, CLOSE_WITHIN_S, "the server to cut the drip")
    finally:
        dripping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dripping
        writer.close()
    assert received == b""
    assert dripped < len(head), "the whole head went through"
    # Its one head timeout, logged with the bytes that did arrive (read here, so that a log
    # line reaching the test late, as `docker logs` may, never lands in the next test's).
    await deadlines.wait_log(HEAD_TIMEOUT, 10, after=before)
    (entry,) = head_timeouts(deadlines, before)
    assert isinstance(entry["head_bytes"], int) and 0 < entry["head_bytes"] <= dripped, entry


async def test_kept_alive_connections_idle_until_the_keepalive_timeout(
    deadlines: ServiceProcess,
) -> None:
    before = len(deadlines.log_lines())
    reader, writer = await connect(deadlines.port)
    # A silent connection opened after the first answer: once the server has cut it, a head
    # deadline has run out, so the kept-alive connection has idled past one.
    witness = None
    try:
        await send(writer, LIVE)
        first = await within(read_answer(reader), CLOSE_WITHIN_S, "the first answer")
        assert first.status == 200 and first.header("Connection") is None  # kept alive
        witness = await connect(deadlines.port)
        # Idle for longer than the 1 s head deadline, well within the 8 s keep-alive: the
        # deadline only runs from the next request's first byte.
        cut = await closed_by_server(witness[0], CLOSE_WITHIN_S, "the silent witness cut")
        assert cut == b""
        await send(writer, LIVE)
        second = await within(read_answer(reader), CLOSE_WITHIN_S, "the second answer")
        assert second.status == 200
        # Then nothing more: the keep-alive timeout closes the connection (quietly: it is
        # not a head that failed to arrive).
        assert await closed_by_server(reader, CLOSE_WITHIN_S, "the keep-alive close") == b""
        # The witness's head timeout is the only one: none for the kept-alive connection.
        await deadlines.wait_log(HEAD_TIMEOUT, 10, after=before)
        assert [e["head_bytes"] for e in head_timeouts(deadlines, before)] == [0]
    finally:
        writer.close()
        if witness is not None:
            witness[1].close()


async def test_a_partial_later_request_on_a_kept_alive_connection_is_closed(
    deadlines: ServiceProcess,
) -> None:
    before = len(deadlines.log_lines())
    reader, writer = await connect(deadlines.port)
    try:
        await send(writer, LIVE)
        assert (await within(read_answer(reader), CLOSE_WITHIN_S, "the answer")).status == 200
        partial = b"GET /health/live HTTP/1.1\r\nHo"
        await send(writer, partial)
        received = await closed_by_server(reader, CLOSE_WITHIN_S, "the server to close")
        assert received == b""
    finally:
        writer.close()
    await deadlines.wait_log(HEAD_TIMEOUT, 10, after=before)
    assert [entry["head_bytes"] for entry in head_timeouts(deadlines, before)] == [len(partial)]


@contextlib.contextmanager
def soft_open_files_limit(soft: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE lowered for a while (a child started meanwhile
    inherits it)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def open_files_limits(pid: int) -> tuple[str, str]:
    """(soft, hard) of "Max open files" in /proc/<pid>/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open files limit in /proc")


async def test_the_open_files_limit_is_raised_to_the_hard_limit(
    server_url: str, migrated_template: str, tmp_path: Path
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
    name = await create_database(server_url, migrated_template)
    service = ServiceProcess(
        "serve", {"AUDIT_DATABASE_URL": with_database(server_url, name)}, tmp_path / "serve.log"
    )
    try:
        with soft_open_files_limit(low):
            service.start()
        await service.listening()
        assert service.proc is not None
        soft_now, hard_now = open_files_limits(service.pid)
        assert soft_now == hard_now, (soft_now, hard_now)
        if hard != resource.RLIM_INFINITY and hard > low:
            assert int(soft_now) == hard
    finally:
        service.stop()
        await drop_database(server_url, name)


async def test_slow_clients_holding_many_connections_do_not_keep_liveness_out(
    server_url: str, migrated_template: str, tmp_path: Path
) -> None:
    """600 partial requests against a cap of 50, in a process allowed far fewer open files
    than 600: the cap makes room for /health/live, where without it the process would run out
    of files.

    (The limit leaves room for the process's own files, counted once it is ready, the cap,
    two accept bursts of the listen backlog (2 x 128: the connections the cap closes release
    their files a loop iteration after the next burst may have been accepted) and 32 to
    spare. A fixed 256 with room for one burst ran out now and then.)
    """
    env = {
        "AUDIT_HTTP_MAX_CONNECTIONS": "50",
        "AUDIT_HTTP_HEADER_TIMEOUT_S": "600",  # only the cap closes them here
        "AUDIT_HTTP_KEEPALIVE_TIMEOUT_S": "600",
    }
    async with serving(server_url, migrated_template, tmp_path / "serve.log", env) as service:
        assert service.proc is not None
        await service.wait_ready()
        own = len(os.listdir(f"/proc/{service.pid}/fd"))
        limit = own + 50 + 2 * 128 + 32
        assert limit < 500, f"the process holds {own} files: too many for this test's point"
        resource.prlimit(service.pid, resource.RLIMIT_NOFILE, (limit, limit))
        before = len(service.log_lines())
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for i in range(600):
                reader, writer = await within(connect(service.port), 30, f"connection {i}")
                await send(writer, b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
                held.append((reader, writer))
            answer = await exchange(service.port, LIVE)
            assert answer.status == 200, answer
            # The oldest partial requests were closed to make room, one per newcomer.
            await service.wait_log(MADE_ROOM, 30, count=550, after=before)

            async def closed() -> int:
                return sum(1 for r, _ in held if r.at_eof() or r.exception() is not None)

            await eventually(closed, lambda n: n >= 550, 30, "550 partial requests closed")
        finally:
            for _, writer in held:
                writer.close()
        assert service.proc.poll() is None
        assert "out of system resource" not in service.log_text()
