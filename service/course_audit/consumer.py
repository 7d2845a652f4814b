"""The Kafka consumer: fetch, decode, validate, then write each batch and commit its offsets.

Offsets are committed only after the database transaction holding the batch has committed,
so delivery is at-least-once and the idempotent store makes it exactly-once in effect.
Fetching and decoding the next batch overlaps with writing the previous one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from .config import Settings
from .decode import Decoder
from .health import Health
from .metrics import Metrics
from .model import DeadLetter, Decoded, ErrorCode, Event, Rejection, Source
from .store.errors import is_transient
from .store.partitions import add_months, ensure_partition_for, month_of
from .store.writer import write_dead_letters, write_isolating
from .validate import to_event

log = logging.getLogger(__name__)

#: Decoding is synchronous CPU work; yield to the event loop this often so the write of the
#: previous batch (network I/O) makes progress meanwhile.
DECODE_YIELD_EVERY = 250


@dataclass
class Batch:
    """Outcomes of one fetch, in offset order, plus the offsets to commit afterwards."""

    generation: int
    events: list[Event] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    size: int = 0


class Abandoned(Exception):
    """The batch in hand was given up (partitions revoked or shutdown during an outage)."""


@dataclass
class Backoff:
    """Capped exponential backoff for database retries (no attempt limit)."""

    first: float = 0.2
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        return float(min(self.cap, self.first * 2 ** min(attempt, 20)))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Ingestor) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.owner.on_assigned(list(assigned))


class Ingestor:
    """Runs one member of the consumer group until `stop()` is called."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        decoder: Decoder,
        metrics: Metrics,
        health: Health,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.decoder = decoder
        self.metrics = metrics
        self.health = health
        self.backoff = backoff or Backoff()
        self.health.subscribed = False
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._revoking = False
        self._generation = 0
        self._in_flight: asyncio.Task[None] | None = None
        self._db_down = False

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop fetching; the batch in hand is finished and committed before `run` returns."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until stopped."""
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.kafka_group_id,
            client_id=f"course-audit-{s.kafka_group_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=s.batch_max_records,
            fetch_max_wait_ms=s.batch_max_latency_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(100, s.kafka_session_timeout_ms // 5),
        )
        self._consumer = consumer
        consumer.subscribe(topics=list(s.kafka_topics), listener=_Rebalance(self))
        await consumer.start()
        log.info("consumer started", extra={"topics": list(s.kafka_topics)})
        try:
            await self._loop(consumer)
        finally:
            if self._in_flight is not None:
                await asyncio.gather(self._in_flight, return_exceptions=True)
            self.health.subscribed = False
            await consumer.stop()
            log.info("consumer stopped")

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            fetched = await consumer.getmany(
                timeout_ms=self.settings.batch_max_latency_ms,
                max_records=self.settings.batch_max_records,
            )
            if not fetched:
                if self._in_flight is not None and self._in_flight.done():
                    await self._finish_in_flight()
                continue
            batch = await self._decode(fetched)
            await self._wait_in_flight(consumer)
            if batch.generation != self._generation:
                continue  # fetched before a rebalance: the new owner re-reads it
            self._in_flight = asyncio.create_task(self._store_and_commit(batch))
        await self._wait_in_flight(consumer)

    async def _finish_in_flight(self) -> None:
        task, self._in_flight = self._in_flight, None
        if task is not None:
            try:
                await task
            except Abandoned:
                log.warning("batch abandoned; its messages will be read again")

    async def _wait_in_flight(self, consumer: AIOKafkaConsumer) -> None:
        """Wait for the previous batch; during an outage keep polling with fetching paused."""
        task = self._in_flight
        while task is not None and not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and self._db_down:
                # Polling keeps the group membership alive (max.poll.interval) and lets
                # rebalances run; paused partitions return nothing, so nothing piles up.
                consumer.pause(*consumer.assignment())
                await consumer.getmany(timeout_ms=0)
        await self._finish_in_flight()
        if consumer.paused():
            consumer.resume(*consumer.paused())

    # ------------------------------------------------------------ rebalance

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Finish (or, in an outage, abandon) the batch in hand before giving partitions up."""
        self._revoking = True
        try:
            if self._in_flight is not None:
                await asyncio.gather(self._in_flight, return_exceptions=True)
        finally:
            self._generation += 1
            self._revoking = False
        log.info("partitions revoked", extra={"partitions": [str(tp) for tp in revoked]})

    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        self.health.subscribed = True
        for tp in assigned:
            self.metrics.lag.labels(tp.topic, str(tp.partition))
        log.info("partitions assigned", extra={"partitions": [str(tp) for tp in assigned]})

    # ------------------------------------------------------------ decoding

    async def _decode(self, fetched: dict[TopicPartition, list[Any]]) -> Batch:
        batch = Batch(generation=self._generation)
        now = datetime.now(UTC)
        cutoff = retention_cutoff(now, self.settings.retention_months)
        seen = 0
        for tp, records in fetched.items():
            self.metrics.consumed.labels(tp.topic).inc(len(records))
            for record in records:
                decoded = self.decoder.decode_sync(record.value)
                if decoded is None:
                    decoded = await self.decoder.decode(record.value)
                outcome = to_event(decoded, now=now) if isinstance(decoded, Decoded) else decoded
                if isinstance(outcome, Event) and outcome.created_at < cutoff:
                    outcome = beyond_retention(outcome, cutoff, self.settings.retention_months)
                source = Source(
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=record.offset,
                    key=record.key,
                    value=record.value,
                    headers=tuple(record.headers or ()),
                )
                if isinstance(outcome, Event):
                    outcome.source = source
                    batch.events.append(outcome)
                else:
                    batch.dead.append(_dead(source, outcome))
                seen += 1
                if seen % DECODE_YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            batch.offsets[tp] = records[-1].offset + 1
            batch.size += len(records)
        return batch

    # ------------------------------------------------------------ writing

    async def _store_and_commit(self, batch: Batch) -> None:
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                await self._write(batch)
                break
            except Abandoned:
                raise
            except Exception as exc:
                # Never lose the batch and never crash: anything but a row's own data error
                # (isolated in _write) is retried with backoff, offsets uncommitted.
                self._db_down = True
                self.health.database_ok = False
                self.metrics.db_errors.inc()
                delay = self.backoff.delay(attempt)
                extra = {"error": f"{type(exc).__name__}: {exc}", "retry_in_s": delay}
                if is_transient(exc):
                    log.warning("database unavailable, retrying", extra=extra)
                else:
                    log.error("unexpected store error, retrying", extra=extra, exc_info=exc)
                attempt += 1
                await self._sleep_unless_abandoned(delay)
        if self._db_down:
            log.info("database reachable again; resuming")
        self._db_down = False
        self.health.database_ok = True
        await self._commit(batch)
        self.metrics.batch_size.observe(batch.size)
        self.metrics.write_seconds.observe(time.perf_counter() - started)

    async def _sleep_unless_abandoned(self, delay: float) -> None:
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self._revoking or self._stopping.is_set():
                raise Abandoned()
            await asyncio.sleep(min(0.1, deadline - time.monotonic()))

    async def _write(self, batch: Batch) -> None:
        """Store events and dead letters in one transaction; isolate rows the store rejects."""
        dead = list(batch.dead)
        async with self.pool.acquire() as conn:
            # New months' partitions first, outside the batch transaction: creating one
            # locks the parent table, which other consumers' open batches would hold up.
            await ensure_partition_for(conn, {month_of(e.created_at) for e in batch.events})
            async with conn.transaction():
                result = await write_isolating(conn, batch.events)
                for rejected in result.rejected:
                    assert rejected.event.source is not None
                    reason = f"{type(rejected.error).__name__}: {rejected.error}"
                    dead.append(
                        _dead(rejected.event.source, Rejection(ErrorCode.STORE_REJECTED, reason))
                    )
                if dead:
                    await write_dead_letters(conn, dead)
        self.metrics.stored.inc(result.inserted)
        self.metrics.duplicates.inc(result.duplicates)
        for letter in dead:
            self.metrics.dead_lettered.labels(letter.code.value).inc()

    async def _commit(self, batch: Batch) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            await consumer.commit(batch.offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on (rebalance): the stored rows are idempotent, the new owner
            # re-reads from the last committed offset.
            log.warning("offset commit refused after rebalance", extra={"error": str(exc)})
            return
        except KafkaError as exc:
            log.warning("offset commit failed; messages may be re-read", extra={"error": str(exc)})
            return
        for tp, offset in batch.offsets.items():
            high = consumer.highwater(tp)
            if high is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - offset))


def retention_cutoff(now: datetime, retention_months: int) -> datetime:
    """Events before this instant are past retention (the start of the oldest month kept)."""
    if retention_months <= 0:
        return datetime.min.replace(tzinfo=UTC)
    oldest = add_months(month_of(now), -retention_months)
    return datetime(oldest.year, oldest.month, 1, tzinfo=UTC)


def beyond_retention(event: Event, cutoff: datetime, months: int) -> Rejection:
    """The dead-letter reason for an event the retention policy would drop on arrival."""
    return Rejection(
        ErrorCode.BEYOND_RETENTION,
        f"created_at {event.created_at.isoformat()} is before {cutoff.date().isoformat()}, "
        f"outside the {months}-month retention period (AUDIT_RETENTION_MONTHS); raise it and "
        "run `course-audit dlq replay --code beyond_retention` to store it",
    )


def _dead(source: Source, rejection: Rejection) -> DeadLetter:
    return DeadLetter(
        source=source,
        code=rejection.code,
        message=rejection.message,
        failed_at=datetime.now(UTC),
    )
