"""The container layer (`make test-containers`): the images deploy/images/build.py makes, run
with a Docker engine. Not part of `make test`: it needs Docker, and the first run builds the
images (about two minutes; later runs find them current in a fraction of a second)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from docker_cli import LABEL, docker

from harness import load_image_builder


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The local images, built now if missing or stale: {name: tag}."""
    ping = docker("version", "-f", "{{.Server.Version}}", timeout=15)
    assert ping.returncode == 0, f"no Docker engine answers: {ping.stderr.strip()}"
    builder = load_image_builder()
    tags: dict[str, str] = builder.ensure(["service", "postgres", "kafka"])
    return tags


@pytest.fixture(scope="session")
def session_id() -> Iterator[str]:
    """A label value for what this session starts; all of it is removed at the end."""
    sid = uuid.uuid4().hex[:12]
    yield sid
    found = docker("ps", "-aq", "--filter", f"label={LABEL}={sid}").stdout.split()
    if found:
        docker("rm", "-f", "-v", *found)
    networks = docker("network", "ls", "-q", "--filter", f"label={LABEL}={sid}").stdout.split()
    if networks:
        docker("network", "rm", *networks)
