"""What each `course-audit` subcommand does (the parser lives in cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import IO

import aiohttp
import asyncpg
import orjson

from course_audit.config import Settings
from course_audit.ingest.admit import Admission
from course_audit.ingest.decode import Decoder
from course_audit.kafka_check import KafkaUnavailable
from course_audit.model import ErrorCode, Event, Rejection
from course_audit.store.db import Conn
from course_audit.store.dead_letters import (
    StoredDeadLetter,
    list_dead_letters,
    mark_replayed,
    update_dead_letter_error,
)
from course_audit.store.errors import describe, is_data_error
from course_audit.store.expiry import expire_dead_letters, expire_snapshots
from course_audit.store.migrate import migrate
from course_audit.store.partitions import drop_expired, ensure_partitions
from course_audit.store.tokens import create_token, list_tokens, revoke_token
from course_audit.store.writer import write_batch
from course_audit.wire.registry import RegistryClient
from course_audit.wire.schemas import SchemaCatalog


class UsageError(Exception):
    """A bad argument value; printed as one line, exit status 2."""


Command = Callable[[argparse.Namespace, Settings], int]


def command(work: Callable[[argparse.Namespace, Settings], Awaitable[int]]) -> Command:
    """A subcommand from its async body: run it, and map the errors every subcommand shares
    to one line on stderr (a bad argument: exit 2; the database refusing: exit 1)."""

    @functools.wraps(work)
    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return asyncio.run(work(args, settings))  # type: ignore[arg-type]
        except UsageError as exc:
            print(f"course-audit: {exc}", file=sys.stderr)
            return 2
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"course-audit: database error: {exc}", file=sys.stderr)
            return 1

    return run


@contextlib.asynccontextmanager
async def _connection(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


async def _selected_dead_letters(
    conn: asyncpg.Connection, args: argparse.Namespace
) -> list[StoredDeadLetter]:
    """The dead letters chosen by the --code/--topic/--since/--until/--limit options."""
    return await list_dead_letters(
        conn,
        code=args.code,
        topic=args.topic,
        since=_time(args.since, "--since"),
        until=_time(args.until, "--until"),
        limit=args.limit,
    )


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{name}: {value!r} is not an ISO 8601 date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# ------------------------------------------------------------------ roles


@command
async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from course_audit.runtime.runner import run_roles

    return await run_roles(settings, consume=True, serve_api=True)


@command
async def cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    from course_audit.runtime.runner import run_roles

    return await run_roles(settings, consume=True)


@command
async def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from course_audit.runtime.runner import run_roles

    return await run_roles(settings, consume=False, serve_api=True)


# ------------------------------------------------------------------ store admin


@command
async def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    async with _connection(settings) as conn:
        applied = await migrate(conn)
        created = await ensure_partitions(conn, settings.partitions_ahead)
    print(f"applied migrations: {applied or 'none pending'}", file=sys.stderr)
    if created:
        print(f"created partitions: {', '.join(created)}", file=sys.stderr)
    return 0


@command
async def cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    async with _connection(settings) as conn:
        created = await ensure_partitions(conn, settings.partitions_ahead)
        dropped = await drop_expired(conn, settings.retention_months)
        snapshots = await expire_snapshots(conn, settings.retention_months)
        letters = await expire_dead_letters(conn, settings.dead_letter_retention_days)
    print(f"created: {', '.join(created) or 'none'}")
    print(f"dropped: {', '.join(dropped) or 'none'}")
    print(f"snapshots expired: {sum(snapshots.values())}")
    print(f"dead letters expired: {letters}")
    return 0


@command
async def cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    if any(r <= 0 for r in args.roots):
        raise UsageError("--root-account must be a positive integer")
    async with _connection(settings) as conn:
        created = await create_token(conn, args.name, args.roots)
    # The token alone on stdout so scripts can capture it; the rest goes to stderr.
    print(created.token)
    print(
        f"token {created.info.id} ({created.info.name}) for root accounts "
        f"{', '.join(map(str, created.info.root_account_ids))}; it is shown only once",
        file=sys.stderr,
    )
    return 0


@command
async def cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _connection(settings) as conn:
        tokens = await list_tokens(conn)
    for t in tokens:
        state = f"revoked {t.revoked_at.isoformat()}" if t.revoked_at else "active"
        roots = ",".join(map(str, t.root_account_ids))
        print(f"{t.id}\t{t.name}\troot_accounts={roots}\t{t.created_at.isoformat()}\t{state}")
    return 0


@command
async def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    async with _connection(settings) as conn:
        done = await revoke_token(conn, args.token_id)
    if not done:
        print(f"course-audit: no active token with id {args.token_id}", file=sys.stderr)
        return 1
    print(f"revoked token {args.token_id}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ dead letters


@command
async def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _connection(settings) as conn:
        rows = await _selected_dead_letters(conn, args)
    for row in rows:
        s = row.letter.source
        print(
            orjson.dumps(
                {
                    "id": row.id,
                    "topic": s.topic,
                    "partition": s.partition,
                    "offset": s.offset,
                    "key": s.key.decode("utf-8", "replace") if s.key is not None else None,
                    "error_code": row.letter.code.value,
                    "error_message": row.letter.message,
                    "failed_at": row.letter.failed_at.isoformat(),
                    "value_bytes": len(s.value or b""),
                }
            ).decode()
        )
    print(f"{len(rows)} dead letter(s)", file=sys.stderr)
    return 0


@command
async def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    registry = RegistryClient.from_settings(settings) if settings.schema_registry_url else None
    decoder = Decoder(SchemaCatalog(settings.schema_dirs), registry)
    stored = still_failing = 0
    try:
        async with _connection(settings) as conn:
            rows = await _selected_dead_letters(conn, args)
            admission = Admission.at(datetime.now(UTC), settings.retention_months)
            for row in rows:
                decoded = await decoder.decode(row.letter.source.value)
                admitted = admission.admit(decoded, row.letter.source)
                if isinstance(admitted, Event):
                    failure = await _replay_event(conn, row.id, admitted)
                else:
                    failure = admitted
                if failure is None:
                    stored += 1
                else:
                    # An unreadable record keeps its reason: its bytes may be a raw batch.
                    if row.letter.code is not ErrorCode.UNREADABLE_RECORD:
                        await update_dead_letter_error(
                            conn, row.id, failure.code, failure.message, admission.now
                        )
                    still_failing += 1
    finally:
        if registry is not None:
            await registry.close()
    print(f"replayed {len(rows)}: stored {stored}, still failing {still_failing}")
    return 0


async def _replay_event(conn: Conn, letter_id: int, event: Event) -> Rejection | None:
    """Store a replayed event and mark its letter replayed; or why it still cannot be stored
    (its id stored with another created_at or content, or a row the store refuses)."""
    try:
        async with conn.transaction():
            result = await write_batch(conn, [event])
            if not result.conflicts:
                await mark_replayed(conn, [letter_id])
    except Exception as exc:
        if not is_data_error(exc):
            raise
        return Rejection(ErrorCode.STORE_REJECTED, describe(exc))
    if result.conflicts:
        return Rejection(ErrorCode.CONFLICTING_EVENT_ID, result.conflicts[0].message())
    return None


# ------------------------------------------------------------------ produce


def _lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield number, line


@command
async def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from course_audit.produce.publish import produce_lines

    try:
        stream: IO[str] = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115, ASYNC230
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        sent, failed = await produce_lines(settings, _lines(stream), sys.stderr)
    except KafkaUnavailable as exc:
        print(f"course-audit: {exc}", file=sys.stderr)
        return 1
    except aiohttp.ClientResponseError as exc:  # registering a schema (no URL: credentials)
        print(f"course-audit: schema registry answered HTTP {exc.status} {exc.message}",
              file=sys.stderr)  # fmt: skip
        return 1
    except aiohttp.ClientError as exc:
        print(f"course-audit: schema registry: {exc}", file=sys.stderr)
        return 1
    finally:
        if stream is not sys.stdin:
            stream.close()
    print(f"sent {sent} event(s), rejected {failed} line(s)", file=sys.stderr)
    return 0 if failed == 0 else 1


HANDLERS: dict[str, Command] = {
    "run": cmd_run,
    "consume": cmd_consume,
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "retention": cmd_retention,
    "produce": cmd_produce,
    "token create": cmd_token_create,
    "token list": cmd_token_list,
    "token revoke": cmd_token_revoke,
    "dlq list": cmd_dlq_list,
    "dlq replay": cmd_dlq_replay,
}
