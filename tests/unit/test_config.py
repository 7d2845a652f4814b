"""Settings from AUDIT_* variables: defaults, parsing, and one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from course_audit.config import ConfigError, Settings


def test_defaults_match_the_spec() -> None:
    s = Settings.from_env({})
    assert s.database_url == "postgresql://localhost/course_audit"
    assert s.kafka_bootstrap_servers == "localhost:9092"
    assert s.kafka_topics == ("course-events",)
    assert s.kafka_group_id == "course-audit"
    assert (s.http_host, s.http_port) == ("0.0.0.0", 8080)
    assert s.public_base_url is None and s.trust_proxy is False
    assert s.time_zone == "UTC" and s.retention_months == 14
    assert (s.log_level, s.log_format) == ("INFO", "json")


def test_values_are_parsed(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "AUDIT_KAFKA_TOPICS": "a, b ,c",
            "AUDIT_SCHEMA_DIRS": str(tmp_path),
            "AUDIT_HTTP_PORT": "9000",
            "AUDIT_TRUST_PROXY": "yes",
            "AUDIT_TIME_ZONE": "America/Denver",
            "AUDIT_RETENTION_MONTHS": "0",
            "AUDIT_PUBLIC_BASE_URL": "https://audit.example.edu/",
            "AUDIT_LOG_LEVEL": "debug",
        }
    )
    assert s.kafka_topics == ("a", "b", "c")
    assert s.schema_dirs == (tmp_path,)
    assert s.http_port == 9000 and s.trust_proxy is True
    assert s.zone.key == "America/Denver"
    assert s.retention_months == 0
    assert s.public_base_url == "https://audit.example.edu"
    assert s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("AUDIT_HTTP_PORT", "eighty", "not an integer"),
        ("AUDIT_HTTP_PORT", "70000", "out of range"),
        ("AUDIT_RETENTION_MONTHS", "-1", "out of range"),
        ("AUDIT_TRUST_PROXY", "maybe", "not a boolean"),
        ("AUDIT_TIME_ZONE", "Mars/Olympus", "time zone"),
        ("AUDIT_DATABASE_URL", "mysql://x/y", "scheme"),
        ("AUDIT_DATABASE_READ_URL", "mysql://replica/y", "scheme"),
        ("AUDIT_DATABASE_READ_MAX_LAG_S", "0", "out of range"),
        ("AUDIT_DATABASE_READ_MAX_LAG_S", "soon", "not an integer"),
        ("AUDIT_KAFKA_BOOTSTRAP_SERVERS", "localhost", "host:port"),
        ("AUDIT_KAFKA_TOPICS", "a,,b", "empty entry"),
        ("AUDIT_SCHEMA_DIRS", "/nonexistent/dir", "not a directory"),
        ("AUDIT_SCHEMA_REGISTRY_URL", "registry:8081", "absolute"),
        ("AUDIT_LOG_FORMAT", "xml", "must be one of"),
        ("AUDIT_BATCH_MAX_RECORDS", "0", "out of range"),
        ("AUDIT_API_WORKERS", "0", "out of range"),
        ("AUDIT_API_WORKERS", "two", "not an integer"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert message.startswith(name)
    assert fragment in message
    assert "\n" not in message
