"""Session services (real Kafka, real PostgreSQL) and per-test isolation."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import waits
from harness import Endpoints, provide_services


def _timeout_of(item: pytest.Item) -> float | None:
    """The pytest-timeout limit of this test: marker, then option, environment, ini file."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    for value in (
        item.config.getoption("timeout", None),
        os.environ.get("PYTEST_TIMEOUT"),
        item.config.getini("timeout"),
    ):
        if value not in (None, ""):
            return float(value)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Start the test's time budget (see waits.py) as pytest-timeout starts its clock."""
    waits.start_budget(_timeout_of(item))


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    with provide_services() as found:
        yield found


@pytest.fixture(scope="session")
def kafka_bootstrap(endpoints: Endpoints) -> str:
    return endpoints.kafka_bootstrap


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def server_url(endpoints: Endpoints) -> str:
    """URL of the session's PostgreSQL server, on its maintenance database."""
    return with_database(endpoints.database_url, "postgres")


async def _create_database(server_url: str, template: str | None = None) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(server_url)
    try:
        if template is None:
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    finally:
        await conn.close()
    return name


async def _drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def db_url(server_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for this test."""
    name = await _create_database(server_url)
    yield with_database(server_url, name)
    await _drop_database(server_url, name)


@pytest.fixture(scope="session")
async def migrated_template(server_url: str) -> AsyncIterator[str]:
    """A database with every migration applied, copied for each test that needs one."""
    from course_audit.store.migrate import migrate

    name = await _create_database(server_url)
    conn = await asyncpg.connect(with_database(server_url, name))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield name
    await _drop_database(server_url, name)


@pytest.fixture
async def migrated_db_url(server_url: str, migrated_template: str) -> AsyncIterator[str]:
    """A fresh database with the current schema, for this test alone."""
    name = await _create_database(server_url, template=migrated_template)
    yield with_database(server_url, name)
    await _drop_database(server_url, name)


@pytest.fixture
def group_id() -> str:
    return f"g-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def topic(kafka_bootstrap: str) -> AsyncIterator[str]:
    """A new topic with 3 partitions, for this test alone."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()
