"""What each `course-audit` subcommand does (the parser lives in cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, tzinfo
from typing import IO

import aiohttp
import asyncpg
import orjson

from course_audit.config import Settings
from course_audit.ingest.admit import Admission
from course_audit.ingest.decode import Decoder
from course_audit.kafka_check import KafkaUnavailable
from course_audit.model import ErrorCode, Event, Rejection
from course_audit.retry import Backoff
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
from course_audit.store.queries import EventRow, Filters, Window
from course_audit.store.tokens import create_token, list_tokens, revoke_token
from course_audit.store.writer import write_batch
from course_audit.wire.registry import RegistryClient, RegistryUnavailable
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
async def _serve_one(args: argparse.Namespace, settings: Settings) -> int:
    from course_audit.runtime.runner import run_roles

    return await run_roles(settings, consume=False, serve_api=True)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """The API: one process, or AUDIT_API_WORKERS processes on one port."""
    if settings.api_workers > 1:
        from course_audit.runtime.workers import serve_workers

        return serve_workers(settings)
    return _serve_one(args, settings)


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


#: `dlq replay` is run by a person, not a supervisor: it asks an unreachable registry five
#: times over about 8 s (5 s per request at most), then says so, rather than waiting for ever.
REPLAY_REGISTRY_RETRY = Backoff(first=0.5, cap=4.0, max_attempts=5)
REPLAY_REGISTRY_TIMEOUT_S = 5.0


@command
async def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    registry = (
        RegistryClient.from_settings(
            settings, retry=REPLAY_REGISTRY_RETRY, request_timeout=REPLAY_REGISTRY_TIMEOUT_S
        )
        if settings.schema_registry_url
        else None
    )
    decoder = Decoder(SchemaCatalog(settings.schema_dirs), registry)
    stored = still_failing = 0
    try:
        async with _connection(settings) as conn:
            rows = await _selected_dead_letters(conn, args)
            admission = Admission.at(datetime.now(UTC), settings.retention_months)
            for row in rows:
                try:
                    decoded = await decoder.decode(row.letter.source.value)
                except RegistryUnavailable as exc:
                    print(
                        f"course-audit: {exc}; {stored + still_failing} of {len(rows)} dead"
                        f" letter(s) replayed before it (stored {stored}, still failing"
                        f" {still_failing}), the rest untouched: run `dlq replay` again once the"
                        " registry answers",
                        file=sys.stderr,
                    )
                    return 1
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


# ------------------------------------------------------------------ events

#: The table's columns: heading and width (the last one, event_data, is not padded).
_TABLE = (("created_at", 25), ("event_type", 11), ("event_source", 12), ("course_id", 10),
          ("user_id", 10), ("id", 36), ("event_data", 0))  # fmt: skip
_LIMIT_MAX = 1_000_000


def _plain(value: object) -> str:
    """A table cell on one line: absent is `-`, control characters escaped as in JSON."""
    if value is None:
        return "-"
    text = str(value)
    if any(ch < " " or ch == "\x7f" for ch in text):
        text = orjson.dumps(text).decode()[1:-1]
    return text


def _table_line(cells: list[object]) -> str:
    parts = [_plain(c).ljust(width) for c, (_, width) in zip(cells, _TABLE, strict=True)]
    return "  ".join(parts).rstrip() + "\n"


def _table_rows(rows: list[EventRow], zone: tzinfo, utc: bool) -> bytes:
    from course_audit.api.render import render_time

    return "".join(
        _table_line(
            [
                render_time(r.created_at, zone, utc),
                r.event_type,
                r.event_source,
                r.course_id,
                r.user_id,
                r.event_id,
                orjson.dumps(orjson.loads(r.event_data)).decode(),
            ]
        )
        for r in rows
    ).encode()


async def _events_target(
    conn: Conn, column: str, raw: str, given: list[int] | None
) -> tuple[int, list[int]] | None:
    """The numeric id and the root accounts to read (those given, else every root account
    the store holds it under); None when the store holds no such course or account there."""
    from course_audit.api.handlers import SIS_COURSE_PREFIX
    from course_audit.store.export import known_roots, sis_course_roots
    from course_audit.store.queries import (
        account_known,
        course_known,
        resolve_sis_course,
    )

    if column == "course_id" and raw.startswith(SIS_COURSE_PREFIX):
        sis_id = raw[len(SIS_COURSE_PREFIX) :]
        if not sis_id:
            raise UsageError("a course is a number or sis_course_id:<value>")
        roots = given if given else await sis_course_roots(conn, sis_id)
        found = await resolve_sis_course(conn, sis_id, roots) if roots else None
        if found is None:
            return None
        # The root accounts where this SIS id names this course (the same id may name
        # another course, or none, in another root account).
        return found, [r for r in roots if await resolve_sis_course(conn, sis_id, [r]) == found]
    if raw.isascii() and raw.isdigit() and len(raw) <= 19 and 0 < int(raw) < 2**63:
        key = int(raw)
    else:
        what = "a number or sis_course_id:<value>" if column == "course_id" else "a number"
        raise UsageError(f"{raw!r} is not an id ({what})")
    if given:
        known = course_known if column == "course_id" else account_known
        return (key, given) if await known(conn, key, given) else None
    roots = await known_roots(conn, column, key)
    return (key, roots) if roots else None


Render = Callable[[list[EventRow]], bytes]


async def _write_events(
    conn: Conn,
    column: str,
    key: int,
    roots: list[int],
    window: Window,
    filters: Filters,
    limit: int | None,
    render: Render,
    out: IO[bytes],
) -> int:
    """Write the events, oldest first (with `limit`: the latest `limit`); how many."""
    from course_audit.store.export import export_chunks, export_query, filter_extra

    extra = filter_extra(filters)
    if limit is not None:
        sql, query_args = export_query(
            column, key, roots, window, extra=extra, descending=True, limit=limit
        )
        rows = [EventRow._make(r) for r in await conn.fetch(sql, *query_args)]
        rows.reverse()
        out.write(render(rows))
        return len(rows)
    count = 0
    chunked = export_chunks(conn, column, key, roots, window, extra=extra)
    async with contextlib.aclosing(chunked) as chunks:
        async for rows in chunks:
            out.write(render(rows))
            count += len(rows)
    return count


def _cli_filters(args: argparse.Namespace) -> Filters:
    """--event-type/--user-id/--event-source checked as the endpoints check their
    parameters (docs/api.md#filters); a bad one is a usage error naming the flag."""
    from course_audit.api.errors import ApiError
    from course_audit.api.params import parse_event_source, parse_event_types, parse_user_id

    flags = {"event_type": "--event-type", "user_id": "--user-id", "event_source": "--event-source"}
    try:
        return Filters(
            parse_event_types(args.event_types),
            parse_user_id(args.user_id),
            parse_event_source(args.event_source),
        )
    except ApiError as exc:
        name, _, rest = str(exc.body["errors"][0]["message"]).partition(": ")
        raise UsageError(f"{flags.get(name, name)}: {rest}") from None


@command
async def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    """`events course|account`: the store's events of one course or account, oldest first,
    read as the HTTP export reads them (docs/api.md#export), from every root account unless
    --root-account says which."""
    from course_audit.api.errors import ApiError
    from course_audit.api.export import ndjson_chunk
    from course_audit.api.params import parse_window
    from course_audit.api.render import UTC_NAMES

    column = "course_id" if args.command_path == "events course" else "account_id"
    kind = column.removesuffix("_id")
    try:
        times = parse_window(args.since, args.until, settings.zone, ("--since", "--until"))
    except ApiError as exc:
        raise UsageError(exc.body["errors"][0]["message"]) from None
    filters = _cli_filters(args)
    if args.limit is not None and not 0 < args.limit <= _LIMIT_MAX:
        raise UsageError(f"--limit must be 1 to {_LIMIT_MAX:,}")
    if args.roots and any(r <= 0 for r in args.roots):
        raise UsageError("--root-account must be a positive integer")
    given = sorted(set(args.roots)) if args.roots else None
    zone, utc = settings.zone, settings.time_zone in UTC_NAMES

    def render(rows: list[EventRow]) -> bytes:
        if args.format == "jsonl":
            return ndjson_chunk(rows, zone, utc)
        return _table_rows(rows, zone, utc)

    out = sys.stdout.buffer
    async with (
        _connection(settings) as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        found = await _events_target(conn, column, args.target, given)
        if found is None:
            where = ", ".join(map(str, given)) if given else "any root account"
            print(f"course-audit: no {kind} {args.target} in the store under {where}",
                  file=sys.stderr)  # fmt: skip
            return 1
        key, roots = found
        try:
            if args.format == "table":
                out.write(_table_line([name for name, _ in _TABLE]).encode())
            count = 0
            if not times.empty:
                count = await _write_events(
                    conn, column, key, roots, times.window, filters, args.limit, render, out
                )
            out.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): not an error; nothing more to write.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    print(f"{count} event(s) of {kind} {key} under root account(s) "
          f"{', '.join(map(str, roots))}", file=sys.stderr)  # fmt: skip
    return 0


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
    "events course": cmd_events,
    "events account": cmd_events,
    "dlq list": cmd_dlq_list,
    "dlq replay": cmd_dlq_replay,
}
