"""The export routes end to end (docs/api.md#export): NDJSON and CSV bodies, time ranges,
resuming, tokens and tenancy, parameters, and what a slow, vanished or stalled client costs.

One `course-audit run` process with a pool of three connections (so one export at a time)
holds events produced through the real Kafka; a course of 6,000 large events, inserted
with SQL, is big enough that a client that stops reading holds its export open.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from test_api_support import (
    ACCOUNT,
    Api,
    Stack,
    course_path,
    make_event,
    produce,
    recent,
    stack,
    wait_stored,
)

from service_process import ServiceProcess
from tcp_proxy import Proxy
from waits import eventually, within

pytestmark = pytest.mark.e2e

NOT_FOUND = {"errors": [{"message": "The specified resource does not exist."}]}
UNAUTHENTICATED = {
    "status": "unauthenticated",
    "errors": [{"message": "user authorization required"}],
}
T0 = recent(3)
BIG = 7100  # the course of 6,000 large events
BIG_EVENTS = 6000
EXPORT_MARK = "/* course-audit export */"


def ts(minutes: int) -> str:
    """The time an event `minutes` after T0 is shown at."""
    return (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def compact(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%Y%m%dT%H%M%SZ")


def course(cid: int, account: int, root: int) -> dict[str, Any]:
    return {
        "id": cid,
        "account_id": account,
        "root_account_id": root,
        "name": f"Course {cid}",
        "sis_course_id": f"SIS-{cid}",
    }


ADA = {"id": 7, "name": "Ada Lovelace"}
ALAN = {"id": 8, "name": "Alan Turing"}
PAGE_VIEW = {"id": "pv-1", "url": "https://canvas.example.edu/courses/7001", "http_method": "put"}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def build_events() -> dict[str, dict[str, Any]]:
    c1, c2, c3 = course(7001, 700, 1), course(7002, 700, 1), course(7003, 700, 1)
    return {
        "e1": make_event(
            "created",
            at(0),
            c1,
            user=ADA,
            page_view=PAGE_VIEW,
            source="manual",
            created_source="manual",
            changes={"name": [None, "Export 101"]},
        ),
        "e2": make_event(
            "updated",
            at(1),
            c1,
            user=ALAN,
            source="=1+2",
            changes={"name": ["Export 101", "Export, 101"]},
        ),
        "e3": make_event("published", at(2), c1, source="sis", sis_batch_id=42),
        "e8": make_event("updated", at(2.5), c3, changes={"name": ["A", "B"]}),
        "e4": make_event("copied_to", at(3), c1, user=ADA, source="@cmd", related=c2),
        "e5": make_event(
            "updated",
            at(4) + timedelta(milliseconds=500),
            c1,
            source="api\r\nsis",
            changes={"is_public": [False, True]},
        ),
        "e6": make_event("deleted", at(5), c1, source="-2"),
        "e7": make_event("restored", at(5), c1, source="+x"),  # same instant, produced after
        "e9": make_event("updated", at(1), course(7900, 790, 2), changes={"name": ["C", "D"]}),
    }


@dataclass
class World:
    stack: Stack
    api: Api
    tokens: dict[str, str]
    ids: dict[str, str]


@pytest.fixture(scope="module")
async def world(
    server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path_factory: Any
) -> AsyncIterator[World]:
    log_dir: Path = tmp_path_factory.mktemp("api-export")
    # One export at a time (half of three); the consumer and the endpoints keep two.
    env = {"AUDIT_DB_POOL_MAX": "3"}
    async with stack(server_url, migrated_template, kafka_bootstrap, log_dir, env) as s:
        events = build_events()
        await produce(kafka_bootstrap, s.topic, list(events.values()))
        await wait_stored(s.db_url, [e["event_id"] for e in events.values()])
        conn = await asyncpg.connect(s.db_url)
        try:
            await conn.execute(
                """
                INSERT INTO events (event_id, created_at, event_type, event_source, course_id,
                                    account_id, root_account_id, event_data)
                SELECT gen_random_uuid(), $1::timestamptz + g * interval '1 millisecond',
                       'updated', 'api', $2, 710, 1,
                       jsonb_build_object('description',
                                          jsonb_build_array(repeat('x', 1000), repeat('y', 1000)))
                  FROM generate_series(1, $3) g
                """,
                T0,
                BIG,
                BIG_EVENTS,
            )
            await conn.execute(
                "INSERT INTO courses (id, root_account_id, account_id, data, as_of)"
                " VALUES ($1, 1, 710, '{}', now())",
                BIG,
            )
        finally:
            await conn.close()
        tokens = {"root1": await s.token("root 1", [1]), "root2": await s.token("root 2", [2])}
        ids = {name: e["event_id"] for name, e in events.items()}
        yield World(s, s.api, tokens, ids)


def export_path(target: int | str, account: bool = False) -> str:
    return (f"{ACCOUNT}{target}" if account else course_path(target)) + "/export"


def ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)


def expected_lines(ids: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each event of course 7001 and 7003 as an NDJSON line must show it, written out."""

    def links(user: int | None = None, **more: Any) -> dict[str, Any]:
        return {**more, "course": 7001, "page_view": None, "user": user, "sis_batch": None}

    return {
        "e1": {
            "id": ids["e1"],
            "created_at": ts(0),
            "event_type": "created",
            "event_source": "manual",
            "event_data": {"name": [None, "Export 101"], "created_source": "manual"},
            "links": {"course": 7001, "page_view": "pv-1", "user": 7, "sis_batch": None},
        },
        "e2": {
            "id": ids["e2"],
            "created_at": ts(1),
            "event_type": "updated",
            "event_source": "=1+2",
            "event_data": {"name": ["Export 101", "Export, 101"]},
            "links": links(8),
        },
        "e3": {
            "id": ids["e3"],
            "created_at": ts(2),
            "event_type": "published",
            "event_source": "sis",
            "event_data": {},
            "links": {"course": 7001, "page_view": None, "user": None, "sis_batch": 42},
        },
        "e8": {
            "id": ids["e8"],
            "created_at": (T0 + timedelta(minutes=2, seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "event_type": "updated",
            "event_source": "api",
            "event_data": {"name": ["A", "B"]},
            "links": {"course": 7003, "page_view": None, "user": None, "sis_batch": None},
        },
        "e4": {
            "id": ids["e4"],
            "created_at": ts(3),
            "event_type": "copied_to",
            "event_source": "@cmd",
            "event_data": {},
            "links": {"copied_to": 7002, **links(7)},
        },
        "e5": {
            "id": ids["e5"],
            "created_at": ts(4),
            "event_type": "updated",
            "event_source": "api\r\nsis",
            "event_data": {"is_public": [False, True]},
            "links": links(),
        },
        "e6": {
            "id": ids["e6"],
            "created_at": ts(5),
            "event_type": "deleted",
            "event_source": "-2",
            "event_data": {},
            "links": links(),
        },
        "e7": {
            "id": ids["e7"],
            "created_at": ts(5),
            "event_type": "restored",
            "event_source": "+x",
            "event_data": {},
            "links": links(),
        },
    }


COURSE_ORDER = ["e1", "e2", "e3", "e4", "e5", "e6", "e7"]


def lines_of(world: World, *names: str) -> bytes:
    table = expected_lines(world.ids)
    return ndjson(*(table[n] for n in names))


def ids_of(body: bytes) -> list[str]:
    return [json.loads(line)["id"] for line in body.splitlines()]


def csv_ids(body: bytes) -> list[str]:
    """The id column of a CSV export's rows (read with the csv module)."""
    rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert rows[0][0] == "id"
    return [r[0] for r in rows[1:]]


def names_of(world: World, body: bytes) -> list[str]:
    by_id = {v: k for k, v in world.ids.items()}
    return [by_id[i] for i in ids_of(body)]


# ------------------------------------------------------------------ bodies


async def test_ndjson_export_is_every_event_oldest_first(world: World) -> None:
    token = world.tokens["root1"]
    for target in (7001, "sis_course_id:SIS-7001"):
        reply = await world.api.get(export_path(target), token=token)
        assert reply.status == 200, reply.body
        assert reply.headers["Content-Type"] == "application/x-ndjson; charset=utf-8"
        assert reply.headers["Content-Disposition"] == (
            'attachment; filename="course-7001_beginning_latest.ndjson"'
        )
        assert reply.headers["Cache-Control"] == "no-store"
        assert reply.headers["Transfer-Encoding"] == "chunked"
        assert reply.body == lines_of(world, *COURSE_ORDER)
    # format=ndjson is the default; access_token as a parameter works as for the endpoints.
    explicit = await world.api.get(
        export_path(7001), params={"format": "ndjson", "access_token": token}
    )
    assert explicit.status == 200 and explicit.body == lines_of(world, *COURSE_ORDER)


async def test_csv_export_has_the_documented_columns_and_guards(world: World) -> None:
    reply = await world.api.get(
        export_path(7001), token=world.tokens["root1"], params={"format": "csv"}
    )
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"] == "text/csv; charset=utf-8; header=present"
    assert reply.headers["Content-Disposition"] == (
        'attachment; filename="course-7001_beginning_latest.csv"'
    )
    i = world.ids
    expected = (
        "id,created_at,event_type,event_source,course_id,user_id,page_view_id,sis_batch_id,"
        "related_course_id,event_data\r\n"
        f"{i['e1']},{ts(0)},created,manual,7001,7,pv-1,,,"
        '"{""name"":[null,""Export 101""],""created_source"":""manual""}"\r\n'
        f"{i['e2']},{ts(1)},updated,'=1+2,7001,8,,,,"
        '"{""name"":[""Export 101"",""Export, 101""]}"\r\n'
        f"{i['e3']},{ts(2)},published,sis,7001,,,42,,{{}}\r\n"
        f"{i['e4']},{ts(3)},copied_to,'@cmd,7001,7,,,7002,{{}}\r\n"
        f'{i["e5"]},{ts(4)},updated,"api\r\nsis",7001,,,,,"{{""is_public"":[false,true]}}"\r\n'
        f"{i['e6']},{ts(5)},deleted,'-2,7001,,,,,{{}}\r\n"
        f"{i['e7']},{ts(5)},restored,'+x,7001,,,,,{{}}\r\n"
    )
    assert reply.body.decode() == expected


async def test_account_export_interleaves_its_courses(world: World) -> None:
    reply = await world.api.get(export_path(700, account=True), token=world.tokens["root1"])
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Disposition"] == (
        'attachment; filename="account-700_beginning_latest.ndjson"'
    )
    assert reply.body == lines_of(world, "e1", "e2", "e3", "e8", "e4", "e5", "e6", "e7")


async def test_a_time_range_is_the_endpoints_window(world: World) -> None:
    token = world.tokens["root1"]
    reply = await world.api.get(
        export_path(7001), token=token, params={"start_time": ts(1), "end_time": ts(3)}
    )
    assert reply.status == 200, reply.body
    assert reply.body == lines_of(world, "e2", "e3", "e4")
    assert reply.headers["Content-Disposition"] == (
        f'attachment; filename="course-7001_{compact(1)}_{compact(3)}.ndjson"'
    )
    # Whole seconds, as shown: e5 happened at ts(4) + 0.5 s and is inside end_time=ts(4).
    reply = await world.api.get(
        export_path(7001), token=token, params={"start_time": ts(4), "format": "csv"}
    )
    assert reply.headers["Content-Disposition"] == (
        f'attachment; filename="course-7001_{compact(4)}_latest.csv"'
    )
    assert csv_ids(reply.body) == [
        world.ids["e5"],
        world.ids["e6"],
        world.ids["e7"],
    ]
    inside = await world.api.get(export_path(7001), token=token, params={"end_time": ts(4)})
    assert names_of(world, inside.body) == ["e1", "e2", "e3", "e4", "e5"]


async def test_the_endpoints_filters_narrow_an_export(world: World) -> None:
    token = world.tokens["root1"]
    cases: list[tuple[list[tuple[str, str]], list[str]]] = [
        ([("event_type", "updated")], ["e2", "e5"]),
        ([("event_type", "deleted"), ("event_type", "updated")], ["e2", "e5", "e6"]),
        ([("user_id", "7")], ["e1", "e4"]),
        ([("event_source", "sis")], ["e3"]),
        ([("user_id", "7"), ("event_type", "created")], ["e1"]),
        ([("user_id", "8"), ("event_type", "created")], []),
    ]
    for params, expected in cases:
        reply = await world.api.get(export_path(7001), token=token, params=params)
        assert reply.status == 200, (params, reply.body)
        assert reply.body == lines_of(world, *expected), params
    # CSV and the account export take them too.
    reply = await world.api.get(
        export_path(7001), token=token, params=[("event_type", "updated"), ("format", "csv")]
    )
    assert csv_ids(reply.body) == [world.ids["e2"], world.ids["e5"]]
    reply = await world.api.get(
        export_path(700, account=True), token=token, params=[("event_type", "updated")]
    )
    assert names_of(world, reply.body) == ["e2", "e8", "e5"]
    # Resuming a filtered export continues with the matching events after the resume point.
    reply = await world.api.get(
        export_path(7001),
        token=token,
        params=[("event_type", "updated"), ("after_id", world.ids["e2"])],
    )
    assert reply.body == lines_of(world, "e5")
    # A bad filter value is the endpoints' 400.
    for params, starts in (
        ([("event_type", "renamed")], "event_type: 'renamed' is not an event type"),
        ([("user_id", "seven")], "user_id: 'seven' is not a user id"),
    ):
        reply = await world.api.get(export_path(7001), token=token, params=params)
        assert reply.status == 400, reply.body
        assert reply.json()["errors"][0]["message"].startswith(starts)


async def test_resuming_after_an_event_gives_exactly_the_rest(world: World) -> None:
    token = world.tokens["root1"]
    reply = await world.api.get(
        export_path(7001), token=token, params={"after_id": world.ids["e3"]}
    )
    assert reply.status == 200, reply.body
    assert reply.body == lines_of(world, "e4", "e5", "e6", "e7")
    # After e6 of the tie at ts(5): only e7, its later twin.
    reply = await world.api.get(
        export_path(7001), token=token, params={"after_id": world.ids["e6"].upper()}
    )
    assert reply.body == lines_of(world, "e7")
    # An interrupted export resumed from its last complete line adds up to the whole.
    whole = await world.api.get(export_path(7001), token=token)
    head = whole.body.split(b"\n")[:3]
    rest = await world.api.get(
        export_path(7001), token=token, params={"after_id": json.loads(head[2])["id"]}
    )
    assert b"\n".join(head) + b"\n" + rest.body == whole.body
    # With a window and CSV, and for an account (e8 is one of its events).
    csv_rest = await world.api.get(
        export_path(7001),
        token=token,
        params={"after_id": world.ids["e2"], "end_time": ts(3), "format": "csv"},
    )
    assert csv_ids(csv_rest.body) == [
        world.ids["e3"],
        world.ids["e4"],
    ]
    account = await world.api.get(
        export_path(700, account=True), token=token, params={"after_id": world.ids["e8"]}
    )
    assert account.body == lines_of(world, "e4", "e5", "e6", "e7")
    # Nothing after the last event.
    last = await world.api.get(export_path(7001), token=token, params={"after_id": world.ids["e7"]})
    assert (last.status, last.body) == (200, b"")


async def test_after_id_must_be_an_event_of_this_export(world: World) -> None:
    token = world.tokens["root1"]
    for other in ("e8", "e9"):  # another course of the account; another tenant's event
        reply = await world.api.get(
            export_path(7001), token=token, params={"after_id": world.ids[other]}
        )
        assert reply.status == 400, reply.body
        message = reply.json()["errors"][0]["message"]
        assert message.startswith(f"after_id: {world.ids[other]} is not an event of this course")
    reply = await world.api.get(
        export_path(7001), token=token, params={"after_id": "00000000-0000-4000-8000-000000000000"}
    )
    assert reply.status == 400
    # On another tenant's course the answer is its 404, as without after_id.
    reply = await world.api.get(
        export_path(7900), token=token, params={"after_id": world.ids["e9"]}
    )
    assert (reply.status, reply.json()) == (404, NOT_FOUND)


async def test_empty_exports_and_head(world: World) -> None:
    token = world.tokens["root1"]
    # Course 7002 is known (the copy's target) but has no events of its own.
    empty = await world.api.get(export_path(7002), token=token)
    assert (empty.status, empty.body) == (200, b"")
    header = await world.api.get(export_path(7002), token=token, params={"format": "csv"})
    assert header.body == (
        b"id,created_at,event_type,event_source,course_id,user_id,page_view_id,sis_batch_id,"
        b"related_course_id,event_data\r\n"
    )
    for params in ({"start_time": ts(60)}, {"start_time": ts(3), "end_time": ts(1)}):
        reply = await world.api.get(export_path(7001), token=token, params=params)
        assert (reply.status, reply.body) == (200, b"")
    head = await world.api.get(export_path(7001), token=token, method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Disposition"].startswith("attachment; ")


# ------------------------------------------------------------------ tokens, tenancy, params


async def test_same_tokens_and_tenancy_as_the_endpoints(world: World) -> None:
    none = await world.api.get(export_path(7001))
    assert (none.status, none.json()) == (401, UNAUTHENTICATED)
    valid = world.tokens["root1"]
    wrong = valid[:-1] + ("A" if valid[-1] != "A" else "B")
    unknown = await world.api.get(export_path(7001), token=wrong)
    assert unknown.status == 401
    assert unknown.json() == {"errors": [{"message": "Invalid access token."}]}
    for path in (
        export_path(7900),  # root 2's course
        export_path("sis_course_id:SIS-7900"),
        export_path(790, account=True),
        export_path(123456),  # nobody's
        export_path("sis_course_id:nope"),
    ):
        reply = await world.api.get(path, token=valid)
        assert (reply.status, reply.json()) == (404, NOT_FOUND), path
    theirs = await world.api.get(export_path(7900), token=world.tokens["root2"])
    assert ids_of(theirs.body) == [world.ids["e9"]]
    # Root 2 has no events of course 7001.
    assert (await world.api.get(export_path(7001), token=world.tokens["root2"])).status == 404


@pytest.mark.parametrize(
    ("params", "starts"),
    [
        ({"format": "xml"}, "format: 'xml' is not a format of the export (use ndjson or csv)"),
        ({"format": "json"}, "format: 'json'"),
        ({"after_id": "123"}, "after_id: '123' is not an event id"),
        ({"start_time": "soon"}, "start_time: 'soon' is not an ISO 8601 date or date-time"),
        ({"end_time": "2026-13-01"}, "end_time: '2026-13-01'"),
    ],
)
async def test_bad_parameters_are_a_400_naming_them(
    world: World, params: dict[str, str], starts: str
) -> None:
    reply = await world.api.get(export_path(7001), token=world.tokens["root1"], params=params)
    assert reply.status == 400, reply.body
    assert reply.json()["errors"][0]["message"].startswith(starts)


# ------------------------------------------------------------------ slow and gone clients


async def export_states(db_url: str) -> list[str]:
    """The states of the backends whose last statement is an export's."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE $1",
            EXPORT_MARK + "%",
        )
        return [r["state"] for r in rows]
    finally:
        await conn.close()


async def transaction_ended(db_url: str) -> None:
    """Poll until no export's backend is inside a transaction."""
    await eventually(
        lambda: export_states(db_url),
        lambda states: "idle in transaction" not in states,
        30,
        "the export's transaction to end",
    )


async def in_transaction(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%'"
            )
        )
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def stalled_export(port: int, path: str, token: str) -> AsyncIterator[asyncio.StreamReader]:
    """An export request from a client that reads its head, then nothing: a small receive
    buffer, so the server's writes soon wait for it. Aborted (RST) when the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        writer.write(request.encode() + b"\r\n")
        answer = await within(reader.readuntil(b"\r\n\r\n"), 30, "the export's head")
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        yield reader
    finally:
        writer.transport.abort()


async def test_exports_beyond_half_the_pool_get_a_503_and_a_gone_client_frees_its_connection(
    world: World,
) -> None:
    s, token = world.stack, world.tokens["root1"]
    logged = len(s.service.log_lines())
    async with stalled_export(s.service.port, export_path(BIG), token):
        # The export waits for the client, inside its transaction.
        await eventually(
            lambda: export_states(s.db_url),
            lambda states: states == ["idle in transaction"],
            30,
            "the export to wait for its client",
        )
        refused = "course_audit_exports_refused_total"
        refused_before = await world.api.metric(refused)
        assert await world.api.metric("course_audit_exports_running") == 1
        busy = await world.api.get(export_path(7001), token=token)
        assert busy.status == 503, busy.body
        assert await world.api.metric(refused) == (refused_before or 0) + 1
        assert busy.headers["Retry-After"] == "5"
        message = busy.json()["errors"][0]["message"]
        assert message.startswith("1 exports are running, as many as this server runs at once")
        # The endpoints keep the rest of the pool.
        page = await world.api.get(course_path(7001), token=token)
        assert page.status == 200 and len(page.json()["events"]) == 7
    # The client is gone: the export ends, its transaction with it, and the connection and the
    # export's slot are free again.
    await s.service.wait_log('"reason":"client gone"', 30, after=logged)
    await transaction_ended(s.db_url)
    assert await in_transaction(s.db_url) == 0
    whole = await world.api.get(export_path(BIG), token=token)
    assert whole.status == 200
    assert whole.body.count(b"\n") == BIG_EVENTS
    assert len(set(ids_of(whole.body))) == BIG_EVENTS


async def test_a_client_that_takes_nothing_is_cut_off_after_the_stall_timeout(
    world: World, tmp_path: Path
) -> None:
    s, token = world.stack, world.tokens["root1"]
    replica = ServiceProcess(
        "serve",
        {
            "AUDIT_DATABASE_URL": s.db_url,
            "AUDIT_EXPORT_STALL_TIMEOUT_S": "1",
            "AUDIT_DB_POOL_MAX": "2",
        },
        tmp_path / "serve.log",
    )
    replica.start()
    api: Api | None = None
    try:
        await replica.wait_ready()
        api = client = Api(replica.base_url)
        await client.load_document()
        async with stalled_export(replica.port, export_path(BIG), token) as reader:
            lines = await replica.wait_log("export stopped", 30)
            assert '"reason":"stalled"' in lines[0], lines
            # The server closed the connection without the body's last chunk.
            await within(_drain(reader), 30, "the cut export connection to close")
        await transaction_ended(s.db_url)
        # Its slot is free: the next export runs whole.
        whole = await api.get(export_path(BIG), token=token, params={"format": "csv"})
        assert whole.status == 200
        assert whole.body.count(b"\r\n") == BIG_EVENTS + 1
        # This process's metrics: the one cut off and the one that ended (its events all).
        exports = 'course_audit_exports_total{format="%s",outcome="%s"}'
        assert await api.metric(exports % ("ndjson", "stalled")) == 1
        assert await api.metric(exports % ("csv", "finished")) == 1
        assert await api.metric(exports % ("ndjson", "finished")) is None
        csv_events = 'course_audit_export_events_total{format="csv"}'
        assert await api.metric(csv_events) == BIG_EVENTS
        assert await api.metric("course_audit_exports_running") == 0
    finally:
        if api is not None:
            await api.close()
        replica.stop()


async def _drain(reader: asyncio.StreamReader) -> bytes:
    """Read until the connection closes; what came, without the chunked body's end."""
    body = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(1 << 16):
            body += chunk
    assert not body.endswith(b"\r\n0\r\n\r\n")
    return body


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, ""))


async def test_an_export_the_store_fails_under_ends_without_its_last_chunk(
    world: World, tmp_path: Path
) -> None:
    """The database goes away in the middle of an export: the client gets what was written,
    then a closed connection without the chunked body's end (not a complete-looking file);
    the process serves exports again once the database is back."""
    s, token = world.stack, world.tokens["root1"]
    target = urlsplit(s.db_url)
    proxy = await Proxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    replica = ServiceProcess(
        "serve", {"AUDIT_DATABASE_URL": through(s.db_url, proxy.port)}, tmp_path / "serve.log"
    )
    api: Api | None = None
    try:
        replica.start()
        await replica.wait_ready()
        api = client = Api(replica.base_url)
        await client.load_document()
        async with stalled_export(replica.port, export_path(BIG), token) as reader:
            await eventually(
                lambda: export_states(s.db_url),
                lambda states: states == ["idle in transaction"],
                30,
                "the export to wait for its client",
            )
            proxy.cut()
            body = await within(_drain(reader), 60, "the export to end")
        lines = await replica.wait_log("export stopped", 30)
        assert '"reason":"store failed"' in lines[0], lines
        assert b"\r\n0\r\n\r\n" not in body and len(body) > 1 << 20
        proxy.mend()
        reply = await eventually(
            lambda: client.get(export_path(7001), token=token),
            lambda r: r.status == 200,
            60,
            "an export through the mended proxy",
        )
        assert reply.body == lines_of(world, *COURSE_ORDER)
    finally:
        if api is not None:
            await api.close()
        # In a thread: the proxy runs on this loop, and the service closes its pool through it.
        await asyncio.to_thread(replica.stop)
        await proxy.close()
