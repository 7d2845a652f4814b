"""`course-audit events course|account` as an operator runs it against the store."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from course_audit.model import Event
from course_audit.store.partitions import PartitionCache
from course_audit.store.writer import write_batch
from waits import within

CLI = str(Path(sys.executable).parent / "course-audit")
T0 = (datetime.now(UTC) - timedelta(days=2)).replace(second=0, microsecond=0)


def shown(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def course(cid: int, account: int, root: int, sis: str) -> dict[str, Any]:
    return {"id": cid, "account_id": account, "root_account_id": root, "sis_course_id": sis}


def event(seconds: int, crs: dict[str, Any], source: str = "api", user: int | None = None) -> Event:
    return Event(
        event_id=uuid.uuid4(),
        created_at=T0 + timedelta(seconds=seconds),
        event_type="updated",
        event_source=source,
        course=crs,
        user=None if user is None else {"id": user, "name": f"User {user}"},
        page_view=None,
        sis_batch_id=None,
        event_data={"name": [f"N{seconds}", f"N{seconds + 1}"]},
        related_course=None,
    )


@pytest.fixture
async def store(migrated_db_url: str) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Course 301 (account 30) under root accounts 1 and 2 (SIS-301 / OTHER-301), course 302
    (account 30) under root 1."""
    mine, theirs = course(301, 30, 1, "SIS-301"), course(301, 40, 2, "OTHER-301")
    events = {
        "a": event(0, mine, user=7),
        "b": event(30, theirs),
        "c": event(60, mine, source="api\nx"),
        "d": event(90, course(302, 30, 1, "SIS-302")),
        "e": event(120, mine, user=8),
    }
    conn = await asyncpg.connect(migrated_db_url)
    try:
        await write_batch(conn, list(events.values()), cache=PartitionCache())
    finally:
        await conn.close()
    yield migrated_db_url, {k: str(e.event_id) for k, e in events.items()}


async def cli(db_url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        env={**os.environ, "AUDIT_DATABASE_URL": db_url, "AUDIT_LOG_FORMAT": "text"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await within(proc.communicate(), 60, f"`course-audit {' '.join(args)}` to exit")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def line(event_id: str, seconds: int, cid: int, user: int | None) -> dict[str, Any]:
    return {
        "id": event_id,
        "created_at": shown(seconds),
        "event_type": "updated",
        "event_source": "api\nx" if seconds == 60 else "api",
        "event_data": {"name": [f"N{seconds}", f"N{seconds + 1}"]},
        "links": {"course": cid, "page_view": None, "user": user, "sis_batch": None},
    }


async def test_jsonl_reads_every_root_account_unless_told(
    store: tuple[str, dict[str, str]],
) -> None:
    db, ids = store
    rc, out, err = await cli(db, "events", "course", "301", "--format", "jsonl")
    assert rc == 0, err
    assert [json.loads(x) for x in out.splitlines()] == [
        line(ids["a"], 0, 301, 7),
        line(ids["b"], 30, 301, None),
        line(ids["c"], 60, 301, None),
        line(ids["e"], 120, 301, 8),
    ]
    assert err.strip() == "4 event(s) of course 301 under root account(s) 1, 2"
    rc, out, err = await cli(db, "events", "course", "301", "--format", "jsonl",
                             "--root-account", "2")  # fmt: skip
    assert rc == 0 and [json.loads(x)["id"] for x in out.splitlines()] == [ids["b"]]
    # A SIS id reads the root accounts where it names the course.
    rc, out, err = await cli(db, "events", "course", "sis_course_id:SIS-301", "--format", "jsonl")
    assert rc == 0, err
    assert [json.loads(x)["id"] for x in out.splitlines()] == [ids["a"], ids["c"], ids["e"]]
    # --limit: the latest N, still oldest first.
    rc, out, err = await cli(db, "events", "course", "301", "--format", "jsonl", "--limit", "2")
    assert rc == 0 and [json.loads(x)["id"] for x in out.splitlines()] == [ids["c"], ids["e"]]


async def test_filters_as_the_endpoints_take_them(store: tuple[str, dict[str, str]]) -> None:
    db, ids = store

    async def listed(*flags: str) -> list[str]:
        rc, out, err = await cli(db, "events", "course", "301", "--format", "jsonl", *flags)
        assert rc == 0, err
        return [json.loads(x)["id"] for x in out.splitlines()]

    assert await listed("--user-id", "7") == [ids["a"]]
    assert await listed("--user-id", "8", "--root-account", "2") == []
    # Exactly this source: "api\nx" is another one (and, with its control character, not
    # one a filter can name: see the refusals below).
    assert await listed("--event-source", "api") == [ids["a"], ids["b"], ids["e"]]
    assert await listed("--event-type", "created") == []
    assert await listed("--event-type", "created", "--event-type", "updated") == [
        ids["a"], ids["b"], ids["c"], ids["e"],
    ]  # fmt: skip
    # --limit counts the filtered events: the latest one of the source, not of the course.
    assert await listed("--event-source", "api", "--limit", "1") == [ids["e"]]
    rc, out, err = await cli(db, "events", "account", "30", "--user-id", "8")
    assert rc == 0 and ids["e"] in out and ids["a"] not in out, (out, err)


async def test_table_of_an_account_within_a_range(store: tuple[str, dict[str, str]]) -> None:
    db, ids = store
    rc, out, err = await cli(
        db, "events", "account", "30", "--since", shown(60), "--until", shown(120)
    )
    assert rc == 0, err
    rows = [r.split() for r in out.splitlines()]
    assert rows == [
        ["created_at", "event_type", "event_source", "course_id", "user_id", "id", "event_data"],
        [shown(60), "updated", "api\\nx", "301", "-", ids["c"], '{"name":["N60","N61"]}'],
        [shown(90), "updated", "api", "302", "-", ids["d"], '{"name":["N90","N91"]}'],
        [shown(120), "updated", "api", "301", "8", ids["e"], '{"name":["N120","N121"]}'],
    ]
    # Columns line up: each column starts at the same place on every line.
    lines = out.splitlines()
    starts = {ln.index(ids[k]) for ln, k in zip(lines[1:], "cde", strict=True)}
    assert starts == {lines[0].index(" id ") + 1}


async def test_unknown_targets_and_bad_arguments(store: tuple[str, dict[str, str]]) -> None:
    db, _ = store
    rc, out, err = await cli(db, "events", "course", "999")
    assert (rc, out) == (1, "")
    assert err.strip() == "course-audit: no course 999 in the store under any root account"
    rc, _, err = await cli(db, "events", "course", "302", "--root-account", "2")
    assert rc == 1 and "no course 302 in the store under 2" in err
    rc, _, err = await cli(db, "events", "account", "40", "--root-account", "1")
    assert rc == 1 and "no account 40" in err
    for args, message in (
        (["course", "301", "--since", "nope"], "--since: 'nope' is not an ISO 8601"),
        (["course", "301", "--until", "2026-02-30"], "--until: '2026-02-30'"),
        (["course", "abc"], "'abc' is not an id (a number or sis_course_id:<value>)"),
        (["account", "sis_course_id:X"], "'sis_course_id:X' is not an id (a number)"),
        (["course", "301", "--limit", "0"], "--limit must be 1 to 1,000,000"),
        (["course", "301", "--root-account", "-1"], "--root-account must be a positive"),
        (["course", "301", "--event-type", "bogus"], "--event-type: 'bogus' is not an event"),
        (["course", "301", "--user-id", "0"], "--user-id: '0' is out of range"),
        (["course", "301", "--user-id", "x1"], "--user-id: 'x1' is not a user id"),
        (["course", "301", "--event-source", ""], "--event-source: empty"),
        (["course", "301", "--event-source", "api\nx"], "--event-source: 'api\\nx' is not a"),
    ):
        rc, out, err = await cli(db, "events", *args)
        assert (rc, out) == (2, ""), (args, err)
        assert err.startswith("course-audit: " + message), err
