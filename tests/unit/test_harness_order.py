"""The test services come from the environment first; containers only when asked for."""

from __future__ import annotations

import pytest

from harness import choose_origin, provide_services

BOTH = {"AUDIT_TEST_KAFKA_BOOTSTRAP": "k:1", "AUDIT_TEST_DATABASE_URL": "postgresql://h/d"}


def _docker_must_not_be_asked() -> bool:
    raise AssertionError("docker was probed although it was not asked for")


def test_environment_wins_over_everything() -> None:
    assert (
        choose_origin({**BOTH, "AUDIT_TEST_SERVICES": "containers"}, _docker_must_not_be_asked)
        == "env"
    )


def test_local_processes_by_default_even_when_docker_answers() -> None:
    # `make test` must not depend on an engine that may have no registry to pull from.
    assert choose_origin({}, _docker_must_not_be_asked) == "local"
    only_kafka = {"AUDIT_TEST_KAFKA_BOOTSTRAP": "k:1"}
    assert choose_origin(only_kafka, _docker_must_not_be_asked) == "local"
    assert choose_origin({"AUDIT_TEST_SERVICES": "local"}, _docker_must_not_be_asked) == "local"


def test_containers_when_asked_for() -> None:
    assert choose_origin({"AUDIT_TEST_SERVICES": "containers"}, lambda: True) == "testcontainers"


def test_containers_asked_for_without_an_engine_is_an_error_not_a_fallback() -> None:
    with pytest.raises(RuntimeError, match="no Docker engine answers"):
        choose_origin({"AUDIT_TEST_SERVICES": "containers"}, lambda: False)


def test_an_unknown_origin_is_named() -> None:
    with pytest.raises(ValueError, match="AUDIT_TEST_SERVICES='docker'"):
        choose_origin({"AUDIT_TEST_SERVICES": "docker"}, _docker_must_not_be_asked)


def test_environment_endpoints_are_used_as_given() -> None:
    with provide_services(BOTH) as found:
        assert (found.kafka_bootstrap, found.database_url, found.origin) == (
            "k:1",
            "postgresql://h/d",
            "env",
        )
