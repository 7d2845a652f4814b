"""Storing a batch: events and dead letters atomically, bad rows isolated, the database retried.

A batch is never lost and never crashes the consumer: a row the database refuses for its own
data becomes a `store_rejected` dead letter while the rest is stored, an event whose id is
already stored otherwise a `conflicting_event_id` one; any other failure (an outage, or a
fault no row causes: store/errors.py) is retried with backoff for as long as it takes
(readiness false meanwhile), unless the batch is given up (partitions revoked, or shutdown) -
then its offsets stay uncommitted and the messages are read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from course_audit.ingest.batch import Batch, dead_letter
from course_audit.ingest.pipeline import Abandoned
from course_audit.model import DeadLetter, ErrorCode, Rejection
from course_audit.retention import month_of
from course_audit.retry import DATABASE_BACKOFF, Backoff, wait_or_stop
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics
from course_audit.store.errors import describe, is_data_error, is_transient
from course_audit.store.partitions import ensure_partition_for
from course_audit.store.writer import (
    Conflict,
    TenantClaim,
    write_batch,
    write_dead_letters,
    write_isolating,
)

log = logging.getLogger(__name__)


class BatchStore:
    """Writes batches through one pooled connection, kept from one batch to the next."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: Metrics,
        health: Health,
        give_up: asyncio.Event,
        backoff: Backoff = DATABASE_BACKOFF,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.health = health
        #: Set while batches that cannot be stored now are to be given up, not retried.
        self.give_up = give_up
        self.backoff = backoff
        #: True from a failed write until the next one succeeds.
        self.down = False
        self._conn: PoolConnectionProxy[Any] | None = None

    async def store(self, batch: Batch) -> None:
        """Store `batch`, retrying until it is stored; raise Abandoned if it is given up."""
        attempt = 0
        while True:
            try:
                await self._write(batch)
                break
            except Exception as exc:
                attempt += 1
                self.down = True
                self.health.writes_failing = True
                self.metrics.db_errors.inc()
                delay = self.backoff.delay(attempt)
                extra = {"error": describe(exc), "retry_in_s": delay}
                if is_transient(exc):
                    log.warning("database unavailable, retrying", extra=extra)
                else:
                    # Not an outage and not a row's data (those are dead letters by now): a
                    # statement, privilege or server fault, for an operator; retried meanwhile
                    # (docs/design.md#store-error-classes).
                    log.error("unexpected store error, retrying", extra=extra, exc_info=exc)
                if await wait_or_stop(delay, self.give_up):
                    raise Abandoned() from None
        if self.down:
            log.info("database reachable again; resuming")
        self.down = False
        self.health.writes_failing = False

    async def close(self) -> None:
        """Give the kept connection back to the pool (or closing the pool would wait for it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.pool.release(conn)

    async def _write(self, batch: Batch) -> None:
        async with self._connection() as conn:
            if not batch.dead:
                # The usual batch, events only: one statement, atomic by itself, so no
                # transaction round trips (write_batch creates new months' partitions
                # first). A row the store rejects fails it with nothing written, and the
                # batch goes the isolating way below.
                try:
                    stored = await write_batch(conn, batch.events, document=batch.document)
                except Exception as exc:
                    if not is_data_error(exc):
                        raise
                else:
                    self.metrics.stored.inc(stored.inserted)
                    self.metrics.duplicates.inc(stored.duplicates)
                    self._report_claims(stored.tenant_claims)
                    # Rare: events whose id is stored with another created_at or content.
                    # Their letters come after the committed batch; if writing them fails,
                    # the retry finds the batch stored and the same conflicts again.
                    conflicts = [_conflict_letter(c) for c in stored.conflicts]
                    if conflicts:
                        await write_dead_letters(conn, conflicts)
                    self._count_dead(conflicts)
                    return
            # New months' partitions first, outside the batch transaction: creating one
            # locks the parent table, which other consumers' open batches would hold up.
            await ensure_partition_for(conn, {month_of(e.created_at) for e in batch.events})
            dead = list(batch.dead)
            async with conn.transaction():
                result = await write_isolating(conn, batch.events)
                for rejected in result.rejected:
                    assert rejected.event.source is not None
                    reason = describe(rejected.error)
                    dead.append(
                        dead_letter(
                            rejected.event.source, Rejection(ErrorCode.STORE_REJECTED, reason)
                        )
                    )
                dead.extend(_conflict_letter(c) for c in result.conflicts)
                if dead:
                    await write_dead_letters(conn, dead)
        self.metrics.stored.inc(result.inserted)
        self.metrics.duplicates.inc(result.duplicates)
        self._report_claims(result.tenant_claims)
        self._count_dead(dead)

    def _report_claims(self, claims: list[TenantClaim]) -> None:
        """Say which producer data first put a course or account under a second root account
        (docs/store.md#tenant-scope); the events are stored under the root they name."""
        for claim in claims:
            self.metrics.tenant_claims.labels(claim.kind).inc()
            log.warning(
                f"{claim.kind} stored under a second root account",
                extra={
                    "kind": claim.kind,
                    "id": claim.id,
                    "root_account_id": claim.root_account_id,
                    "other_root_account_ids": list(claim.other_root_account_ids),
                },
            )

    def _count_dead(self, letters: list[DeadLetter]) -> None:
        for letter in letters:
            self.metrics.dead_lettered.labels(letter.code.value).inc()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[PoolConnectionProxy[Any]]:
        """The kept connection (giving it back to the pool would cost a reset round trip per
        batch). One that failed goes back to the pool, which replaces it if it is broken."""
        if self._conn is None:
            self._conn = await self.pool.acquire()
        try:
            yield self._conn
        except BaseException:
            await self.close()
            raise


def _conflict_letter(conflict: Conflict) -> DeadLetter:
    assert conflict.event.source is not None
    return dead_letter(
        conflict.event.source, Rejection(ErrorCode.CONFLICTING_EVENT_ID, conflict.message())
    )
