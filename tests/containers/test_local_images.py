"""course-audit-postgres and course-audit-kafka behave like the official images for what the
tests and the compose file use: environment variables, first-start initialisation, the tools,
non-root processes."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest
from docker_cli import LABEL, docker, docker_ok

import waits

pytestmark = [pytest.mark.containers, pytest.mark.timeout(300)]
T = TypeVar("T")


def poll(probe: Callable[[], T | None], seconds: float, what: str, interval: float = 0.25) -> T:
    deadline = waits.Deadline(seconds, what)
    while True:
        found = probe()
        if found is not None:
            return found
        if deadline.passed():
            raise deadline.failure()
        time.sleep(min(interval, deadline.left()))


def pid1_uids(container: str) -> list[str]:
    status = docker_ok("exec", container, "cat", "/proc/1/status")
    found = re.search(r"^Uid:\s+(.*)$", status, re.M)
    assert found is not None
    return found.group(1).split()


# ---------------------------------------------------------------- PostgreSQL


def test_postgres_works_with_testcontainers(
    images: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.core.config import testcontainers_config

    # The reaper is an image from a registry; the container is stopped here instead.
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)
    with PostgresContainer(images["postgres"], driver=None) as pg:
        url = pg.get_connection_url()
        container = pg.get_wrapped_container().id

        async def check() -> tuple[str, str, int]:
            conn = await asyncpg.connect(url)
            try:
                row = await conn.fetchrow(
                    "SELECT current_user, current_database(),"
                    " current_setting('server_version_num')::int AS version"
                )
                assert row is not None
                return row[0], row[1], row[2]
            finally:
                await conn.close()

        user, database, version = asyncio.run(check())
        assert (user, database) == (pg.username, pg.dbname)
        assert version // 10000 == 15
        wrong = url.replace(f":{pg.password}@", ":not-the-password@")
        with pytest.raises(asyncpg.InvalidPasswordError):
            asyncio.run(asyncpg.connect(wrong))
        # PID 1 is postgres itself, as the postgres user; pg_isready is on PATH.
        postgres_uid = docker_ok("exec", container, "id", "-u", "postgres").strip()
        assert pid1_uids(container) == [postgres_uid] * 4 and postgres_uid != "0"
        assert docker_ok("exec", container, "cat", "/proc/1/comm").strip() == "postgres"
        ready = docker("exec", container, "pg_isready", "-h", "127.0.0.1")
        assert ready.returncode == 0, ready.stdout + ready.stderr


def test_postgres_runs_the_init_scripts_once(
    images: dict[str, str], session_id: str, tmp_path: Path
) -> None:
    scripts = tmp_path / "initdb"
    scripts.mkdir()
    (scripts / "01-table.sql").write_text("CREATE TABLE marker (note text);\n")
    (scripts / "02-row.sh").write_text(
        'psql -v ON_ERROR_STOP=1 --dbname "$POSTGRES_DB" -c "INSERT INTO marker VALUES (\'sh\')"\n'
    )
    scripts.chmod(0o755)
    for path in scripts.iterdir():
        path.chmod(0o644)
    container = docker_ok(
        "run", "-d", "--label", f"{LABEL}={session_id}",
        "-v", f"{scripts}:/docker-entrypoint-initdb.d:ro",
        "-e", "POSTGRES_PASSWORD=pw", "-e", "POSTGRES_DB=initdb_test", images["postgres"],
    ).strip()  # fmt: skip

    def rows() -> str | None:
        done = docker("exec", "-e", "PGPASSWORD=pw", container, "psql", "-h", "127.0.0.1",
                      "-U", "postgres", "-tA", "-d", "initdb_test",
                      "-c", "SELECT note FROM marker")  # fmt: skip
        return done.stdout.strip() if done.returncode == 0 else None

    # Over TCP only once the real server runs (the initialising one listens on no address).
    env_rows = poll(rows, 60, "the initialised database over TCP")
    assert env_rows == "sh"
    docker_ok("restart", container)
    assert poll(rows, 60, "the restarted database") == "sh"  # the scripts did not run again
    logs = docker("logs", container)
    assert (logs.stdout + logs.stderr).count(
        "running /docker-entrypoint-initdb.d/01-table.sql"
    ) == 1


def test_postgres_without_a_password_says_so(images: dict[str, str], session_id: str) -> None:
    done = docker("run", "--rm", "--label", f"{LABEL}={session_id}", images["postgres"])
    assert done.returncode == 1
    assert "POSTGRES_PASSWORD is not set" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- Kafka


def test_kafka_settings_from_the_environment_and_the_tools(
    images: dict[str, str], session_id: str
) -> None:
    container = docker_ok(
        "run", "-d", "--label", f"{LABEL}={session_id}",
        "-e", "KAFKA_NODE_ID=1", "-e", "KAFKA_PROCESS_ROLES=broker,controller",
        "-e", "KAFKA_LISTENERS=PLAINTEXT://:9092,CONTROLLER://:9093",
        "-e", "KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://localhost:9092",
        "-e", "KAFKA_CONTROLLER_LISTENER_NAMES=CONTROLLER",
        "-e", "KAFKA_CONTROLLER_QUORUM_VOTERS=1@localhost:9093",
        "-e", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR=1",
        "-e", "KAFKA_NUM_PARTITIONS=4",
        "-e", "KAFKA_HEAP_OPTS=-Xms128m -Xmx512m",
        "-e", "CLUSTER_ID=Ab3dEfGhIjKlMnOpQrStUv",
        images["kafka"],
    ).strip()  # fmt: skip
    props = docker_ok("exec", container, "cat", "/opt/kafka/config/server.properties")
    settings = dict(
        line.split("=", 1) for line in props.splitlines() if line and not line.startswith("#")
    )
    assert settings["advertised.listeners"] == "PLAINTEXT://localhost:9092"
    assert settings["controller.quorum.voters"] == "1@localhost:9093"
    assert settings["num.partitions"] == "4"
    assert settings["log.dirs"] == "/var/lib/kafka/data"
    assert not [key for key in settings if "heap" in key or "cluster" in key]

    def api_versions() -> str | None:
        done = docker("exec", container, "/opt/kafka/bin/kafka-broker-api-versions.sh",
                      "--bootstrap-server", "localhost:9092", timeout=60)  # fmt: skip
        return done.stdout if done.returncode == 0 else None

    assert "ApiVersions(18)" in poll(api_versions, 90, "the broker's API versions", 0.5)
    docker_ok("exec", container, "/opt/kafka/bin/kafka-topics.sh", "--bootstrap-server",
              "localhost:9092", "--create", "--topic", "t1")  # fmt: skip
    described = docker_ok("exec", container, "/opt/kafka/bin/kafka-topics.sh",
                          "--bootstrap-server", "localhost:9092",
                          "--describe", "--topic", "t1")  # fmt: skip
    assert "PartitionCount: 4" in described  # num.partitions from KAFKA_NUM_PARTITIONS
    meta = docker_ok("exec", container, "cat", "/var/lib/kafka/data/meta.properties")
    assert "cluster.id=Ab3dEfGhIjKlMnOpQrStUv" in meta
    assert pid1_uids(container) == ["1000"] * 4  # the kafka user, not root
    cmdline = docker_ok("exec", container, "cat", "/proc/1/cmdline").split("\0")
    assert cmdline[0] == "java" and "kafka.Kafka" in cmdline and "-Xmx512m" in cmdline

    # A restart keeps the data: formatted on the first start only, the topic still there.
    docker_ok("restart", container)
    poll(api_versions, 90, "the restarted broker's API versions", 0.5)
    listed = docker_ok("exec", container, "/opt/kafka/bin/kafka-topics.sh",
                       "--bootstrap-server", "localhost:9092", "--list")  # fmt: skip
    assert "t1" in listed.split()
    logs = docker("logs", container)
    assert (logs.stdout + logs.stderr).count("course-audit-kafka: formatting") == 1
