"""Prometheus metrics shared by the consumer and the HTTP front (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every metric the service exports; `registry` backs GET /metrics."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.consumed = Counter(
            "course_audit_messages_consumed", "Kafka messages read", ["topic"], registry=r
        )
        self.stored = Counter("course_audit_events_stored", "events newly stored", registry=r)
        self.duplicates = Counter(
            "course_audit_events_duplicate", "events already stored (redelivery)", registry=r
        )
        self.dead_lettered = Counter(
            "course_audit_dead_letters", "messages kept as dead letters", ["code"], registry=r
        )
        self.batch_size = Histogram(
            "course_audit_batch_size",
            "messages per written batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.write_seconds = Histogram(
            "course_audit_batch_write_seconds",
            "time to write and commit one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.tenant_claims = Counter(
            "course_audit_tenant_claims",
            "courses or accounts stored under a second root account (once per id and root)",
            ["kind"],
            registry=r,
        )
        self.db_errors = Counter(
            "course_audit_database_errors", "failed database attempts (retried)", registry=r
        )
        self.registry_errors = Counter(
            "course_audit_registry_errors",
            "failed schema registry fetches of the consumer (retried)",
            registry=r,
        )
        self.kafka_connect_failures = Counter(
            "course_audit_kafka_connect_failures",
            "consumer starts that could not use any bootstrap broker (retried), by kind",
            ["kind"],
            registry=r,
        )
        self.lag = Gauge(
            "course_audit_consumer_lag",
            "messages between the committed offset and the partition's end",
            ["topic", "partition"],
            registry=r,
        )
        self.http_requests = Counter(
            "course_audit_http_requests", "HTTP requests", ["route", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "course_audit_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.http_connections_closed = Counter(
            "course_audit_http_connections_closed",
            "HTTP connections the server closed early (docs/operations.md#http-connections)",
            ["reason"],
            registry=r,
        )
        self.stream_subscribers = Gauge(
            "course_audit_stream_subscribers", "live tail streams open", registry=r
        )
        self.stream_notifications = Counter(
            "course_audit_stream_notifications",
            "stored-batch notifications the API's stream hub received",
            registry=r,
        )
        self.stream_listening = Gauge(
            "course_audit_stream_listening",
            "1 while the stream hub LISTENs for stored batches, 0 while it polls the store",
            registry=r,
        )
        self.snapshot_trusted = Counter(
            "course_audit_snapshot_cache_trusted",
            "pages whose linked snapshots were taken from the cache without a version check:"
            " every snapshot change the page could see had been announced and applied",
            registry=r,
        )
        self.snapshot_checked = Counter(
            "course_audit_snapshot_cache_checked",
            "pages whose linked snapshots' versions were checked in the store (not listening,"
            " or a change the page could see not applied yet)",
            registry=r,
        )
        self.snapshot_listening = Gauge(
            "course_audit_snapshot_listening",
            "1 while the API LISTENs for snapshot changes (pages may skip the version check)",
            registry=r,
        )
        self.stream_polls = Counter(
            "course_audit_stream_polls",
            "catch-up rounds of the stream hub (after a reconnect, and while polling)",
            registry=r,
        )
        self.stream_fanout_seconds = Histogram(
            "course_audit_stream_fanout_seconds",
            "from a notification's arrival to its events queued for every subscriber",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.stream_events = Counter(
            "course_audit_stream_events", "events queued to live tail subscribers", registry=r
        )
        self.stream_ended = Counter(
            "course_audit_stream_ended",
            "live tail streams ended by the server, by reason",
            ["reason"],
            registry=r,
        )
        self.stream_resyncs = Counter(
            "course_audit_stream_resyncs",
            "slow subscribers whose queue overflowed and were caught up from the store",
            registry=r,
        )
        self.exports_running = Gauge(
            "course_audit_exports_running", "exports being written now", registry=r
        )
        self.exports = Counter(
            "course_audit_exports",
            "exports that began answering, by format and how they ended",
            ["format", "outcome"],
            registry=r,
        )
        self.exports_refused = Counter(
            "course_audit_exports_refused",
            "exports answered 503 because this process ran as many as it runs at once",
            registry=r,
        )
        self.export_events = Counter(
            "course_audit_export_events",
            "events of the chunks exports wrote in full (ended or cut short), by format",
            ["format"],
            registry=r,
        )
        self.replica_lag = Gauge(
            "course_audit_replica_lag_seconds",
            "how far the read replica is behind the primary, at the last check",
            registry=r,
        )
        self.replica_up = Gauge(
            "course_audit_replica_up",
            "1 while the read replica answers and is within AUDIT_DATABASE_READ_MAX_LAG_S",
            registry=r,
        )
        self.replica_fallback = Counter(
            "course_audit_replica_fallback",
            "reads sent to the primary because the read replica was down or too far behind",
            registry=r,
        )
