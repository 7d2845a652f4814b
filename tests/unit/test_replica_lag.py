"""The read replica's lag from sampled primary WAL positions (runtime/replica.py)."""

from __future__ import annotations

from course_audit.runtime.health import Health
from course_audit.runtime.replica import LagClock, lsn


def test_wal_positions_read_as_numbers() -> None:
    assert lsn("0/0") == 0
    assert lsn("0/16B3748") == 0x16B3748
    assert lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert lsn(None) == 0


def test_a_replica_at_the_newest_sample_has_no_lag_however_idle_the_primary() -> None:
    clock = LagClock(keep_s=60)
    clock.sample(100.0, 500)
    # The primary wrote nothing for an hour; its last commit is an hour old on the replica.
    assert clock.lag(3700.0, 500, commit_age_s=3600.0) == 0.0


def test_lag_is_the_age_of_the_newest_sample_the_replica_has_replayed() -> None:
    clock = LagClock(keep_s=60)
    for at, position in [(10.0, 100), (11.0, 200), (12.0, 300), (13.0, 400)]:
        clock.sample(at, position)
    assert clock.lag(13.5, 250, commit_age_s=None) == 2.5  # reached the sample taken at 11
    assert clock.lag(13.5, 300, commit_age_s=None) == 1.5
    # A more recent replayed commit gives the finer figure.
    assert clock.lag(13.5, 250, commit_age_s=0.2) == 0.2


def test_a_replica_behind_every_sample_is_at_least_as_old_as_the_oldest_kept() -> None:
    clock = LagClock(keep_s=5)
    for second in range(20):
        clock.sample(float(second), 1000 + second)
    assert clock.lag(19.0, 10, commit_age_s=None) >= 5.0
    assert len(clock.samples) <= 7
    # Its last replayed commit's age bounds it then (a process that just started knows no
    # older sample).
    assert clock.lag(19.0, 10, commit_age_s=300.0) == 300.0


def test_readiness_shows_the_replica_only_when_there_is_one() -> None:
    ready = Health(database_ok=True, migrations_ok=True)
    assert "replica" not in ready.as_dict() and ready.ready
    ready.replica, ready.replica_lag_s = True, 0.5
    assert ready.as_dict()["replica"] == {"ok": True, "lag_s": 0.5, "error": None}
    assert ready.ready
    ready.replica, ready.replica_error = False, "lag 40.0 s > 30 s"
    assert ready.as_dict()["replica"] == {"ok": False, "lag_s": 0.5, "error": "lag 40.0 s > 30 s"}
    assert not ready.ready and ready.as_dict()["ready"] is False


class _Pool:
    """Stands for an asyncpg pool: `Reads` only hands pools out here."""


def test_reads_go_to_the_replica_only_while_it_is_usable() -> None:
    from course_audit.runtime.metrics import Metrics
    from course_audit.runtime.replica import Reads

    primary, replica = _Pool(), _Pool()
    health, metrics = Health(database_ok=True, migrations_ok=True), Metrics()
    reads = Reads(primary, replica, 30, health, metrics)  # type: ignore[arg-type]
    fallbacks = metrics.registry.get_sample_value
    # Not checked yet: the primary answers, counted; readiness waits for the first check.
    assert reads.pool() is primary and not health.ready
    assert health.as_dict()["replica"] == {"ok": False, "lag_s": None, "error": "not checked yet"}
    reads._set(True, 0.2, None)
    assert reads.pool() is replica and health.ready
    assert fallbacks("course_audit_replica_fallback_total") == 1.0
    assert fallbacks("course_audit_replica_lag_seconds") == 0.2
    # A query cancelled on the replica (a conflict with replay): this read goes to the primary,
    # the next ones to the replica again.
    import asyncpg

    reads.read_failed(asyncpg.SerializationError("canceling statement due to conflict"))
    assert reads.pool() is replica
    # A lost connection: the primary until the next check.
    reads.read_failed(ConnectionResetError("reset"))
    assert reads.pool() is primary and not health.ready
    assert "ConnectionResetError" in str(health.as_dict()["replica"])
    assert fallbacks("course_audit_replica_fallback_total") == 4.0


def test_without_a_replica_every_read_is_the_primarys() -> None:
    from course_audit.runtime.metrics import Metrics
    from course_audit.runtime.replica import Reads

    primary = _Pool()
    health, metrics = Health(database_ok=True, migrations_ok=True), Metrics()
    reads = Reads(primary, None, 30, health, metrics)  # type: ignore[arg-type]
    assert reads.pool() is primary and health.ready and "replica" not in health.as_dict()
    assert metrics.registry.get_sample_value("course_audit_replica_fallback_total") == 0.0
