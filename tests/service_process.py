"""Run `course-audit` as its own process in end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "course-audit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """One `course-audit <command>` process with its own HTTP port and log file."""

    def __init__(self, command: str, env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.port = free_port()
        self.env = {
            **os.environ,
            "AUDIT_HTTP_HOST": "127.0.0.1",
            "AUDIT_LOG_FORMAT": "json",
            "AUDIT_KAFKA_SESSION_TIMEOUT_MS": "6000",
            **env,
            "AUDIT_HTTP_PORT": str(self.port),
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [str(CLI), *self.command.split()],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def health(self) -> tuple[int, dict[str, Any]] | None:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{self.base_url}/health/ready", timeout=aiohttp.ClientTimeout(2)) as r,
            ):
                return r.status, await r.json()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_ready(self, timeout: float = 60) -> None:
        await self.wait_health(lambda h: h is not None and h[0] == 200, timeout, "ready")

    async def wait_health(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited ({self.proc.returncode}):\n{self.log_text()}")
            if predicate(await self.health()):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"service not {what} within {timeout}s:\n{self.log_text()[-4000:]}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            if self._log is not None and self.proc.returncode is not None:
                self._log.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit; for fixture teardown."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
