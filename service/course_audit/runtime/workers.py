"""`serve` with AUDIT_API_WORKERS > 1: several API processes on one port (SO_REUSEPORT).

The supervisor (the process started as `course-audit serve`) resolves the port first: it binds
a socket with SO_REUSEPORT to AUDIT_HTTP_HOST:AUDIT_HTTP_PORT (the system picks the port when
that is 0) and keeps it bound, not listening, so the port stays reserved for its workers. It
then forks the workers before any event loop or thread exists; each runs the ordinary `serve`
roles and listens on that port with SO_REUSEPORT, and the kernel spreads new connections
across the listening workers. Every worker logs its own `http listening` line (same port,
its `worker` number and `pid`) and answers with an `X-Audit-Worker` header naming its number.

SIGTERM or SIGINT to the supervisor is passed on to every worker; it exits once they all
have. A worker that exits on its own stops the others too (the supervisor then exits 1, and
whatever runs it starts it again), and a worker whose supervisor dies gets SIGTERM from the
kernel (PR_SET_PDEATHSIG), so no worker outlives it.

Each worker has its own pool, caches and metrics: `/metrics` and `/health/*` answer for the
worker the connection reached (docs/operations.md#api-workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys

from course_audit.config import Settings

log = logging.getLogger(__name__)

#: The response header naming the worker that answered (only with AUDIT_API_WORKERS > 1).
WORKER_HEADER = "X-Audit-Worker"
_PR_SET_PDEATHSIG = 1


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT to host:port (not listening): the port the workers
    will share, chosen by the system when `port` is 0."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _worker(settings: Settings, number: int, parent: int) -> int:
    from course_audit.runtime.runner import run_roles

    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the request took effect
        return 1
    try:
        return asyncio.run(run_roles(settings, consume=False, serve_api=True, worker=number))
    except KeyboardInterrupt:
        return 130
    except Exception:
        log.exception("api worker failed", extra={"worker": number})
        return 1


def serve_workers(settings: Settings) -> int:
    """Run AUDIT_API_WORKERS `serve` processes on one port until SIGTERM/SIGINT."""
    reserved = reserve_port(settings.http_host, settings.http_port)
    port = reserved.getsockname()[1]
    shared = dataclasses.replace(settings, http_port=port)
    me = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    workers: dict[int, int] = {}
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    # Before the first fork: a signal during start-up reaches the workers started so far.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for number in range(1, settings.api_workers + 1):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                reserved.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = _worker(shared, number, me)
            finally:
                logging.shutdown()
                os._exit(code)
        workers[pid] = number
    log.info(
        "api workers started",
        extra={"workers": settings.api_workers, "port": port, "pids": sorted(workers)},
    )
    failed = False
    try:
        while workers:
            pid, status = os.waitpid(-1, 0)
            if pid not in workers:
                continue
            number = workers.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                failed = failed or code != 0
                continue
            log.error(
                "api worker exited; stopping the others",
                extra={"worker": number, "pid": pid, "exit_status": code},
            )
            failed = True
            stop(signal.SIGTERM, None)
    finally:
        reserved.close()
    log.info("api workers stopped")
    return 1 if failed else 0
