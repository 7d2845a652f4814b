"""The Kafka consumer: one member of the group, fetching, decoding and handing batches over.

Offsets are committed only after the database transaction holding the batch has committed,
so delivery is at-least-once and the idempotent store makes it exactly-once in effect.
Fetching and decoding overlap with writing (`WritePipeline`); storing and its retries are
`BatchStore`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from course_audit.config import Settings
from course_audit.ingest.admit import Admission
from course_audit.ingest.batch import Batch, dead_letter
from course_audit.ingest.decode import Decoder
from course_audit.ingest.pipeline import WRITE_PIPELINE_DEPTH, WritePipeline
from course_audit.ingest.records import Unreadable, unreadable_letter
from course_audit.ingest.records import install as install_tolerant_records
from course_audit.ingest.storing import BatchStore
from course_audit.kafka_check import probe
from course_audit.model import Decoded, Event, Rejection, Source
from course_audit.retry import DATABASE_BACKOFF, REGISTRY_BACKOFF, Backoff
from course_audit.runtime.health import Health
from course_audit.runtime.metrics import Metrics
from course_audit.security import kafka_identity, kafka_options
from course_audit.wire.registry import RegistryUnavailable

log = logging.getLogger(__name__)

#: Decoding is synchronous CPU work; yield to the event loop this often so the write in
#: flight (network I/O) makes progress meanwhile (docs/performance.md#decode-yield).
DECODE_YIELD_EVERY = 16
#: While waiting for the schema registry, Kafka is polled (partitions paused) this often.
REGISTRY_IDLE_POLL_S = 0.5


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
        backoff: Backoff = DATABASE_BACKOFF,
        *,
        registry_backoff: Backoff = REGISTRY_BACKOFF,
        max_poll_interval_ms: int = 300_000,
    ) -> None:
        self.settings = settings
        self.decoder = decoder
        self.metrics = metrics
        self.health = health
        self.health.subscribed = False
        self.health.registry = None if decoder.registry is None else True
        self._registry_backoff = registry_backoff
        self._max_poll_interval_ms = max_poll_interval_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        # Set while revoking or stopping: a batch that cannot be stored then is given up.
        self._give_up = asyncio.Event()
        self._generation = 0
        #: Whether this member was ever assigned partitions (a supervisor's reset signal).
        self.joined = False
        self._store = BatchStore(pool, metrics, health, self._give_up, backoff)
        self._pipeline: WritePipeline[Batch] = WritePipeline(self._write, self._commit)

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop fetching; the batches in hand are finished and committed before `run` returns."""
        self._stopping.set()
        self._give_up.set()

    async def run(self) -> None:
        """Consume until stopped."""
        s = self.settings
        install_tolerant_records()  # a record aiokafka cannot read becomes a dead letter
        # Read now, so a rotated password file is used by the next consumer started.
        options = kafka_options(s)
        # aiokafka's start says only "Unable to bootstrap": the probe says why (KafkaUnavailable).
        await probe(options, kafka_identity(s))
        consumer = AIOKafkaConsumer(
            **options,
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
            max_poll_interval_ms=self._max_poll_interval_ms,
        )
        self._consumer = consumer
        consumer.subscribe(topics=list(s.kafka_topics), listener=_Rebalance(self))
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        log.info("consumer started", extra={"topics": list(s.kafka_topics)})
        try:
            await self._loop(consumer)
        finally:
            try:
                await self._pipeline.settle()
            finally:
                await self._store.close()
            self.health.subscribed = False
            await consumer.stop()
            log.info("consumer stopped")

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        async def keep_polling() -> None:
            if self._store.down:
                # Polling keeps the group membership alive (max.poll.interval) and lets
                # rebalances run; paused partitions return nothing, so nothing piles up.
                consumer.pause(*consumer.assignment())
                await consumer.getmany(timeout_ms=0)

        async def wait_for_room(room: int) -> None:
            await self._pipeline.wait_for_room(room, keep_polling)
            if consumer.paused():
                consumer.resume(*consumer.paused())

        while not self._stopping.is_set():
            fetched = await consumer.getmany(
                timeout_ms=self.settings.batch_max_latency_ms,
                max_records=self.settings.batch_max_records,
            )
            if not fetched:
                await self._pipeline.finish_done()
                continue
            batch = await self._decode(fetched)
            if batch is None:
                continue  # given up while fetching schemas: it is read again, uncommitted
            batch.prepare()
            await wait_for_room(WRITE_PIPELINE_DEPTH - 1)
            if batch.generation != self._generation:
                continue  # fetched before a rebalance: the new owner re-reads it
            self._pipeline.submit(batch)
        await wait_for_room(0)

    # ------------------------------------------------------------ rebalance

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Finish (or, in an outage, abandon) the batches in hand before giving partitions up."""
        self._give_up.set()
        try:
            await self._pipeline.settle()
        finally:
            self._generation += 1
            if not self._stopping.is_set():
                self._give_up.clear()
        log.info("partitions revoked", extra={"partitions": [str(tp) for tp in revoked]})

    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        self.joined = True
        self.health.subscribed = True
        self.health.consumer_error = None
        for tp in assigned:
            self.metrics.lag.labels(tp.topic, str(tp.partition))
        log.info("partitions assigned", extra={"partitions": [str(tp) for tp in assigned]})

    # ------------------------------------------------------------ decoding

    async def _decode(self, fetched: dict[TopicPartition, list[Any]]) -> Batch | None:
        """Decode and admit a fetch; None if it is given up (see `_fetch_schemas`)."""
        batch = Batch(generation=self._generation)
        whole_batch: list[bytes | None] | None = None
        admission = Admission.at(datetime.now(UTC), self.settings.retention_months)
        admit = admission.admit
        decoder = self.decoder
        decode_sync = decoder.decode_sync
        events, dead = batch.events, batch.dead
        until_yield = DECODE_YIELD_EVERY
        for tp, records in fetched.items():
            topic, partition = tp.topic, tp.partition
            self.metrics.consumed.labels(topic).inc(len(records))
            for record in records:
                value = record.value
                if type(value) is Unreadable:
                    dead.append(unreadable_letter(topic, partition, record))
                    continue
                decoded = decode_sync(value)
                if decoded is None:
                    # A Confluent message with a schema id not known yet: the first one fetches
                    # every new id of the batch at once, so the others decode at once too.
                    if whole_batch is None:
                        whole_batch = [r.value for rs in fetched.values() for r in rs]
                        decoded = await self._decode_fetching(value, whole_batch, batch.generation)
                    else:
                        decoded = await self._decode_fetching(value, [value], batch.generation)
                    if decoded is None:
                        return None
                source = Source(
                    topic, partition, record.offset, record.key, value, tuple(record.headers or ())
                )
                outcome = admit(decoded, source)
                if isinstance(outcome, Event):
                    events.append(outcome)
                else:
                    dead.append(dead_letter(source, outcome))
                until_yield -= 1
                if not until_yield:
                    until_yield = DECODE_YIELD_EVERY
                    await asyncio.sleep(0)
            batch.offsets[tp] = records[-1].offset + 1
            batch.size += len(records)
        return batch

    async def _decode_fetching(
        self, value: bytes | None, values: list[bytes | None], generation: int
    ) -> Decoded | Rejection | None:
        """Fetch the schemas `values` lack, then decode `value`; None if the batch is given up."""
        while True:
            if not await self._fetch_schemas(values, generation):
                return None
            decoded = self.decoder.decode_sync(value)
            if decoded is not None:
                return decoded
            values = [value]  # its answer was crowded out of the decoder's cache: just this one

    async def _fetch_schemas(self, values: list[bytes | None], generation: int) -> bool:
        """Fetch the schemas `values` lack, retrying while the registry is unreachable.

        Like a database outage: partitions are paused but polled (the member stays in its
        group), readiness says `registry: false`, retries back off. False means the batch is
        given up, uncommitted: the consumer is stopping, or its partitions were revoked.
        """
        attempt = 0
        while True:
            fetch = asyncio.ensure_future(self.decoder.fetch_schemas(values))
            if not await self._wait_polling(fetch, generation):
                return False
            try:
                fetch.result()
            except RegistryUnavailable as exc:
                attempt += 1
                self.health.registry = False
                self.metrics.registry_errors.inc()
                delay = self._registry_backoff.delay(attempt)
                log.warning(
                    "schema registry unavailable, retrying",
                    extra={"error": str(exc), "retry_in_s": delay},
                )
                if not await self._wait_polling(
                    asyncio.ensure_future(asyncio.sleep(delay)), generation
                ):
                    return False
                continue
            if self.health.registry is False:
                log.info("schema registry reachable again; resuming")
            self.health.registry = True
            return True

    async def _wait_polling(self, task: asyncio.Future[Any], generation: int) -> bool:
        """Wait for `task`, polling Kafka with every partition paused meanwhile.

        Returns False, with `task` cancelled, if the consumer stops or the batch's partitions
        are revoked first.
        """
        consumer = self._consumer
        assert consumer is not None
        stopping = asyncio.ensure_future(self._stopping.wait())
        paused = False
        try:
            while True:
                await asyncio.wait(
                    {task, stopping},
                    timeout=REGISTRY_IDLE_POLL_S,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if self._stopping.is_set() or self._generation != generation:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    return False
                if task.done():
                    return True
                # Polling keeps the member in its group (max.poll.interval) and lets
                # rebalances run; paused partitions return nothing.
                consumer.pause(*consumer.assignment())
                paused = True
                await consumer.getmany(timeout_ms=0)
        finally:
            stopping.cancel()
            if paused and consumer.paused():
                consumer.resume(*consumer.paused())

    # ------------------------------------------------------------ writing

    async def _write(self, batch: Batch) -> None:
        batch.started = time.perf_counter()
        await self._store.store(batch)

    async def _commit(self, batch: Batch) -> None:
        consumer = self._consumer
        assert consumer is not None
        committed = False
        try:
            await consumer.commit(batch.offsets)
            committed = True
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on (rebalance): the stored rows are idempotent, the new owner
            # re-reads from the last committed offset.
            log.warning("offset commit refused after rebalance", extra={"error": str(exc)})
        except KafkaError as exc:
            log.warning("offset commit failed; messages may be re-read", extra={"error": str(exc)})
        self.metrics.batch_size.observe(batch.size)
        self.metrics.write_seconds.observe(time.perf_counter() - batch.started)
        if not committed:
            return
        for tp, offset in batch.offsets.items():
            high = consumer.highwater(tp)
            if high is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - offset))
