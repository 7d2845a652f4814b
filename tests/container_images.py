"""Which images the container layer (`make test-containers`) runs, and how testcontainers runs.

Official images are used when the engine has them or can pull them. On a machine whose engine
reaches no registry, deploy/images/build.py builds local equivalents offline (Debian packages
and the Kafka jars from the Maven cache) and those are used instead. Ryuk, testcontainers'
reaper, is an image too: it runs only when it is present locally; otherwise it is disabled and
every container is stopped by the context manager that started it (and `.ci/run` removes any
container labelled by testcontainers that outlived its run).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from harness import load_image_builder

OFFICIAL_KAFKA = "apache/kafka:4.1.1"
OFFICIAL_POSTGRES = "postgres:16"


@dataclass(frozen=True)
class ServiceImages:
    kafka: str
    postgres: str
    service: str


def _client():  # type: ignore[no-untyped-def]
    import docker  # type: ignore[import-untyped]

    return docker.from_env(timeout=120)


def available(image: str) -> bool:
    """True when the engine has `image` or pulls it now (a registry that does not answer: False)."""
    import docker

    client = _client()
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(image)
        return True
    except docker.errors.DockerException:
        return False


@functools.cache
def service_images() -> ServiceImages:
    """Kafka, PostgreSQL and the service's own image for this session (built when missing).

    AUDIT_TEST_KAFKA_IMAGE / AUDIT_TEST_POSTGRES_IMAGE / AUDIT_TEST_SERVICE_IMAGE name an image
    to use as it is.
    """
    chosen: dict[str, str] = {}
    wanted = {"kafka": OFFICIAL_KAFKA, "postgres": OFFICIAL_POSTGRES}
    for name, official in wanted.items():
        given = os.environ.get(f"AUDIT_TEST_{name.upper()}_IMAGE", "").strip()
        if given:
            chosen[name] = given
        elif available(official):
            chosen[name] = official
    given_service = os.environ.get("AUDIT_TEST_SERVICE_IMAGE", "").strip()
    missing = [name for name in ("kafka", "postgres") if name not in chosen]
    if not given_service:
        missing.append("service")
    if missing:
        chosen.update(load_image_builder().ensure(missing))
    return ServiceImages(
        kafka=chosen["kafka"],
        postgres=chosen["postgres"],
        service=given_service or chosen["service"],
    )


def prepare_testcontainers() -> None:
    """Disable Ryuk unless its image is already here (pulling it is what fails offline)."""
    from testcontainers.core.config import testcontainers_config  # type: ignore[import-untyped]

    if not available(testcontainers_config.ryuk_image):
        testcontainers_config.ryuk_disabled = True
