"""The course-audit image: who it runs as, its command line, its bytecode, and the service in it
ingesting from Kafka into PostgreSQL and answering the API (both from the local images, on a
Docker network of this session's own)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from docker_cli import LABEL, docker, docker_ok

import waits

pytestmark = [pytest.mark.containers, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
_DECLARED = re.search(
    r'^__version__ = "([^"]+)"$', (ROOT / "service/course_audit/__init__.py").read_text(), re.M
)
assert _DECLARED is not None
VERSION = _DECLARED.group(1)
DB_PASSWORD = "container-test-secret"
T = TypeVar("T")


def poll(probe: Callable[[], T | None], seconds: float, what: str, interval: float = 0.25) -> T:
    """Call `probe` until it returns something other than None, within `seconds`."""
    deadline = waits.Deadline(seconds, what)
    last: object = None
    while True:
        try:
            found = probe()
        except (OSError, urllib.error.URLError) as exc:  # not up yet
            found, last = None, exc
        if found is not None:
            return found
        if deadline.passed():
            raise deadline.failure(f"last: {last!r}" if last is not None else "")
        time.sleep(min(interval, deadline.left()))


def run_in_image(image: str, *args: str, network: str, stdin: str | None = None) -> str:
    """A one-off `docker run --rm` of the course-audit image; its standard output."""
    return docker_ok(
        "run", "--rm", "-i", "--network", network, "--label", f"{LABEL}=one-off",
        "-e", f"AUDIT_DATABASE_URL=postgresql://audit:{DB_PASSWORD}@postgres:5432/course_audit",
        "-e", "AUDIT_KAFKA_BOOTSTRAP_SERVERS=kafka:9092", "-e", "AUDIT_LOG_FORMAT=text",
        image, *args, stdin=stdin,
    )  # fmt: skip


# ---------------------------------------------------------------- the image alone


def test_the_image_runs_as_uid_10001(images: dict[str, str]) -> None:
    image = images["service"]
    assert docker_ok("image", "inspect", "-f", "{{.Config.User}}", image).strip() == "10001:10001"
    ids = docker_ok("run", "--rm", "--entrypoint", "python", image, "-c",
                    "import os; print(os.getuid(), os.getgid(), os.getgroups())")  # fmt: skip
    assert ids.split(None, 2)[:2] == ["10001", "10001"]


def test_help_and_version(images: dict[str, str]) -> None:
    image = images["service"]
    helped = docker_ok("run", "--rm", "--read-only", image, "--help")
    assert helped.startswith("usage: course-audit")
    for command in ("run", "consume", "serve", "migrate", "produce", "token", "dlq"):
        assert re.search(rf"^\s+{command}\s", helped, re.M), command
    assert docker_ok("run", "--rm", image, "--version").strip() == f"course-audit {VERSION}"
    assert image == f"course-audit:{VERSION}"


def test_everything_in_the_virtualenv_is_compiled_ahead(images: dict[str, str]) -> None:
    # The runtime user cannot write bytecode (and the root file system may be read-only):
    # every module must have its .pyc from the build.
    script = (
        "import importlib.util, json, pathlib\n"
        "py = list(pathlib.Path('/opt/venv/lib').rglob('*.py'))\n"
        "missing = [str(p) for p in py\n"
        "           if not pathlib.Path(importlib.util.cache_from_source(str(p))).exists()]\n"
        "print(json.dumps({'modules': len(py), 'missing': missing[:20]}))\n"
    )
    found = json.loads(
        docker_ok(
            "run", "--rm", "--read-only", "--entrypoint", "python", images["service"], "-c", script
        )
    )
    assert found["modules"] > 200  # course_audit and its dependencies: about 330
    assert found["missing"] == []


def test_the_image_holds_the_wheel_not_a_checkout(images: dict[str, str]) -> None:
    script = (
        "import course_audit, json\n"
        "from course_audit.wire.schemas import BUILTIN_SCHEMA_DIR\n"
        "print(json.dumps([course_audit.__file__, str(BUILTIN_SCHEMA_DIR),\n"
        "                  sorted(p.name for p in BUILTIN_SCHEMA_DIR.glob('*.avsc'))]))\n"
    )
    package, schema_dir, schemas = json.loads(
        docker_ok("run", "--rm", "--entrypoint", "python", images["service"], "-c", script)
    )
    assert package.startswith("/opt/venv/lib/python3.11/site-packages/course_audit/")
    assert schema_dir == "/opt/venv/lib/python3.11/site-packages/course_audit/schemas"
    expected = sorted(p.name for p in (ROOT / "service/course_audit/schemas").glob("*.avsc"))
    assert schemas == expected
    listing = docker("run", "--rm", "--entrypoint", "ls", images["service"], "/app", "/src")
    assert listing.returncode != 0  # no source tree, no build context left in the image


# ---------------------------------------------------------------- the service, running


@dataclass
class Stack:
    network: str
    image: str
    service: str  # container id
    base_url: str


@pytest.fixture(scope="module")
def stack(images: dict[str, str], session_id: str) -> Iterator[Stack]:
    """PostgreSQL, Kafka (topic course-events, 3 partitions) and `course-audit run`, from the
    local images, on a network of their own; only the API port is published (Docker picks it
    on 127.0.0.1). Everything is removed at the end of the session (see conftest)."""
    label = f"{LABEL}={session_id}"
    network = f"course-audit-ct-{session_id}"
    docker_ok("network", "create", "--label", label, network)
    docker_ok(
        "run", "-d", "--label", label, "--network", network, "--network-alias", "postgres",
        "-e", "POSTGRES_USER=audit", "-e", f"POSTGRES_PASSWORD={DB_PASSWORD}",
        "-e", "POSTGRES_DB=course_audit", images["postgres"],
    )  # fmt: skip
    kafka = docker_ok(
        "run", "-d", "--label", label, "--network", network, "--network-alias", "kafka",
        "-e", "KAFKA_NODE_ID=1", "-e", "KAFKA_PROCESS_ROLES=broker,controller",
        "-e", "KAFKA_LISTENERS=PLAINTEXT://:9092,CONTROLLER://:9093",
        "-e", "KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://kafka:9092",
        "-e", "KAFKA_CONTROLLER_LISTENER_NAMES=CONTROLLER",
        "-e", "KAFKA_CONTROLLER_QUORUM_VOTERS=1@localhost:9093",
        "-e", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR=1",
        "-e", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR=1",
        "-e", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR=1",
        "-e", "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS=0", images["kafka"],
    ).strip()  # fmt: skip

    def kafka_answers() -> bool | None:
        done = docker("exec", kafka, "kafka-broker-api-versions.sh",
                      "--bootstrap-server", "kafka:9092", timeout=60)  # fmt: skip
        return True if done.returncode == 0 and "ApiVersions" in done.stdout else None

    poll(kafka_answers, 90, "the Kafka container to answer kafka-broker-api-versions.sh", 0.5)
    docker_ok("exec", kafka, "kafka-topics.sh", "--bootstrap-server", "kafka:9092", "--create",
              "--topic", "course-events", "--partitions", "3")  # fmt: skip
    service = docker_ok(
        "run", "-d", "--label", label, "--network", network, "--read-only",
        "-p", "127.0.0.1::8080",
        "-e", f"AUDIT_DATABASE_URL=postgresql://audit:{DB_PASSWORD}@postgres:5432/course_audit",
        "-e", "AUDIT_KAFKA_BOOTSTRAP_SERVERS=kafka:9092", images["service"],
    ).strip()  # fmt: skip
    published = docker_ok("port", service, "8080/tcp").split()[0]  # 127.0.0.1:NNNNN
    yield Stack(network, images["service"], service, f"http://{published}")


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_the_service_is_live_and_ready(stack: Stack) -> None:
    def answer(path: str) -> int | None:
        status, _ = get(stack.base_url + path)
        return status if status == 200 else None

    # Ready needs the database reached and migrated, and the consumer in its group.
    assert poll(lambda: answer("/health/live"), 60, "/health/live to answer 200") == 200
    assert poll(lambda: answer("/health/ready"), 120, "/health/ready to answer 200") == 200
    status = docker_ok("exec", stack.service, "cat", "/proc/1/status")
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
    assert uids is not None and uids.group(1).split() == ["10001"] * 4
    command = docker_ok("exec", stack.service, "cat", "/proc/1/cmdline").split("\0")
    assert command[1:3] == ["/opt/venv/bin/course-audit", "run"]  # PID 1, no shell between


def test_events_produced_through_kafka_are_served_by_the_api(stack: Stack) -> None:
    poll(
        lambda: True if get(stack.base_url + "/health/ready")[0] == 200 else None,
        120,
        "/health/ready to answer 200",
    )
    token = run_in_image(
        stack.image, "token", "create", "--name", "containers", "--root-account", "1",
        network=stack.network,
    ).strip()  # fmt: skip
    assert re.fullmatch(r"\S{20,}", token), token
    course = 700_000 + uuid.uuid4().int % 100_000
    at = datetime.now(UTC) - timedelta(hours=1)
    # A created event, then two updates of the course's name.
    names = [f"Container course {i}" for i in range(3)]
    sent = [
        {
            "event_type": "created" if i == 0 else "updated",
            "event_id": str(uuid.uuid4()),
            "created_at": (at + timedelta(minutes=i)).isoformat(),
            "event_source": "api",
            "course": {"id": course, "account_id": 10, "root_account_id": 1, "name": names[i]},
            "user": {"id": 77, "name": "Ada Lovelace"},
            "changes": {"name": [names[i - 1] if i else None, names[i]]},
        }
        for i in range(3)
    ]
    run_in_image(
        stack.image, "produce", network=stack.network,
        stdin="".join(json.dumps(event) + "\n" for event in sent),
    )  # fmt: skip
    url = f"{stack.base_url}/api/v1/audit/course/courses/{course}?per_page=50"

    def stored() -> list[dict[str, Any]] | None:
        status, body = get(url, token)
        assert status == 200, status
        events: list[dict[str, Any]] = body["events"]
        return events if len(events) >= len(sent) else None

    events = poll(stored, 90, f"the {len(sent)} events of course {course} in the API")
    assert sorted((e["id"], e["event_type"]) for e in events) == sorted(
        (e["event_id"], e["event_type"]) for e in sent
    )


def test_the_healthcheck_reports_healthy(stack: Stack) -> None:
    def health() -> str | None:
        status = docker_ok("inspect", "-f", "{{.State.Health.Status}}", stack.service).strip()
        return status if status != "starting" else None

    # The first check runs one interval (15 s) after the start.
    assert poll(health, 60, "Docker's health status of the service container", 1.0) == "healthy"
