"""The `course-audit` command line: one console script, one subcommand per role."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from course_audit import __version__
from course_audit.config import ConfigError, Settings
from course_audit.runtime.logs import configure

Handler = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (configuration comes from AUDIT_* vars)."""
    parser = argparse.ArgumentParser(
        prog="course-audit",
        description="Course audit log: Kafka ingestion and a Canvas-compatible query API. "
        "Configuration comes from AUDIT_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"course-audit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str,
            parent: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
            path: str | None = None) -> argparse.ArgumentParser:  # fmt: skip
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(command_path=path or name)
        return p

    add("run", "consume from Kafka and serve the HTTP API in one process")
    add("consume", "consume events from Kafka into the store")
    add("serve", "serve the HTTP API")
    add("migrate", "apply pending database migrations")
    add("retention", "create upcoming partitions and drop expired ones now")
    produce = add("produce", "publish JSON-lines events as Avro messages")
    produce.add_argument("file", nargs="?", default="-", help="JSON lines file (default stdin)")

    token = add("token", "manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = add("create", "create a token and print it once", parent=token_sub,
                 path="token create")  # fmt: skip
    create.add_argument("--name", required=True)
    create.add_argument("--root-account", type=int, action="append", required=True, dest="roots")
    add("list", "list tokens (never their secret)", parent=token_sub, path="token list")
    revoke = add("revoke", "revoke a token by id", parent=token_sub, path="token revoke")
    revoke.add_argument("token_id", type=int)

    events = add("events", "print a course's or an account's events from the store")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="TARGET")
    for name, help_text, metavar in (
        ("course", "one course's events (an id or sis_course_id:<value>)", "ID|sis_course_id:X"),
        ("account", "the events of the courses directly in an account", "ID"),
    ):
        p = add(name, help_text, parent=events_sub, path=f"events {name}")
        p.add_argument("target", metavar=metavar)
        p.add_argument("--since", help="at or after this ISO 8601 date or date-time")
        p.add_argument("--until", help="at or before this ISO 8601 date or date-time")
        p.add_argument("--root-account", type=int, action="append", dest="roots",
                       help="only events stored under this root account (repeatable; "
                       "default: every root account)")  # fmt: skip
        p.add_argument("--event-type", action="append", dest="event_types", default=[],
                       help="only events of this type (repeatable: any of them)")  # fmt: skip
        p.add_argument("--user-id", help="only changes made by this user")
        p.add_argument("--event-source", help="only events with exactly this source (e.g. sis)")
        p.add_argument("--format", choices=("table", "jsonl"), default="table",
                       help="an aligned table (default) or one JSON event a line")  # fmt: skip
        p.add_argument("--limit", type=int,
                       help="only the latest N events (printed oldest first)")  # fmt: skip

    dlq = add("dlq", "inspect and replay dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    for name, help_text in (("list", "list dead letters"), ("replay", "re-decode and store")):
        p = add(name, help_text, parent=dlq_sub, path=f"dlq {name}")
        p.add_argument("--code", help="only this error code")
        p.add_argument("--topic", help="only this topic")
        p.add_argument("--since", help="failed at or after this ISO 8601 time")
        p.add_argument("--until", help="failed at or before this ISO 8601 time")
        p.add_argument("--limit", type=int, default=100 if name == "list" else 100_000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"course-audit: configuration error: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format)
    from course_audit.cli.commands import HANDLERS

    handler: Handler = HANDLERS[args.command_path]
    try:
        return handler(args, settings)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
