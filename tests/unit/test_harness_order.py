"""The test services come from the environment first, then Docker, then local processes."""

from __future__ import annotations

from harness import choose_origin, provide_services

BOTH = {"AUDIT_TEST_KAFKA_BOOTSTRAP": "k:1", "AUDIT_TEST_DATABASE_URL": "postgresql://h/d"}


def _docker_must_not_be_asked() -> bool:
    raise AssertionError("docker was probed although the environment named the services")


def test_environment_wins_over_docker() -> None:
    assert choose_origin(BOTH, _docker_must_not_be_asked) == "env"


def test_docker_when_environment_is_incomplete() -> None:
    only_kafka = {"AUDIT_TEST_KAFKA_BOOTSTRAP": "k:1"}
    assert choose_origin(only_kafka, lambda: True) == "testcontainers"


def test_local_processes_last() -> None:
    assert choose_origin({}, lambda: False) == "local"


def test_environment_endpoints_are_used_as_given() -> None:
    with provide_services(BOTH) as found:
        assert (found.kafka_bootstrap, found.database_url, found.origin) == (
            "k:1",
            "postgresql://h/d",
            "env",
        )
