"""Test harness: where the real Kafka and PostgreSQL for a test session come from.

Order (README.md#services-for-the-tests): AUDIT_TEST_* environment variables, then
testcontainers when a Docker engine answers, then local processes started by
deploy/local/services.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    database_url: str
    origin: str  # "env", "testcontainers" or "local"


def load_local_services() -> ModuleType:
    """Import deploy/local/services.py (a script, not part of the package)."""
    path = ROOT / "deploy" / "local" / "services.py"
    spec = importlib.util.spec_from_file_location("local_services", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def docker_answers() -> bool:
    """True when a Docker engine responds (not merely when the client is installed)."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


def choose_origin(env: Mapping[str, str], docker_ok: Callable[[], bool]) -> str:
    """Which source of services to use; the environment always wins."""
    if env.get("AUDIT_TEST_KAFKA_BOOTSTRAP") and env.get("AUDIT_TEST_DATABASE_URL"):
        return "env"
    if docker_ok():
        return "testcontainers"
    return "local"


@contextlib.contextmanager
def provide_services(env: Mapping[str, str] | None = None) -> Iterator[Endpoints]:
    """Yield the endpoints for this session; tear down whatever was started here."""
    env = os.environ if env is None else env
    origin = choose_origin(env, docker_answers)
    if origin == "env":
        yield Endpoints(env["AUDIT_TEST_KAFKA_BOOTSTRAP"], env["AUDIT_TEST_DATABASE_URL"], "env")
    elif origin == "testcontainers":
        with _containers() as endpoints:
            yield endpoints
    else:
        services = load_local_services()
        state = Path(tempfile.mkdtemp(prefix="course-audit-test-"))
        try:
            found = services.up(state, None)
            yield Endpoints(
                found["AUDIT_KAFKA_BOOTSTRAP_SERVERS"], found["AUDIT_DATABASE_URL"], "local"
            )
        finally:
            services.down(state)
            with contextlib.suppress(OSError):
                import shutil

                shutil.rmtree(state)


@contextlib.contextmanager
def _containers() -> Iterator[Endpoints]:
    """Apache Kafka (official image, KRaft combined mode) and PostgreSQL in containers."""
    from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

    with PostgresContainer("postgres:16", driver=None) as pg, _kafka_container() as bootstrap:
        yield Endpoints(bootstrap, pg.get_connection_url(), "testcontainers")


@contextlib.contextmanager
def _kafka_container() -> Iterator[str]:
    """A Kafka container on a host port picked here (the broker must advertise it).

    The port is free when picked but may be taken before Docker binds it: then the container
    is started again on another port, as deploy/local/services.py does for local servers.
    """
    import time

    from testcontainers.core.container import DockerContainer  # type: ignore[import-untyped]

    services = load_local_services()
    for attempt in range(1, services.PORT_ATTEMPTS + 1):
        port = services.free_port()
        kafka = (
            DockerContainer("apache/kafka:4.1.1")
            .with_bind_ports(9092, port)
            .with_env("KAFKA_NODE_ID", "1")
            .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
            .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
            .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
            .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
            .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        )
        try:
            kafka.start()
        except Exception as exc:
            # Docker: "port is already allocated" / "address already in use".
            with contextlib.suppress(Exception):
                kafka.stop()
            if "already allocated" not in str(exc) and "already in use" not in str(exc):
                raise
            services.log(f"Kafka container: port {port} taken (attempt {attempt}); another")
            continue
        try:
            deadline = time.monotonic() + 120
            while not services.kafka_metadata_ok(port):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the Kafka container did not answer metadata requests on port {port}"
                        " within 120 s"
                    )
                time.sleep(0.5)
            yield f"127.0.0.1:{port}"
        finally:
            kafka.stop()
        return
    raise RuntimeError(f"Kafka container: a port was taken on {services.PORT_ATTEMPTS} attempts")
