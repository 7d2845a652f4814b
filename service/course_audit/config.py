"""Settings: one typed object read from `AUDIT_*` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be told from outside, with defaults."""

    database_url: str = "postgresql://localhost/course_audit"
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_topics: tuple[str, ...] = ("course-events",)
    kafka_group_id: str = "course-audit"
    kafka_session_timeout_ms: int = 10_000
    schema_dirs: tuple[Path, ...] = ()
    schema_registry_url: str | None = None
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    public_base_url: str | None = None
    trust_proxy: bool = False
    time_zone: str = "UTC"
    retention_months: int = 14
    partitions_ahead: int = 3
    # Batch bounds, chosen by measurement: `course-audit consume` on 100,000 messages of the
    # ingest benchmark (2 cores shared with PostgreSQL and Kafka). CPU per event, consumer +
    # PostgreSQL: 90-93 us with batches of 500 or 1,000, 86-90 with 2,000, 85-87 with 5,000,
    # 91-99 with 10,000; events/s followed within the machine's noise. 2,000 costs no more
    # than 5,000 and keeps a batch's transaction under ~100 ms. The latency bound does not
    # matter with a backlog (every poll returns a full batch at once: 20, 200 and 1,000 ms
    # measured the same); it is how long a message waits on a quiet topic.
    batch_max_records: int = 2000
    batch_max_latency_ms: int = 200
    migrate_on_start: bool = True
    maintenance_interval_s: int = 3600
    db_pool_max: int = 10
    log_level: str = "INFO"
    log_format: str = "json"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read settings from an environment mapping; raise ConfigError on a bad value."""
        r = _Reader(env)
        d = cls()
        return cls(
            database_url=r.url("AUDIT_DATABASE_URL", d.database_url, ("postgresql", "postgres")),
            kafka_bootstrap_servers=r.hosts(
                "AUDIT_KAFKA_BOOTSTRAP_SERVERS", d.kafka_bootstrap_servers
            ),
            kafka_topics=r.names("AUDIT_KAFKA_TOPICS", d.kafka_topics),
            kafka_group_id=r.text("AUDIT_KAFKA_GROUP_ID", d.kafka_group_id),
            kafka_session_timeout_ms=r.integer(
                "AUDIT_KAFKA_SESSION_TIMEOUT_MS", d.kafka_session_timeout_ms, 1000, 300_000
            ),
            schema_dirs=r.dirs("AUDIT_SCHEMA_DIRS"),
            schema_registry_url=r.optional_url("AUDIT_SCHEMA_REGISTRY_URL", ("http", "https")),
            http_host=r.text("AUDIT_HTTP_HOST", d.http_host),
            http_port=r.integer("AUDIT_HTTP_PORT", d.http_port, 0, 65535),
            public_base_url=r.optional_url("AUDIT_PUBLIC_BASE_URL", ("http", "https")),
            trust_proxy=r.boolean("AUDIT_TRUST_PROXY", d.trust_proxy),
            time_zone=r.zone("AUDIT_TIME_ZONE", d.time_zone),
            retention_months=r.integer("AUDIT_RETENTION_MONTHS", d.retention_months, 0, 1200),
            partitions_ahead=r.integer("AUDIT_PARTITIONS_AHEAD", d.partitions_ahead, 1, 60),
            batch_max_records=r.integer("AUDIT_BATCH_MAX_RECORDS", d.batch_max_records, 1, 100_000),
            batch_max_latency_ms=r.integer(
                "AUDIT_BATCH_MAX_LATENCY_MS", d.batch_max_latency_ms, 1, 60_000
            ),
            migrate_on_start=r.boolean("AUDIT_MIGRATE_ON_START", d.migrate_on_start),
            maintenance_interval_s=r.integer(
                "AUDIT_MAINTENANCE_INTERVAL_S", d.maintenance_interval_s, 1, 7 * 86400
            ),
            db_pool_max=r.integer("AUDIT_DB_POOL_MAX", d.db_pool_max, 1, 1000),
            log_level=r.choice(
                "AUDIT_LOG_LEVEL", d.log_level, ("DEBUG", "INFO", "WARNING", "ERROR"), upper=True
            ),
            log_format=r.choice("AUDIT_LOG_FORMAT", d.log_format, ("json", "text")),
        )


class _Reader:
    """Parses one variable at a time; every failure names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{name}={value} is out of range ({lo}..{hi})")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")

    def choice(self, name: str, default: str, allowed: tuple[str, ...], upper: bool = False) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(f"{name}={raw!r} must be one of {', '.join(allowed)}")
        return value

    def names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self._raw(name)
        if raw is None:
            return default
        items = tuple(part.strip() for part in raw.split(","))
        if any(not item for item in items):
            raise ConfigError(f"{name}={raw!r} has an empty entry")
        return items

    def hosts(self, name: str, default: str) -> str:
        raw = self._raw(name) or default
        for part in raw.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"{name}={raw!r}: {part.strip()!r} is not host:port")
        return raw

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        raw = self._raw(name) or default
        parts = urlsplit(raw)
        if parts.scheme not in schemes:
            raise ConfigError(f"{name}: URL scheme must be one of {', '.join(schemes)}")
        return raw

    def optional_url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        raw = self._raw(name)
        if raw is None:
            return None
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not parts.netloc:
            raise ConfigError(f"{name}={raw!r} is not an absolute {'/'.join(schemes)} URL")
        return raw.rstrip("/")

    def dirs(self, name: str) -> tuple[Path, ...]:
        raw = self._raw(name)
        if raw is None:
            return ()
        paths = tuple(Path(part.strip()) for part in raw.split(",") if part.strip())
        for path in paths:
            if not path.is_dir():
                raise ConfigError(f"{name}: {str(path)!r} is not a directory")
        return paths

    def zone(self, name: str, default: str) -> str:
        raw = self._raw(name) or default
        try:
            ZoneInfo(raw)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{name}={raw!r} is not a known IANA time zone") from None
        return raw
