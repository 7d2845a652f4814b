"""Test harness: where the real Kafka and PostgreSQL for a test session come from.

Order (README.md#services-for-the-tests): AUDIT_TEST_* environment variables, then
testcontainers when AUDIT_TEST_SERVICES=containers (`make test-containers`), otherwise local
processes started by deploy/local/services.py. `make test` never depends on a Docker engine: one
that answers without an image registry must not fail it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
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


def load_script(relative: str, name: str) -> ModuleType:
    """Import one of the repository's scripts (not part of the package) once per session."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_local_services() -> ModuleType:
    """deploy/local/services.py: the local Kafka and PostgreSQL servers."""
    return load_script("deploy/local/services.py", "local_services")


def load_image_builder() -> ModuleType:
    """deploy/images/build.py: the container images, built offline."""
    return load_script("deploy/images/build.py", "image_builder")


def docker_answers() -> bool:
    """True when a Docker engine responds (not merely when the client is installed)."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


ORIGINS = ("local", "containers")


def choose_origin(env: Mapping[str, str], docker_ok: Callable[[], bool]) -> str:
    """Which source of services to use; the environment always wins.

    Containers only when asked for (AUDIT_TEST_SERVICES=containers), and then a Docker engine
    must answer: a run that asked for containers never quietly falls back to local processes.
    """
    if env.get("AUDIT_TEST_KAFKA_BOOTSTRAP") and env.get("AUDIT_TEST_DATABASE_URL"):
        return "env"
    wanted = env.get("AUDIT_TEST_SERVICES", "").strip() or "local"
    if wanted not in ORIGINS:
        raise ValueError(f"AUDIT_TEST_SERVICES={wanted!r}: expected one of {', '.join(ORIGINS)}")
    if wanted == "local":
        return "local"
    if not docker_ok():
        raise RuntimeError(
            "AUDIT_TEST_SERVICES=containers, but no Docker engine answers"
            f" (DOCKER_HOST={env.get('DOCKER_HOST', 'unset')})"
        )
    return "testcontainers"


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
    """Apache Kafka (KRaft combined mode) and PostgreSQL in containers (tests/container_images.py
    says which images: the official ones when present or pullable, else local equivalents)."""
    from testcontainers.community.postgres import PostgresContainer  # type: ignore[import-untyped]

    import container_images

    container_images.prepare_testcontainers()
    images = container_images.service_images()
    # The settings deploy/local/services.py gives its server: room for the tests' pools, and
    # no durability (the data lives as long as the session).
    postgres = PostgresContainer(images.postgres, driver=None).with_command(
        "postgres -c max_connections=200 -c shared_buffers=256MB -c fsync=off"
        " -c synchronous_commit=off -c full_page_writes=off"
    )
    postgres.ports = {"5432": ("127.0.0.1", None)}  # published on loopback only, any free port
    with postgres as pg, _kafka_container(images.kafka) as bootstrap:
        yield Endpoints(bootstrap, pg.get_connection_url(host="127.0.0.1"), "testcontainers")


@contextlib.contextmanager
def _kafka_container(image: str) -> Iterator[str]:
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
            DockerContainer(image)
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
        # Published on loopback only (docker-py takes (host ip, host port) for a binding).
        kafka.ports = {"9092": ("127.0.0.1", port)}
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


@dataclass(frozen=True)
class Replicated:
    """A local PostgreSQL primary and a hot standby streaming from it (tests of read
    replicas); `stop_standby` / `start_standby` stop it and start it again on its port."""

    primary_url: str
    standby_url: str
    state: Path

    def stop_standby(self) -> None:
        load_local_services().stop_standby(self.state)

    def start_standby(self) -> None:
        load_local_services().start_standby_again(self.state)


@contextlib.contextmanager
def provide_replicated() -> Iterator[Replicated]:
    """A primary and its standby, local processes from PostgreSQL's binaries whatever the
    session's services are (a standby is made with pg_basebackup from a primary this process
    can reach for replication); stopped and removed afterwards."""
    services = load_local_services()
    state = Path(tempfile.mkdtemp(prefix="course-audit-replica-"))
    try:
        primary = services.start_postgres(state)
        standby = services.start_standby(state, primary)
        yield Replicated(primary, standby, state)
    finally:
        services.stop_standby(state)
        services.stop_postgres(state)
        with contextlib.suppress(OSError):
            import shutil

            shutil.rmtree(state)
