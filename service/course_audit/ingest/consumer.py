"""The Kafka consumer: fetch, decode, validate, then write each batch and commit its offsets.

Offsets are committed only after the database transaction holding the batch has committed,
so delivery is at-least-once and the idempotent store makes it exactly-once in effect.
Fetching and decoding overlaps with writing: up to two decoded batches wait for, or are in,
the database, written one after the other in fetch order, their offsets committed in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from asyncpg.pool import PoolConnectionProxy

from course_audit.config import Settings
from course_audit.ingest.decode import Decoder
from course_audit.ingest.validate import to_event
from course_audit.model import DeadLetter, Decoded, ErrorCode, Event, Rejection, Source
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics
from course_audit.store.errors import is_data_error, is_transient
from course_audit.store.partitions import add_months, ensure_partition_for, month_of
from course_audit.store.writer import write_batch, write_dead_letters, write_isolating

log = logging.getLogger(__name__)

#: The collector's first threshold while consuming (CPython's default: 700). See `tune_gc`.
GC_FIRST_THRESHOLD = 50_000

#: Decoding is synchronous CPU work; yield to the event loop this often so the writes in
#: flight (network I/O) make progress meanwhile. Each round trip of a write waits for up to
#: two yields: at ~45 us a message, every 250 made a ten-round-trip write outlast the
#: decoding of the next batch (9-10k events/s on the benchmark; 12-13.5k with 32). 16 keeps
#: a round trip near 1.5 ms for about 0.3 us a message (a yield costs ~5 us).
DECODE_YIELD_EVERY = 16

#: Batches handed to the writer and not yet committed: the one being written and the next,
#: so that the database starts on it as soon as the previous one is stored, and decoding
#: goes on meanwhile. On the benchmark's stream, with one the consumer waited for the store
#: about 15% of the time (the store and the decoder took about as long per batch).
WRITE_PIPELINE_DEPTH = 2


@dataclass
class Batch:
    """Outcomes of one fetch, in offset order, plus the offsets to commit afterwards."""

    generation: int
    events: list[Event] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    size: int = 0


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for the ingest path (process-wide).

    With CPython's defaults a collection ran every few dozen messages and moved the batch being
    decoded, and the one being written, into older generations, which full collections then
    scanned again along with the whole start-up heap (~80 ms each): 1.2 s of the consumer's
    6.7 s of CPU for 100,000 events. What the ingest path allocates is freed by reference
    counting (no cycles), so: freeze what start-up allocated (modules, schemas) out of every
    later collection, and collect the young generation once per 50,000 new container objects
    rather than 700. Measured after: one collection, 0.01-0.02 s, for the same 100,000 events
    (the consumer's CPU per event fell from ~67 to ~46 us).
    """
    gc.collect()  # garbage left now would otherwise be frozen with the rest
    gc.freeze()
    first, second, third = gc.get_threshold()
    if first < GC_FIRST_THRESHOLD:
        gc.set_threshold(GC_FIRST_THRESHOLD, second, third)


class Abandoned(Exception):
    """The batch in hand was given up (partitions revoked or shutdown during an outage)."""


@dataclass
class _Write:
    """A batch handed to the writer: its task, and whether its rows reached the database."""

    task: asyncio.Task[None]
    #: True once the batch's rows are stored, False if it was given up without.
    stored: asyncio.Future[bool]


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
        self._writes: list[_Write] = []  # oldest first, at most WRITE_PIPELINE_DEPTH
        self._conn: PoolConnectionProxy[Any] | None = None
        self._db_down = False

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop fetching; the batches in hand are finished and committed before `run` returns."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until stopped."""
        tune_gc()
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
            try:
                await self._settle_writes()
            finally:
                await self._release_connection()  # or closing the pool would wait for it
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
                while self._writes and self._writes[0].task.done():
                    await self._finish_oldest()
                continue
            batch = await self._decode(fetched)
            await self._wait_for_room(consumer, WRITE_PIPELINE_DEPTH - 1)
            if batch.generation != self._generation:
                continue  # fetched before a rebalance: the new owner re-reads it
            self._start_write(batch)
        await self._wait_for_room(consumer, 0)

    def _start_write(self, batch: Batch) -> None:
        previous = self._writes[-1] if self._writes else None
        stored: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._store_and_commit(batch, previous, stored))
        self._writes.append(_Write(task, stored))

    async def _finish_oldest(self) -> None:
        task = self._writes.pop(0).task
        try:
            await task
        except Abandoned:
            log.warning("batch abandoned; its messages will be read again")

    async def _wait_for_room(self, consumer: AIOKafkaConsumer, room: int) -> None:
        """Wait until at most `room` writes are pending; in an outage, poll with fetching paused."""
        while len(self._writes) > room:
            task = self._writes[0].task
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done() and self._db_down:
                    # Polling keeps the group membership alive (max.poll.interval) and lets
                    # rebalances run; paused partitions return nothing, so nothing piles up.
                    consumer.pause(*consumer.assignment())
                    await consumer.getmany(timeout_ms=0)
            await self._finish_oldest()
        if consumer.paused():
            consumer.resume(*consumer.paused())

    async def _settle_writes(self) -> None:
        """Wait for every write handed over (each finishes, or is given up in an outage)."""
        if self._writes:
            await asyncio.gather(*(w.task for w in self._writes), return_exceptions=True)

    # ------------------------------------------------------------ rebalance

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Finish (or, in an outage, abandon) the batches in hand before giving partitions up."""
        self._revoking = True
        try:
            await self._settle_writes()
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
        decoder = self.decoder
        decode_sync = decoder.decode_sync
        events, dead = batch.events, batch.dead
        until_yield = DECODE_YIELD_EVERY
        for tp, records in fetched.items():
            topic, partition = tp.topic, tp.partition
            self.metrics.consumed.labels(topic).inc(len(records))
            for record in records:
                value = record.value
                decoded = decode_sync(value)
                if decoded is None:
                    decoded = await decoder.decode(value)
                outcome = admit(decoded, now, cutoff, self.settings.retention_months)
                source = Source(
                    topic, partition, record.offset, record.key, value, tuple(record.headers or ())
                )
                if isinstance(outcome, Event):
                    outcome.source = source
                    events.append(outcome)
                else:
                    dead.append(_dead(source, outcome))
                until_yield -= 1
                if not until_yield:
                    until_yield = DECODE_YIELD_EVERY
                    await asyncio.sleep(0)
            batch.offsets[tp] = records[-1].offset + 1
            batch.size += len(records)
        return batch

    # ------------------------------------------------------------ writing

    async def _store_and_commit(
        self, batch: Batch, previous: _Write | None, stored: asyncio.Future[bool]
    ) -> None:
        try:
            # One write at a time, in fetch order (seq follows it). A batch whose predecessor
            # was given up is given up too: committing its offsets would skip the other's.
            if previous is not None and not await asyncio.shield(previous.stored):
                raise Abandoned()
            started = time.perf_counter()
            await self._store(batch)
        except BaseException:
            if not stored.done():
                stored.set_result(False)
            raise
        stored.set_result(True)
        if previous is not None:
            # Offsets are committed in order too; the predecessor's rows are stored, so it
            # can only be committing (its commit does not raise).
            await asyncio.wait({previous.task})
        await self._commit(batch)
        self.metrics.batch_size.observe(batch.size)
        self.metrics.write_seconds.observe(time.perf_counter() - started)

    async def _store(self, batch: Batch) -> None:
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

    async def _sleep_unless_abandoned(self, delay: float) -> None:
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self._revoking or self._stopping.is_set():
                raise Abandoned()
            await asyncio.sleep(min(0.1, deadline - time.monotonic()))

    async def _write(self, batch: Batch) -> None:
        """Store events and dead letters atomically; isolate rows the store rejects."""
        async with self._connection() as conn:
            if not batch.dead:
                # The usual batch, events only: one statement, atomic by itself, so no
                # transaction round trips (write_batch creates new months' partitions
                # first). A row the store rejects fails it with nothing written, and the
                # batch goes the isolating way below.
                try:
                    stored = await write_batch(conn, batch.events)
                except Exception as exc:
                    if not is_data_error(exc):
                        raise
                else:
                    self.metrics.stored.inc(stored.inserted)
                    self.metrics.duplicates.inc(stored.duplicates)
                    return
            # New months' partitions first, outside the batch transaction: creating one
            # locks the parent table, which other consumers' open batches would hold up.
            await ensure_partition_for(conn, {month_of(e.created_at) for e in batch.events})
            dead = list(batch.dead)
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

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[PoolConnectionProxy[Any]]:
        """The consumer's connection, kept from one batch to the next.

        Giving a connection back to the pool resets it, a round trip that every batch would
        wait for (at the decoder's next yield). One that failed goes back to the pool, which
        replaces it if it is broken; the next batch takes a fresh one.
        """
        if self._conn is None:
            self._conn = await self.pool.acquire()
        try:
            yield self._conn
        except BaseException:
            await self._release_connection()
            raise

    async def _release_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.pool.release(conn)

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


def admit(
    decoded: Decoded | Rejection, now: datetime, cutoff: datetime, months: int
) -> Event | Rejection:
    """Validate a decoded message and apply the retention policy: what may be stored."""
    if not isinstance(decoded, Decoded):
        return decoded
    outcome = to_event(decoded, now=now)
    if isinstance(outcome, Event) and outcome.created_at < cutoff:
        return beyond_retention(outcome, cutoff, months)
    return outcome


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
