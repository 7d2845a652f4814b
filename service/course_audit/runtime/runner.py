"""Process wiring for `run`, `consume` and `serve`: pool, migrations, tasks, signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
from aiohttp import web

from course_audit.config import ConfigError, Settings
from course_audit.ingest.consumer import Ingestor
from course_audit.ingest.decode import Decoder
from course_audit.kafka_check import KafkaUnavailable
from course_audit.retry import DATABASE_BACKOFF, Backoff, RepeatLimiter, wait_or_stop
from course_audit.runtime.gc_tuning import tune_gc
from course_audit.runtime.health import Health
from course_audit.runtime.http_server import http_site, raise_open_files_limit
from course_audit.runtime.metrics import Metrics
from course_audit.runtime.replica import Reads
from course_audit.runtime.web import RUNTIME, build_app
from course_audit.store.errors import is_transient
from course_audit.store.expiry import expire_dead_letters, expire_snapshots
from course_audit.store.migrate import migrate, pending_migrations
from course_audit.store.partitions import drop_expired, ensure_partitions
from course_audit.wire.registry import RegistryClient
from course_audit.wire.schemas import SchemaCatalog

log = logging.getLogger(__name__)

#: How often a process waiting for `course-audit migrate` checks the schema again.
MIGRATION_POLL_S = 5.0
#: Between consumers started after a failure (Kafka unreachable, say): soon, then every 30 s.
CONSUMER_BACKOFF = Backoff(first=1.0, cap=30.0, jitter=0.2)
#: The same Kafka failure (a wrong password, say) is logged again at most this often.
KAFKA_FAILURE_LOG_EVERY_S = 120.0


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's per-release session reset (one round trip per API request).

    Nothing here leaves session state behind: advisory locks are transaction-scoped and
    settings are SET LOCAL (docs/performance.md#session-reset).
    """


async def open_pool(
    settings: Settings, health: Health, stopping: asyncio.Event, url: str | None = None
) -> asyncpg.Pool:
    """Create a connection pool (to `url`, else AUDIT_DATABASE_URL), waiting (with backoff)
    while the database is unreachable."""
    attempt = 0
    while True:
        try:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                url or settings.database_url,
                min_size=1,
                max_size=settings.db_pool_max,
                command_timeout=60,
                reset=_keep_session,
            )
            health.database_ok = True
            return pool
        except Exception as exc:
            if not is_transient(exc) and not isinstance(exc, OSError):
                raise
            attempt += 1
            delay = DATABASE_BACKOFF.delay(attempt)
            log.warning(
                "database unreachable at start-up", extra={"error": str(exc), "retry_in_s": delay}
            )
            if await wait_or_stop(delay, stopping):
                raise asyncio.CancelledError() from exc


async def prepare_store(
    settings: Settings,
    pool: asyncpg.Pool,
    health: Health,
    stopping: asyncio.Event,
    *,
    create_partitions: bool = True,
) -> None:
    """Apply migrations (unless disabled), else wait for them; create the coming partitions
    (the consumer's job: `serve`'s read-only role may not).

    Migrations run as AUDIT_DATABASE_URL's role, the schema's owner, whatever role `pool`
    has (docs/operations.md#database-roles). With AUDIT_MIGRATE_ON_START=false another
    process (a migration job) owns the schema: this one stays unready and starts no work
    until that job has applied every migration.
    """
    if settings.migrate_on_start:
        owner = await asyncpg.connect(settings.database_url)
        try:
            applied = await migrate(owner)
        finally:
            await owner.close()
        if applied:
            log.info("migrations applied", extra={"versions": applied})
    async with pool.acquire() as conn:
        pending = await pending_migrations(conn)
        while pending:
            health.migrations_ok = False
            log.error(
                "database schema is behind; waiting for `course-audit migrate`",
                extra={"pending": [m.version for m in pending]},
            )
            if await wait_or_stop(MIGRATION_POLL_S, stopping):
                raise asyncio.CancelledError()
            pending = await pending_migrations(conn)
        health.migrations_ok = True
        if create_partitions:
            await ensure_partitions(conn, settings.partitions_ahead)


async def maintain(settings: Settings, pool: asyncpg.Pool) -> dict[str, Any]:
    """One maintenance pass: create partitions ahead, drop expired months, then expire the
    snapshots no stored event refers to and old dead letters; return what changed.

    What has expired is decided by the database's clock (docs/store.md#retention).
    """
    async with pool.acquire() as conn:
        created = await ensure_partitions(conn, settings.partitions_ahead)
        dropped = await drop_expired(conn, settings.retention_months)
        snapshots = await expire_snapshots(conn, settings.retention_months)
        letters = await expire_dead_letters(conn, settings.dead_letter_retention_days)
    # (Not "created": every log record has an attribute of that name.)
    done = {
        "partitions_created": created,
        "partitions_dropped": dropped,
        "snapshots_expired": {k: v for k, v in snapshots.items() if v},
        "dead_letters_expired": letters,
    }
    if any(done.values()):
        log.info("maintenance", extra=done)
    return done


async def _maintenance_loop(settings: Settings, pool: asyncpg.Pool) -> None:
    while True:
        await asyncio.sleep(settings.maintenance_interval_s)
        try:
            await maintain(settings, pool)
        except Exception as exc:  # the next round tries again; never kill the process
            log.warning("maintenance failed", extra={"error": str(exc)})


async def _watch_database(pools: list[asyncpg.Pool], health: Health) -> None:
    """Keep `database_ok` current for readiness: whether the database answers a query now,
    through every pool of the process.

    (A consumer whose writes fail says so itself, in `writes_failing`: the database may
    answer while a batch still cannot be stored.)
    """
    while True:
        await asyncio.sleep(1.0)
        try:
            for pool in pools:
                async with pool.acquire(timeout=2) as conn:
                    await conn.fetchval("SELECT 1", timeout=2)
            health.database_ok = True
        except Exception:
            health.database_ok = False


async def supervise_consumer(
    make: Callable[[], Ingestor],
    health: Health,
    stopping: asyncio.Event,
    backoff: Backoff = CONSUMER_BACKOFF,
    *,
    metrics: Metrics | None = None,
    repeats: RepeatLimiter | None = None,
) -> None:
    """Run a consumer until `stopping` is set, starting a new one whenever it fails.

    A consumer that cannot reach Kafka, or fails in any other way, never ends the process:
    in `run` the API goes on serving, and readiness says what is wrong (`consumer_error`)
    until a new consumer has joined its group.

    Kafka refusing the consumer (unreachable, TLS, authentication: `KafkaUnavailable`) or a
    password file gone unreadable is one line without a traceback, logged when it first
    happens, when it changes, and otherwise at most every KAFKA_FAILURE_LOG_EVERY_S seconds;
    `course_audit_kafka_connect_failures_total` counts every attempt.
    """
    repeats = repeats or RepeatLimiter(KAFKA_FAILURE_LOG_EVERY_S)
    attempt = 0
    while True:
        ingestor = make()
        task = asyncio.create_task(ingestor.run())
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            log.info("stopping: finishing the batch in hand")
            ingestor.stop()
            await task
            return
        stop_wait.cancel()
        error = None if task.cancelled() else task.exception()
        if error is None:
            return  # it only ends by itself once stopped
        if ingestor.joined:
            attempt = 1
            repeats.reset()
        else:
            attempt += 1
        delay = backoff.delay(attempt)
        health.subscribed = False
        if isinstance(error, KafkaUnavailable | ConfigError):
            kind = error.kind if isinstance(error, KafkaUnavailable) else "configuration"
            health.consumer_error = str(error)[:500]
            if metrics is not None:
                metrics.kafka_connect_failures.labels(kind).inc()
            hidden = repeats.admit(str(error))
            if hidden is not None:
                log.error(
                    str(error),
                    extra={
                        "kafka_error": kind,
                        "attempt": attempt,
                        "retry_in_s": round(delay, 2),
                        "repeats_not_logged": hidden,
                    },
                )
        else:
            repeats.reset()
            health.consumer_error = f"{type(error).__name__}: {error}"[:500]
            log.error(
                "consumer failed; starting a new one",
                extra={"error": health.consumer_error, "retry_in_s": delay},
                exc_info=error,
            )
        if await wait_or_stop(delay, stopping):
            return


def _worker_header(
    number: str,
) -> Callable[[web.Request, web.StreamResponse], Coroutine[Any, Any, None]]:
    from course_audit.runtime.workers import WORKER_HEADER

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = number

    return add


async def run_roles(
    settings: Settings, *, consume: bool, serve_api: bool = False, worker: int | None = None
) -> int:
    """Run the chosen roles until SIGTERM/SIGINT; return the exit status.

    `worker`: this process is that API worker of several sharing one port
    (AUDIT_API_WORKERS, runtime/workers.py).
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    health = Health(subscribed=False if consume else None)
    metrics = Metrics()
    app = build_app(settings, health, metrics)
    if serve_api:
        from course_audit.api import install_api

        install_api(app)
    if worker is not None:
        app.on_response_prepare.append(_worker_header(str(worker)))
    raise_open_files_limit(settings.http_max_connections)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # Request-head and keep-alive deadlines, a connection cap, one-line protocol errors.
    await http_site(runner, settings, metrics, reuse_port=worker is not None).start()
    # The port actually bound: with AUDIT_HTTP_PORT=0 the system picks it.
    port = runner.addresses[0][1]
    where: dict[str, Any] = {"host": settings.http_host, "port": port}
    if worker is not None:
        where.update(worker=worker, pid=os.getpid())
    log.info("http listening", extra=where)

    background: list[asyncio.Task[None]] = []
    pools: list[asyncpg.Pool] = []
    pools_extra: list[asyncpg.Pool] = []  # the read replica's: not watched as the database
    registry: RegistryClient | None = None
    # Each role with its own database role (docs/operations.md#database-roles): one pool
    # per distinct URL.
    consumer_url = settings.consumer_database_url or settings.database_url
    api_url = settings.api_database_url or settings.database_url
    try:
        pool = await open_pool(settings, health, stopping, consumer_url if consume else api_url)
        pools.append(pool)
        if consume and serve_api and api_url != consumer_url:
            pools.append(await open_pool(settings, health, stopping, api_url))
        # Attached before readiness can turn true, so a ready API never answers 503 for it.
        app[RUNTIME].pool = pools[-1]
        if serve_api and settings.database_read_url:
            # No connection yet (min_size=0): a replica that is down at start-up delays
            # nothing; its checks say so (docs/operations.md#read-replicas).
            replica: asyncpg.Pool = await asyncpg.create_pool(
                settings.database_read_url,
                min_size=0,
                max_size=settings.db_pool_max,
                command_timeout=60,
                reset=_keep_session,
            )
            pools_extra.append(replica)
            reads = Reads(pools[-1], replica, settings.database_read_max_lag_s, health, metrics)
            app[RUNTIME].reads = reads
            background.append(asyncio.create_task(reads.watch()))
        await prepare_store(settings, pool, health, stopping, create_partitions=consume)
        background.append(asyncio.create_task(_watch_database(pools, health)))
        if not consume:
            tune_gc()
            await stopping.wait()
            log.info("stopping")
            return 0
        # Maintenance is the consumer's: API replicas never drop or expire anything.
        background.append(asyncio.create_task(_maintenance_loop(settings, pool)))
        if settings.schema_registry_url:
            registry = RegistryClient.from_settings(settings)
        decoder = Decoder(SchemaCatalog(settings.schema_dirs), registry)
        tune_gc()  # after start-up, so that what it allocated is frozen out of collections
        await supervise_consumer(
            lambda: Ingestor(settings, pool, decoder, metrics, health),
            health,
            stopping,
            metrics=metrics,
        )
        return 0
    except asyncio.CancelledError:
        return 0
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await runner.cleanup()
        if registry is not None:
            await registry.close()
        for pool in pools + pools_extra:
            await pool.close()
