"""deploy/compose.yaml comes up for real: Kafka, PostgreSQL, migrations, consumer and API.

Demo events go in through Kafka with `course-audit produce` in a one-off container of the
project's image; the API, on the port compose publishes on 127.0.0.1, returns them; `down -v`
leaves no container, volume or network of the project behind. The images are those of the
container layer (tests/container_images.py): official ones when present, else local builds.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import waits
from container_images import service_images
from course_audit.produce.sample import World, sample_stream

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
COURSE = 1000  # World.build's first course, in account 100 under root account 1

pytestmark = pytest.mark.timeout(600)


def _compose_command() -> list[str]:
    given = os.environ.get("AUDIT_TEST_COMPOSE", "").strip()
    assert given, "AUDIT_TEST_COMPOSE names the Compose v2 command (make test-containers sets it)"
    return shlex.split(given)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Project:
    """One compose project with a name of its own and its own host ports."""

    def __init__(self) -> None:
        images = service_images()
        self.name = f"course-audit-smoke-{uuid.uuid4().hex[:8]}"
        self.api_port = _free_port()
        self.env = {
            **os.environ,
            "AUDIT_IMAGE": images.service,
            "AUDIT_KAFKA_IMAGE": images.kafka,
            "AUDIT_POSTGRES_IMAGE": images.postgres,
            "AUDIT_API_HOST_PORT": str(self.api_port),
            "AUDIT_KAFKA_HOST_PORT": str(_free_port()),
        }
        self.base = [*_compose_command(), "-p", self.name, "-f", str(COMPOSE_FILE)]

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.base, *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"compose {' '.join(args)}: {done.returncode}\n{done.stderr}"
        return done

    def logs(self) -> str:
        done = subprocess.run(
            [*self.base, "logs", "--no-color", "--tail", "60"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout[-8000:]

    def leftovers(self) -> dict[str, list[str]]:
        """The project's containers, volumes and networks that still exist."""
        label = f"label=com.docker.compose.project={self.name}"
        found = {}
        for kind, listing in {
            "containers": ["docker", "ps", "-a", "-q", "--filter", label],
            "volumes": ["docker", "volume", "ls", "-q", "--filter", label],
            "networks": ["docker", "network", "ls", "-q", "--filter", label],
        }.items():
            out = subprocess.run(listing, capture_output=True, text=True, check=True).stdout
            found[kind] = out.split()
        return found


@pytest.fixture
def project() -> Iterator[Project]:
    p = Project()
    try:
        yield p
    finally:
        subprocess.run(
            [*p.base, "down", "--volumes", "--remove-orphans", "--timeout", "30"],
            env=p.env,
            capture_output=True,
            timeout=300,
            check=False,
        )


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def _events() -> list[dict[str, object]]:
    """Realistic demo events: the input the API must give back (course 1000's share of them)."""
    world = World.build(seed=7, courses=3, accounts=2, roots=2, users=4)
    start = datetime.now(UTC) - timedelta(hours=2)
    return list(sample_stream(world, 60, start=start, spacing_ms=20_000))


def test_compose_up_ingests_serves_and_down_leaves_nothing(project: Project) -> None:
    project.run("config", "--quiet")
    project.run("up", "--detach", "--no-build", "--pull", "never", timeout=420)
    base = f"http://127.0.0.1:{project.api_port}"

    deadline = waits.Deadline(240, "the compose API to be ready (GET /health/ready = 200)")
    while _get(f"{base}/health/ready")[0] != 200:
        if deadline.passed():
            raise deadline.failure(project.logs())
        time.sleep(min(0.5, deadline.left()))

    token = project.run(
        "run", "--rm", "-T", "migrate", "token", "create", "--name", "smoke", "--root-account", "1"
    ).stdout.strip()
    assert token, "token create printed no token"

    events = _events()
    lines = "".join(json.dumps(e) + "\n" for e in events)
    project.run("run", "--rm", "-T", "migrate", "produce", stdin=lines)
    expected = sorted(str(e["event_id"]) for e in events if e["course"]["id"] == COURSE)  # type: ignore[index]
    assert len(expected) >= 10, "the sample should give course 1000 a good share of the events"

    url = f"{base}/api/v1/audit/course/courses/{COURSE}?per_page=100"
    deadline = waits.Deadline(120, f"the API to return course {COURSE}'s {len(expected)} events")
    while True:
        status, body = _get(url, token)
        got = sorted(e["id"] for e in json.loads(body)["events"]) if status == 200 else []
        if got == expected:
            break
        if deadline.passed():
            raise deadline.failure(f"last: {status} with {len(got)} events\n{project.logs()}")
        time.sleep(min(0.5, deadline.left()))

    assert _get(url)[0] == 401  # and without the token, nothing

    project.run("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout=300)
    assert project.leftovers() == {"containers": [], "volumes": [], "networks": []}
