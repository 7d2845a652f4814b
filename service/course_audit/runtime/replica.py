"""Reading from a streaming replica (AUDIT_DATABASE_READ_URL, docs/operations.md#read-replicas).

The API reads events, snapshots and exports through `Reads.pool()`: the replica's pool while
the replica answers and is at most AUDIT_DATABASE_READ_MAX_LAG_S behind, else the primary's
(each such read counted in `course_audit_replica_fallback_total`, the switch logged once).
Tokens, the live tail's LISTEN connection and every write stay on the primary.

Lag is measured without trusting an idle primary's clock: every check samples the primary's
WAL position and remembers when it did; the replica is as fresh as the primary was at the
newest sample its replay position (`pg_last_wal_replay_lsn()`) has reached. So a primary with
nothing to write never makes a caught-up replica look behind, and a paused or stuck replay
shows as lag growing with the clock. When the replica's last replayed commit is more recent
than that sample, its timestamp is used instead (a finer figure under a steady write load).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import asyncpg

from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics

log = logging.getLogger(__name__)

#: How often the replica's lag is measured.
CHECK_INTERVAL_S = 1.0
#: Longest a check's queries may take.
CHECK_TIMEOUT_S = 2.0
#: How long the live tail waits for the replica to replay a notified batch before reading
#: that round from the primary instead.
CATCH_UP_TIMEOUT_S = 2.0
#: Between two looks at the replica's replay position while waiting for it.
CATCH_UP_POLL_S = 0.01

#: The primary's WAL position: where it has inserted, not written. With
#: `synchronous_commit = off` a commit may still be in the WAL buffers, and
#: `pg_current_wal_lsn()` (written) would be before it: a replica "caught up" to that may not
#: show the commit yet.
_PRIMARY_POSITION = "SELECT pg_current_wal_insert_lsn()::text"

_REPLAY = (
    "SELECT pg_last_wal_replay_lsn()::text,"
    " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8"
)


def lsn(text: str | None) -> int:
    """A WAL position (`16/B374D848`) as a number (0 for none)."""
    if not text:
        return 0
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass
class LagClock:
    """Primary WAL positions sampled over time, to turn a replay position into seconds."""

    keep_s: float
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def sample(self, at: float, position: int) -> None:
        self.samples.append((at, position))
        while len(self.samples) > 2 and at - self.samples[1][0] > self.keep_s:
            self.samples.popleft()

    def lag(self, now: float, replayed: int, commit_age_s: float | None) -> float:
        """Seconds the replica is behind, at most: 0 when it has replayed the newest sample,
        else the age of the newest sample it has replayed or of its last replayed commit,
        whichever is less (its view is at least as new as either). Behind every sample kept
        (a process just started, a replica long stopped), the commit's age, or else the
        oldest sample's."""
        if not self.samples or replayed >= self.samples[-1][1]:
            return 0.0
        reached = [at for at, position in self.samples if position <= replayed]
        commit = None if commit_age_s is None else max(0.0, commit_age_s)
        if not reached:
            return commit if commit is not None else now - self.samples[0][0]
        lag = now - reached[-1]
        return lag if commit is None else min(lag, commit)


class Reads:
    """Where the API's reads go: the replica's pool while usable, else the primary's."""

    def __init__(
        self,
        primary: asyncpg.Pool,
        replica: asyncpg.Pool | None,
        max_lag_s: float,
        health: Health,
        metrics: Metrics,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.max_lag_s = max_lag_s
        self.health = health
        self.metrics = metrics
        self.clock = LagClock(keep_s=max(60.0, 4 * max_lag_s))
        #: Whether the last check found the replica answering and recent enough.
        self.usable = False
        self._logged: bool | None = None  # what the log last said (None: nothing yet)
        if replica is not None:
            health.replica = False
            health.replica_error = "not checked yet"

    def pool(self) -> asyncpg.Pool:
        """The pool for one read."""
        if self.replica is None:
            return self.primary
        if self.usable:
            return self.replica
        self.metrics.replica_fallback.inc()
        return self.primary

    def read_failed(self, error: BaseException) -> None:
        """A read on the replica failed with a fault that may pass (its caller reads the
        primary instead): a lost connection or a timeout leaves the replica out until the next
        check finds it again; anything else (a query cancelled by a conflict with replay,
        say) does not."""
        self.metrics.replica_fallback.inc()
        lost = isinstance(error, OSError | TimeoutError | asyncpg.PostgresConnectionError)
        if lost or isinstance(error, asyncpg.InterfaceError | ConnectionError):
            self.replica_failed(error)
        else:
            log.warning(
                "a read failed on the replica; the primary answers", extra={"error": str(error)}
            )

    def replica_failed(self, error: BaseException) -> None:
        """A read on the replica lost its connection: the primary answers until the next
        check finds the replica again."""
        self._set(False, self.health.replica_lag_s, f"{type(error).__name__}: {error}")

    def _set(self, usable: bool, lag_s: float | None, error: str | None) -> None:
        if usable != self._logged:
            self._logged = usable
            if usable:
                log.info("reading from the replica", extra={"replica_lag_s": lag_s})
            else:
                log.warning(
                    "replica not used; reading from the primary",
                    extra={"replica_lag_s": lag_s, "error": error},
                )
        self.usable = usable
        self.health.replica = usable
        self.health.replica_lag_s = None if lag_s is None else round(lag_s, 3)
        self.health.replica_error = error
        self.metrics.replica_up.set(1 if error is None else 0)
        if lag_s is not None:
            self.metrics.replica_lag.set(lag_s)

    async def check(self) -> None:
        """Measure the replica once (see the module's docstring) and decide whether to use it."""
        assert self.replica is not None
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                async with self.primary.acquire() as conn:
                    primary_at = lsn(await conn.fetchval(_PRIMARY_POSITION))
                now = time.monotonic()
                self.clock.sample(now, primary_at)
                async with self.replica.acquire() as conn:
                    row = await conn.fetchrow(_REPLAY)
        except Exception as exc:
            self._set(False, self.health.replica_lag_s, f"{type(exc).__name__}: {exc}")
            return
        if row is None or row[0] is None:  # not a standby: nothing replays there
            self._set(False, None, "AUDIT_DATABASE_READ_URL is not a standby (not in recovery)")
            return
        lag = self.clock.lag(time.monotonic(), lsn(row[0]), row[1])
        error = None if lag <= self.max_lag_s else f"lag {lag:.1f} s > {self.max_lag_s:g} s"
        self._set(error is None, lag, error)

    async def watch(self) -> None:
        """Check the replica every CHECK_INTERVAL_S until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(CHECK_INTERVAL_S)

    async def caught_up(self) -> asyncpg.Pool:
        """The pool on which everything committed on the primary so far is visible: the
        replica once it has replayed up to the primary's current position (waiting up to
        CATCH_UP_TIMEOUT_S), else the primary."""
        if self.replica is None or not self.usable:
            return self.pool()
        async with self.primary.acquire() as conn:
            target = lsn(await conn.fetchval(_PRIMARY_POSITION))
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        try:
            async with self.replica.acquire(timeout=CHECK_TIMEOUT_S) as conn:
                while True:
                    query = "SELECT pg_last_wal_replay_lsn()::text"
                    replayed = lsn(await conn.fetchval(query, timeout=CHECK_TIMEOUT_S))
                    if replayed >= target:
                        return self.replica
                    if time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(CATCH_UP_POLL_S)
        except Exception as exc:
            self.replica_failed(exc)
        self.metrics.replica_fallback.inc()
        return self.primary
