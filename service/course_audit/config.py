"""Settings: one typed object read from `AUDIT_*` environment variables.

Each setting is declared once, as a field of `Settings`: its default, its variable, its parser
(with the bounds or choices) and a one-line meaning. `from_env` is derived from these
declarations, and a unit test checks README.md's configuration table against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from course_audit.envparse import (
    ConfigError,
    Parse,
    absolute_url,
    boolean,
    choice,
    dirs,
    hosts,
    iana_zone,
    integer,
    names,
    readable_file,
    sasl_mechanism,
    text,
    url,
)

__all__ = ["ConfigError", "Settings", "Variable"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Variable:
    """How one setting is given from outside: name, default, parser and meaning."""

    name: str
    default: object
    parse: Parse[object]
    doc: str


_KEY = "course_audit.variable"


def setting(default: T, *, env: str, parse: Parse[T], doc: str, secret: bool = False) -> T:
    """Declare a `Settings` field: `default` when `env` is unset or blank, else `parse`d.

    A `secret` one (a password) is left out of the settings' repr.
    """
    return field(
        default=default, repr=not secret, metadata={_KEY: Variable(env, default, parse, doc)}
    )


_HTTP = ("http", "https")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be told from outside, with defaults."""

    database_url: str = setting(
        "postgresql://localhost/course_audit",
        env="AUDIT_DATABASE_URL",
        parse=url("postgresql", "postgres"),
        doc="the store",
    )
    kafka_bootstrap_servers: str = setting(
        "localhost:9092",
        env="AUDIT_KAFKA_BOOTSTRAP_SERVERS",
        parse=hosts,
        doc="brokers, `host:port,...`",
    )
    kafka_topics: tuple[str, ...] = setting(
        ("course-events",),
        env="AUDIT_KAFKA_TOPICS",
        parse=names,
        doc="comma-separated topics to consume",
    )
    kafka_group_id: str = setting(
        "course-audit",
        env="AUDIT_KAFKA_GROUP_ID",
        parse=text,
        doc="consumer group",
    )
    kafka_session_timeout_ms: int = setting(
        10_000,
        env="AUDIT_KAFKA_SESSION_TIMEOUT_MS",
        parse=integer(1000, 300_000),
        doc="consumer group session timeout; a dead member's partitions move after this",
    )
    # Secured Kafka (docs/operations.md#secured-kafka); the combinations are checked by
    # course_audit.security.check when the settings are read.
    kafka_security_protocol: str = setting(
        "PLAINTEXT",
        env="AUDIT_KAFKA_SECURITY_PROTOCOL",
        parse=choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL", upper=True),
        doc="how clients reach the brokers: `PLAINTEXT`, `SSL` (TLS), `SASL_PLAINTEXT` or"
        " `SASL_SSL` (SASL over TLS)",
    )
    kafka_sasl_mechanism: str | None = setting(
        None,
        env="AUDIT_KAFKA_SASL_MECHANISM",
        parse=sasl_mechanism,
        doc="`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with a `SASL_` protocol",
    )
    kafka_sasl_username: str | None = setting(
        None,
        env="AUDIT_KAFKA_SASL_USERNAME",
        parse=text,
        doc="SASL user name",
    )
    kafka_sasl_password: str | None = setting(
        None,
        env="AUDIT_KAFKA_SASL_PASSWORD",
        parse=text,
        doc="SASL password; or AUDIT_KAFKA_SASL_PASSWORD_FILE",
        secret=True,
    )
    kafka_sasl_password_file: str | None = setting(
        None,
        env="AUDIT_KAFKA_SASL_PASSWORD_FILE",
        parse=readable_file,
        doc="file holding the SASL password (a mounted secret), read again at each consumer start",
    )
    kafka_ssl_ca_file: str | None = setting(
        None,
        env="AUDIT_KAFKA_SSL_CA_FILE",
        parse=readable_file,
        doc="PEM CA certificates the brokers' certificates must chain to; default: the system's",
    )
    kafka_ssl_cert_file: str | None = setting(
        None,
        env="AUDIT_KAFKA_SSL_CERT_FILE",
        parse=readable_file,
        doc="PEM client certificate (mutual TLS); with AUDIT_KAFKA_SSL_KEY_FILE",
    )
    kafka_ssl_key_file: str | None = setting(
        None,
        env="AUDIT_KAFKA_SSL_KEY_FILE",
        parse=readable_file,
        doc="PEM private key of the client certificate",
    )
    kafka_ssl_key_password: str | None = setting(
        None,
        env="AUDIT_KAFKA_SSL_KEY_PASSWORD",
        parse=text,
        doc="password of an encrypted AUDIT_KAFKA_SSL_KEY_FILE",
        secret=True,
    )
    kafka_ssl_check_hostname: bool = setting(
        True,
        env="AUDIT_KAFKA_SSL_CHECK_HOSTNAME",
        parse=boolean,
        doc="a broker's certificate must name the host it was reached at (the chain is"
        " checked either way)",
    )
    schema_dirs: tuple[Path, ...] = setting(
        (),
        env="AUDIT_SCHEMA_DIRS",
        parse=dirs,
        doc="extra schema directories, comma-separated, beside the built-in ones",
    )
    schema_registry_url: str | None = setting(
        None,
        env="AUDIT_SCHEMA_REGISTRY_URL",
        parse=absolute_url(*_HTTP),
        doc="enables the Confluent wire format; may carry `user:password@` for basic auth",
    )
    schema_registry_username: str | None = setting(
        None,
        env="AUDIT_SCHEMA_REGISTRY_USERNAME",
        parse=text,
        doc="registry basic-auth user",
    )
    schema_registry_password: str | None = setting(
        None,
        env="AUDIT_SCHEMA_REGISTRY_PASSWORD",
        parse=text,
        doc="registry basic-auth password; or AUDIT_SCHEMA_REGISTRY_PASSWORD_FILE",
        secret=True,
    )
    schema_registry_password_file: str | None = setting(
        None,
        env="AUDIT_SCHEMA_REGISTRY_PASSWORD_FILE",
        parse=readable_file,
        doc="file holding the registry password (a mounted secret), read at start",
    )
    schema_registry_ca_file: str | None = setting(
        None,
        env="AUDIT_SCHEMA_REGISTRY_CA_FILE",
        parse=readable_file,
        doc="PEM CA certificates an `https` registry's certificate must chain to; default:"
        " the system's",
    )
    http_host: str = setting(
        "0.0.0.0",
        env="AUDIT_HTTP_HOST",
        parse=text,
        doc="address the API listens on",
    )
    http_port: int = setting(
        8080,
        env="AUDIT_HTTP_PORT",
        parse=integer(0, 65535),
        doc="port the API listens on",
    )
    http_header_timeout_s: int = setting(
        10,
        env="AUDIT_HTTP_HEADER_TIMEOUT_S",
        parse=integer(1, 3600),
        doc="a request head must arrive whole within this, from the connection's start "
        "(or a kept-alive request's first byte); else the connection is closed",
    )
    http_keepalive_timeout_s: int = setting(
        75,
        env="AUDIT_HTTP_KEEPALIVE_TIMEOUT_S",
        parse=integer(1, 3600),
        doc="an idle kept-alive connection is closed after this; keep it above a load "
        "balancer's idle timeout",
    )
    http_max_connections: int = setting(
        1000,
        env="AUDIT_HTTP_MAX_CONNECTIONS",
        parse=integer(2, 1_000_000),
        doc="open HTTP connections per process; beyond it the one waiting longest for a "
        "request head is closed",
    )
    api_workers: int = setting(
        1,
        env="AUDIT_API_WORKERS",
        parse=integer(1, 64),
        doc="`serve` only: API processes sharing the one port (SO_REUSEPORT); each has its "
        "own pool, caches, /metrics and /health (docs/operations.md#api-workers)",
    )
    stream_max_subscribers: int = setting(
        500,
        env="AUDIT_STREAM_MAX_SUBSCRIBERS",
        parse=integer(0, 1_000_000),
        doc="live tail streams open at once per API process; beyond it a new one is a 503"
        " (keep it below AUDIT_HTTP_MAX_CONNECTIONS); 0 turns the live tail off",
    )
    stream_heartbeat_s: int = setting(
        15,
        env="AUDIT_STREAM_HEARTBEAT_S",
        parse=integer(1, 3600),
        doc="an idle live tail stream gets a comment line this often, so proxies keep it open",
    )
    stream_poll_interval_s: int = setting(
        2,
        env="AUDIT_STREAM_POLL_INTERVAL_S",
        parse=integer(1, 600),
        doc="while the API cannot LISTEN for stored batches, live tails poll the store this often",
    )
    public_base_url: str | None = setting(
        None,
        env="AUDIT_PUBLIC_BASE_URL",
        parse=absolute_url(*_HTTP),
        doc="base of absolute URLs in `Link` and `links`; when unset, taken from the request",
    )
    trust_proxy: bool = setting(
        False,
        env="AUDIT_TRUST_PROXY",
        parse=boolean,
        doc="honour `X-Forwarded-Proto` / `X-Forwarded-Host`",
    )
    time_zone: str = setting(
        "UTC",
        env="AUDIT_TIME_ZONE",
        parse=iana_zone,
        doc="zone for rendering and for offset-less parameters",
    )
    consumer_database_url: str | None = setting(
        None,
        env="AUDIT_CONSUMER_DATABASE_URL",
        parse=url("postgresql", "postgres"),
        doc="the store as `consume` (and `run`'s consumer) reaches it, as a member of"
        " `course_audit_writer`; default: AUDIT_DATABASE_URL",
    )
    api_database_url: str | None = setting(
        None,
        env="AUDIT_API_DATABASE_URL",
        parse=url("postgresql", "postgres"),
        doc="the store as `serve` (and `run`'s API) reaches it, as a member of"
        " `course_audit_reader`; default: AUDIT_DATABASE_URL",
    )
    database_read_url: str | None = setting(
        None,
        env="AUDIT_DATABASE_READ_URL",
        parse=url("postgresql", "postgres"),
        doc="a streaming replica of the store that `serve` (and `run`'s API) reads events,"
        " snapshots and exports from; tokens, the LISTEN connection (live tail, snapshot"
        " changes) and every write stay on the primary (docs/operations.md#read-replicas)",
    )
    database_read_max_lag_s: int = setting(
        30,
        env="AUDIT_DATABASE_READ_MAX_LAG_S",
        parse=integer(1, 86_400),
        doc="a replica further behind the primary than this is not read (the primary"
        " answers) and makes readiness false",
    )
    retention_months: int = setting(
        14,
        env="AUDIT_RETENTION_MONTHS",
        parse=integer(0, 1200),
        doc="months of events kept; 0 keeps everything",
    )
    partitions_ahead: int = setting(
        3,
        env="AUDIT_PARTITIONS_AHEAD",
        parse=integer(1, 60),
        doc="monthly partitions created ahead of time",
    )
    # measured trade-off of CPU per event vs transaction length: docs/performance.md#batch-bounds
    batch_max_records: int = setting(
        2000,
        env="AUDIT_BATCH_MAX_RECORDS",
        parse=integer(1, 100_000),
        doc="most messages written in one transaction",
    )
    batch_max_latency_ms: int = setting(
        200,
        env="AUDIT_BATCH_MAX_LATENCY_MS",
        parse=integer(1, 60_000),
        doc="longest a message waits for its batch to fill",
    )
    dead_letter_retention_days: int = setting(
        90,
        env="AUDIT_DEAD_LETTER_RETENTION_DAYS",
        parse=integer(0, 36500),
        doc="days a dead letter is kept, by the database's clock; 0 keeps them all",
    )
    migrate_on_start: bool = setting(
        True,
        env="AUDIT_MIGRATE_ON_START",
        parse=boolean,
        doc="apply pending migrations when `run`/`consume`/`serve` start",
    )
    maintenance_interval_s: int = setting(
        3600,
        env="AUDIT_MAINTENANCE_INTERVAL_S",
        parse=integer(1, 7 * 86400),
        doc="how often the consumer creates partitions ahead and expires old data",
    )
    db_pool_max: int = setting(
        10,
        env="AUDIT_DB_POOL_MAX",
        parse=integer(1, 1000),
        doc="largest database connection pool",
    )
    export_stall_timeout_s: int = setting(
        60,
        env="AUDIT_EXPORT_STALL_TIMEOUT_S",
        parse=integer(1, 3600),
        doc="an export whose client takes less than 64 KiB of it in this long is stopped, "
        "freeing its database connection",
    )
    log_level: str = setting(
        "INFO",
        env="AUDIT_LOG_LEVEL",
        parse=choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True),
        doc="least severe level logged",
    )
    log_format: str = setting(
        "json",
        env="AUDIT_LOG_FORMAT",
        parse=choice("json", "text"),
        doc="log lines as `json` objects, or `text`",
    )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @classmethod
    def variables(cls) -> tuple[Variable, ...]:
        """The declared variables, in field order."""
        return tuple(f.metadata[_KEY] for f in fields(cls))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read settings from an environment mapping; raise ConfigError on a bad value."""
        given: dict[str, Any] = {}
        for f in fields(cls):
            var: Variable = f.metadata[_KEY]
            raw = (env.get(var.name) or "").strip()
            if raw:
                given[f.name] = var.parse(var.name, raw)
        settings = cls(**given)
        from course_audit.security import check

        check(settings)
        return settings
