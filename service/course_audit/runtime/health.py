"""Readiness as seen by the process's parts (database, migrations, Kafka, schema registry)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Health:
    """Flags each component sets; `ready` is what GET /health/ready reports."""

    #: Whether the database answers (the process checks every second).
    database_ok: bool = False
    #: Whether the consumer's batch in hand keeps failing to be stored (it is retried).
    writes_failing: bool = False
    migrations_ok: bool = False
    #: None when this process does not consume; otherwise whether it has joined its group.
    subscribed: bool | None = None
    #: Why the last consumer failed, until a new one has joined its group (None: it did not).
    consumer_error: str | None = None
    #: None without a schema registry; otherwise False while the consumer cannot reach it.
    registry: bool | None = None
    #: None without a read replica; otherwise whether it answers and is recent enough.
    replica: bool | None = None
    #: The replica's last measured lag, and why it is not used (None: it is).
    replica_lag_s: float | None = None
    replica_error: str | None = None

    @property
    def ready(self) -> bool:
        return (
            self.database_ok
            and not self.writes_failing
            and self.migrations_ok
            and self.subscribed is not False
            and self.registry is not False
            and self.replica is not False
        )

    def as_dict(self) -> dict[str, object]:
        parts: dict[str, object] = {
            "ready": self.ready,
            "database": self.database_ok and not self.writes_failing,
            "migrations": self.migrations_ok,
            "subscribed": self.subscribed,
            "consumer_error": self.consumer_error,
            "registry": self.registry,
        }
        if self.replica is not None:
            parts["replica"] = {
                "ok": self.replica,
                "lag_s": self.replica_lag_s,
                "error": self.replica_error,
            }
        return parts
