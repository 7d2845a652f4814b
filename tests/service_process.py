"""Run `course-audit` as its own process in end-to-end tests.

The process binds its HTTP port itself (AUDIT_HTTP_PORT=0) and logs the port it got in its
"http listening" line; the test reads it from there. Nothing here waits a fixed time: every
wait polls for the log line or health state it is about, with a deadline (see waits.py).

In the container layer (AUDIT_TEST_SERVICES=containers, `make test-containers`) the same
process is the project's image, run with `docker run` on the host's network: the test reaches
it on the port it logs, signals go to the container (`docker kill --signal`), files named in
its settings are mounted read-only at the same paths, and it runs with the test's uid so that
it can read them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import aiohttp

from waits import Deadline

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "course-audit"
LISTENING = "http listening"
CONTAINER_LABEL = "course-audit.test"

Health = tuple[int, dict[str, Any]] | None


def service_env(
    db_url: str, bootstrap: str, topic: str, group_id: str, **more: str
) -> dict[str, str]:
    """The settings of a consuming process for one test's database, topic and group."""
    return {
        "AUDIT_DATABASE_URL": db_url,
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "AUDIT_KAFKA_TOPICS": topic,
        "AUDIT_KAFKA_GROUP_ID": group_id,
        **more,
    }


class ServiceProcess:
    """One `course-audit <command>` process with its own HTTP port and log file."""

    def __init__(self, command: str, env: dict[str, str], log_path: Path) -> None:
        self.command = command
        level = env.get("AUDIT_LOG_LEVEL", "INFO").upper()
        # The port is learnt from an INFO line; a quieter process would never say it.
        assert level in ("DEBUG", "INFO"), f"AUDIT_LOG_LEVEL={level} would hide the port"
        self.env = {
            **os.environ,
            "AUDIT_HTTP_HOST": "127.0.0.1",
            "AUDIT_LOG_FORMAT": "json",
            "AUDIT_KAFKA_SESSION_TIMEOUT_MS": "6000",
            **env,
            "AUDIT_HTTP_PORT": "0",
        }
        self.given = set(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0
        self._port: int | None = None
        self.container: str | None = None

    @property
    def port(self) -> int:
        assert self._port is not None, "the port is known once `listening()` has returned"
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        # Only what this process writes counts (a log file may be shared across restarts).
        self._log_start = self._log.tell()
        image = container_image()
        argv, env = (
            ([str(CLI), *self.command.split()], self.env)
            if image is None
            else self._docker_run(image)
        )
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def _docker_run(self, image: str) -> tuple[list[str], dict[str, str]]:
        """`docker run` of the image with this process's settings (values passed by name)."""
        self.container = f"course-audit-test-{uuid.uuid4().hex[:12]}"
        # The service's settings, and whatever else the test set for it (AIOHTTP_NO_EXTENSIONS).
        settings = {
            k: v
            for k, v in self.env.items()
            if (k.startswith("AUDIT_") or k in self.given) and not k.startswith("AUDIT_TEST_")
        }
        argv = ["docker", "run", "--rm", "--name", self.container, "--label", CONTAINER_LABEL]
        argv += ["--network", "host", "--user", f"{os.getuid()}:{os.getgid()}"]
        for path in mounted_paths(settings.values()):
            argv += ["--volume", f"{path}:{path}:ro"]
        for name in sorted(settings):
            argv += ["--env", name]  # the value comes from the docker client's environment
        return [*argv, image, *self.command.split()], {**os.environ, **settings}

    @property
    def pid(self) -> int:
        """The service's process id on this host (inside a container: its PID 1, seen from here)."""
        assert self.proc is not None
        if self.container is None:
            return self.proc.pid
        out = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.Pid}}", self.container],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip())

    # ------------------------------------------------------------------ the log

    def log_text(self) -> str:
        """Everything this process has written to its log so far."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def log_lines(self) -> list[str]:
        """The complete lines of `log_text()` (a line still being written is left out)."""
        return self.log_text().split("\n")[:-1]

    def _exited(self) -> int | None:
        assert self.proc is not None, "start() the process first"
        return self.proc.poll()

    async def wait_log(
        self, text: str, timeout: float, *, count: int = 1, after: int = 0
    ) -> list[str]:
        """Poll the log until `count` lines after the first `after` lines contain `text`."""
        deadline = Deadline(timeout, f"{count} log line(s) with {text!r} from `{self.command}`")
        while True:
            exited = self._exited()  # before reading: a line written before exit is seen
            found = [line for line in self.log_lines()[after:] if text in line]
            if len(found) >= count:
                return found
            if exited is not None:
                raise AssertionError(
                    f"`{self.command}` exited ({exited}) before logging {text!r}:\n"
                    f"{self.log_text()[-4000:]}"
                )
            if deadline.passed():
                raise deadline.failure(f"found {len(found)}; log:\n{self.log_text()[-4000:]}")
            await asyncio.sleep(min(0.05, deadline.left()))

    async def listening(self, timeout: float = 30) -> int:
        """The port from the process's "http listening" line, once it has logged it."""
        if self._port is None:
            marker = f'"msg":"{LISTENING}"'
            line = (await self.wait_log(marker, timeout))[0]
            self._port = int(json.loads(line)["port"])
            assert self._port > 0, line
        return self._port

    # ------------------------------------------------------------------ health

    async def health(self) -> Health:
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

    async def wait_health(
        self, predicate: Callable[[Health], bool], timeout: float, what: str
    ) -> Health:
        """Poll /health/ready until `predicate` accepts the answer (None: no answer); return it."""
        deadline = Deadline(timeout, f"`{self.command}` to be {what} (GET /health/ready)")
        await self.listening(deadline.left())
        while True:
            exited = self._exited()
            if exited is not None:
                raise AssertionError(f"`{self.command}` exited ({exited}):\n{self.log_text()}")
            answer = await self.health()
            if predicate(answer):
                return answer
            if deadline.passed():
                raise deadline.failure(f"last answer: {answer!r}\n{self.log_text()[-4000:]}")
            await asyncio.sleep(min(0.2, deadline.left()))

    # ------------------------------------------------------------------ stopping

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.container is None:
            self.proc.send_signal(sig)
        elif self.proc.poll() is None:
            subprocess.run(
                ["docker", "kill", "--signal", str(int(sig)), self.container],
                capture_output=True,
                check=False,
            )

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float = 60) -> int:
        """Wait for the process to exit; fail naming it if it does not in time."""
        assert self.proc is not None
        deadline = Deadline(timeout, f"`{self.command}` to exit")
        try:
            return self.proc.wait(deadline.left())
        except subprocess.TimeoutExpired:
            raise deadline.failure(self.log_text()[-4000:]) from None
        finally:
            if self._log is not None and self.proc.returncode is not None:
                self._log.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit; for fixture teardown."""
        if self.proc is None or self.proc.poll() is not None:
            if self._log is not None:
                self._log.close()
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(10)
        finally:
            if self._log is not None and self.proc.returncode is not None:
                self._log.close()
            if self.container is not None:
                subprocess.run(["docker", "rm", "--force", self.container], capture_output=True)


def container_image() -> str | None:
    """The service's image when this session runs the container layer, else None."""
    if os.environ.get("AUDIT_TEST_SERVICES", "").strip() != "containers":
        return None
    import container_images

    return container_images.service_images().service


def mounted_paths(values: Iterable[str]) -> list[str]:
    """Existing absolute paths named in settings (comma-separated lists included)."""
    found = {
        part.strip()
        for value in values
        for part in value.split(",")
        if part.strip().startswith("/") and Path(part.strip()).exists()
    }
    return sorted(found)
