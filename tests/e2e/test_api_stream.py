"""The live tail end to end: Server-Sent Events from a real `course-audit run` process, fed by
events produced to Kafka and stored in PostgreSQL (docs/api.md#live-tail).

Streams are read with aiohttp as a client would; every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from test_api_support import (
    ACCOUNT,
    Stack,
    course_path,
    expected_event,
    listen_pids,
    make_event,
    produce,
    stack,
    wait_stored,
)

from course_audit.store.tokens import revoke_token
from waits import Deadline, eventually, within

pytestmark = pytest.mark.e2e

LISTEN_NAME = "course-audit listen"  # the LISTEN connection's application_name (written out here)
MAX_STREAMS = 210
MANY = 200


def course(cid: int, root: int = 1, account: int = 500) -> dict[str, Any]:
    return {
        "id": cid,
        "account_id": account,
        "root_account_id": root,
        "name": f"Course {cid}",
        "sis_course_id": f"SIS-{cid}",
    }


def stream_path(course_id: int | str) -> str:
    return course_path(course_id) + "/stream"


def now_events(c: dict[str, Any], n: int, step_ms: int = 3) -> list[dict[str, Any]]:
    """`n` events of course `c` from now on, `step_ms` apart (created_at ascending)."""
    start = datetime.now(UTC)
    return [make_event("updated", start + timedelta(milliseconds=i * step_ms), c) for i in range(n)]


@dataclass
class Message:
    id: str | None
    event: str | None
    data: str


@dataclass
class Sse:
    """One open stream, read message by message."""

    response: aiohttp.ClientResponse
    comments: int = 0
    messages: list[Message] = field(default_factory=list)

    async def next(self, timeout: float = 30) -> Message:
        """The next message (comment lines are counted and skipped)."""
        deadline = Deadline(timeout, "the next message of a live tail")
        fields: dict[str, list[str]] = {}
        while True:
            try:
                async with asyncio.timeout(deadline.left()):
                    raw = await self.response.content.readline()
            except TimeoutError:
                raise deadline.failure() from None
            if not raw:
                raise AssertionError("the stream ended")
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                self.comments += 1
                continue
            if line == "":
                if "data" in fields:
                    message = Message(
                        (fields.get("id") or [None])[-1],
                        (fields.get("event") or [None])[-1],
                        "\n".join(fields["data"]),
                    )
                    self.messages.append(message)
                    return message
                fields.clear()
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))

    async def events(self, n: int, timeout: float = 30) -> list[Message]:
        out = []
        for _ in range(n):
            message = await self.next(timeout)
            assert message.event == "event", message
            out.append(message)
        return out

    async def ended(self, timeout: float = 30) -> bytes:
        """Read to the end of the stream; what was left."""
        return bytes(await within(self.response.content.read(), timeout, "the stream to end"))


@dataclass
class Tail:
    stack: Stack
    token: str
    other: str  # a token of root account 2
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return self.stack.service.base_url

    @contextlib.asynccontextmanager
    async def open(
        self,
        path: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> AsyncIterator[Sse]:
        all_headers = {"Authorization": f"Bearer {token or self.token}", **(headers or {})}
        response = await within(
            self.session.get(self.base + path, headers=all_headers, params=params),
            30,
            f"the head of GET {path}",
        )
        try:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert response.headers["Cache-Control"] == "no-store"
            yield Sse(response)
        finally:
            response.close()

    async def status(self, path: str, **kw: Any) -> tuple[int, Any]:
        reply = await self.stack.api.get(path, **kw)
        return reply.status, reply.json()

    async def send(self, events: list[dict[str, Any]]) -> None:
        await produce(self.stack.kafka, self.stack.topic, events)

    async def metric(self, name: str) -> float:
        async with self.session.get(self.base + "/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return float("nan")


@pytest.fixture(scope="module")
async def tail(
    server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path_factory: Any
) -> AsyncIterator[Tail]:
    log_dir: Path = tmp_path_factory.mktemp("api-stream")
    env = {
        "AUDIT_STREAM_HEARTBEAT_S": "1",
        "AUDIT_STREAM_POLL_INTERVAL_S": "1",
        "AUDIT_STREAM_MAX_SUBSCRIBERS": str(MAX_STREAMS),
        "AUDIT_HTTP_MAX_CONNECTIONS": "600",
    }
    async with stack(server_url, migrated_template, kafka_bootstrap, log_dir, env) as s:
        # Known courses: 5001 and 5002 (account 500) and 5003 (account 501) under root
        # account 1, 6001 under root account 2.
        seed = [
            make_event("created", datetime.now(UTC) - timedelta(minutes=5), course(5001)),
            make_event("created", datetime.now(UTC) - timedelta(minutes=5), course(5002)),
            make_event("created", datetime.now(UTC) - timedelta(minutes=5), course(5003, 1, 501)),
            make_event("created", datetime.now(UTC) - timedelta(minutes=5), course(6001, 2, 600)),
        ]
        await produce(kafka_bootstrap, s.topic, seed)
        await wait_stored(s.db_url, [e["event_id"] for e in seed])
        token = await s.token("tail", [1])
        other = await s.token("tail-2", [2])
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None), connector=aiohttp.TCPConnector(limit=0)
        ) as session:
            yield Tail(s, token, other, session)


async def test_new_events_arrive_in_order_with_their_ids(tail: Tail) -> None:
    async with (
        tail.open(stream_path(5001)) as by_course,
        tail.open(f"{ACCOUNT}500/stream") as by_account,
    ):
        produced = now_events(course(5001), 20)
        await tail.send(produced)
        got = await by_course.events(20)
        assert [m.id for m in got] == [e["event_id"] for e in produced]
        assert [orjson.loads(m.data) for m in got] == [expected_event(e) for e in produced]
        # The account's stream: its courses' events, here the same ones.
        assert [m.id for m in await by_account.events(20)] == [e["event_id"] for e in produced]
        # Another course of the account, not of the course stream.
        more = now_events(course(5002), 3)
        await tail.send(more)
        assert [m.id for m in await by_account.events(3)] == [e["event_id"] for e in more]
        last = now_events(course(5001), 1)
        await tail.send(last)
        assert (await by_course.next()).id == last[0]["event_id"]
        # Stored late: created half an hour before what was already sent; still sent live.
        late = [make_event("updated", datetime.now(UTC) - timedelta(minutes=30), course(5001))]
        await tail.send(late)
        assert (await by_course.next()).id == late[0]["event_id"]
        # Replayed old data (over an hour older than the newest event sent) is left to the
        # endpoints: the next message is the new event produced after it (same partition,
        # so stored after it).
        replayed = make_event("updated", datetime.now(UTC) - timedelta(hours=3), course(5001))
        fresh = now_events(course(5001), 1)
        await tail.send([replayed, *fresh])
        assert (await by_course.next()).id == fresh[0]["event_id"]
        # Idle: heartbeats keep coming (AUDIT_STREAM_HEARTBEAT_S=1).
        before = by_course.comments
        await eventually(
            lambda: _read_comment(by_course), lambda n: n > before + 1, 10, "two heartbeats"
        )


async def _read_comment(sse: Sse) -> int:
    with contextlib.suppress(AssertionError):
        await sse.next(timeout=1.5)
    return sse.comments


async def test_a_stream_by_sis_course_id(tail: Tail) -> None:
    async with tail.open(stream_path("sis_course_id:SIS-5001")) as sse:
        produced = now_events(course(5001), 2)
        await tail.send(produced)
        assert [m.id for m in await sse.events(2)] == [e["event_id"] for e in produced]


async def test_tenancy(tail: Tail) -> None:
    # Another tenant's course is a 404, like an unknown one.
    assert (await tail.status(stream_path(6001), token=tail.token))[0] == 404
    assert (await tail.status(stream_path(5001), token=tail.other))[0] == 404
    assert (await tail.status(stream_path(999999), token=tail.token))[0] == 404
    async with tail.open(stream_path(5001)) as mine:
        # The same course id sent under root account 2: stored, never shown to root 1.
        foreign = now_events(course(5001, root=2, account=600), 3)
        await tail.send(foreign)
        await wait_stored(tail.stack.db_url, [e["event_id"] for e in foreign])
        own = now_events(course(5001), 1)
        await tail.send(own)
        assert (await mine.next()).id == own[0]["event_id"]
        assert not {m.id for m in mine.messages} & {e["event_id"] for e in foreign}


async def test_resume_sends_exactly_the_missed_events(tail: Tail) -> None:
    first = now_events(course(5003, 1, 501), 3)
    async with tail.open(stream_path(5003)) as sse:
        await tail.send(first)
        got = await sse.events(3)
    assert [m.id for m in got] == [e["event_id"] for e in first]
    missed = now_events(course(5003, 1, 501), 5)
    await tail.send(missed)
    await wait_stored(tail.stack.db_url, [e["event_id"] for e in missed])
    headers = {"Last-Event-ID": first[-1]["event_id"]}
    async with tail.open(stream_path(5003), headers=headers) as again:
        assert [m.id for m in await again.events(5)] == [e["event_id"] for e in missed]
        later = now_events(course(5003, 1, 501), 2)
        await tail.send(later)
        assert [m.id for m in await again.events(2)] == [e["event_id"] for e in later]
    # The query parameter does the same; the header, when both are sent, wins.
    params = {"last_event_id": first[0]["event_id"]}
    async with tail.open(stream_path(5003), params=params) as by_param:
        expected = [e["event_id"] for e in first[1:] + missed + later]
        assert [m.id for m in await by_param.events(len(expected))] == expected
    headers = {"Last-Event-ID": missed[-1]["event_id"]}
    async with tail.open(stream_path(5003), params=params, headers=headers) as both:
        assert [m.id for m in await both.events(2)] == [e["event_id"] for e in later]
        # Nothing more: the next thing is a heartbeat, not a repeated event.
        tail_end = now_events(course(5003, 1, 501), 1)
        await tail.send(tail_end)
        assert (await both.next()).id == tail_end[0]["event_id"]


SLOW_EVENTS = 30_000


async def test_a_slow_reader_is_caught_up_from_the_store(tail: Tail) -> None:
    """A client that stops reading: its queue overflows (the socket buffers fill first), it
    is caught up from the store, and in the end it has every event once, in order."""
    c = course(5004, 1, 502)
    seed = [make_event("created", datetime.now(UTC) - timedelta(minutes=5), c)]
    await tail.send(seed)
    await wait_stored(tail.stack.db_url, [seed[0]["event_id"]])
    before = await tail.metric("course_audit_stream_resyncs_total")
    async with tail.open(stream_path(5004)) as sse:
        produced = now_events(c, SLOW_EVENTS, step_ms=1)
        await tail.send(produced)
        await eventually(
            lambda: tail.metric("course_audit_stream_resyncs_total"),
            lambda n: n > before,
            60,
            "the slow reader's queue to overflow",
        )
        got = await sse.events(SLOW_EVENTS, timeout=60)
    assert [m.id for m in got] == [e["event_id"] for e in produced]


async def test_refusals(tail: Tail) -> None:
    status, body = await tail.status(stream_path(5001))
    assert status == 401 and body["status"] == "unauthenticated"
    status, body = await tail.status(stream_path(5001), token="x" * 43)
    assert status == 401 and body["errors"][0]["message"] == "Invalid access token."
    # The token is checked before the parameters, as on the endpoints.
    status, body = await tail.status(
        stream_path(5001), token="x" * 43, params={"last_event_id": "nope"}
    )
    assert status == 401
    # An unknown course with a valid token and a bad parameter: the 400 comes first.
    status, body = await tail.status(
        stream_path(999999), token=tail.token, params={"last_event_id": "nope"}
    )
    assert status == 400
    status, body = await tail.status(
        stream_path(5001), token=tail.token, params={"last_event_id": "nope"}
    )
    assert status == 400 and body["errors"][0]["message"].startswith("last_event_id: 'nope'")
    status, body = await tail.status(
        stream_path(5001), token=tail.token, headers={"Last-Event-ID": "12"}
    )
    assert status == 400 and body["errors"][0]["message"].startswith("Last-Event-ID: '12'")
    unknown = str(uuid.uuid4())
    status, body = await tail.status(
        stream_path(5001), token=tail.token, params={"last_event_id": unknown}
    )
    assert status == 400
    assert (
        body["errors"][0]["message"] == f"last_event_id: {unknown} is not an event of this course"
    )


async def test_a_revoked_tokens_stream_ends(tail: Tail) -> None:
    token = await tail.stack.token("short-lived", [1])
    async with tail.open(stream_path(5001), token=token) as sse:
        conn = await asyncpg.connect(tail.stack.db_url)
        try:
            token_id = await conn.fetchval("SELECT id FROM api_tokens WHERE name = 'short-lived'")
            assert await revoke_token(conn, token_id)
        finally:
            await conn.close()
        rest = await sse.ended(30)
    assert b"event: error" in rest and b"Revoked access token." in rest


async def no_streams(tail: Tail) -> None:
    """Wait until the streams earlier tests closed are gone (a closed client is noticed at
    the next write: a heartbeat at the latest)."""
    await eventually(
        lambda: tail.metric("course_audit_stream_subscribers"),
        lambda n: n == 0,
        30,
        "the closed streams to be gone",
    )


async def test_many_idle_subscribers(tail: Tail) -> None:
    await no_streams(tail)
    async with contextlib.AsyncExitStack() as streams:
        opened = [
            await streams.enter_async_context(tail.open(stream_path(5002))) for _ in range(MANY)
        ]
        assert await tail.metric("course_audit_stream_subscribers") == MANY
        live = await tail.stack.api.get("/health/live")
        assert live.status == 200
        one = now_events(course(5002), 1)
        await tail.send(one)
        for sse in opened:
            assert (await sse.next()).id == one[0]["event_id"]
        # Up to the cap, then a 503.
        more = [
            await streams.enter_async_context(tail.open(stream_path(5002)))
            for _ in range(MAX_STREAMS - MANY)
        ]
        assert len(more) == MAX_STREAMS - MANY
        status, body = await tail.status(stream_path(5002), token=tail.token)
        assert status == 503 and "live streams" in body["errors"][0]["message"]
    await no_streams(tail)


async def test_listen_connection_killed_then_events_still_arrive(tail: Tail) -> None:
    async with tail.open(stream_path(5001)) as sse:
        pids = await listen_pids(tail.stack.db_url, LISTEN_NAME)
        assert len(pids) == 1, pids
        logged = len(tail.stack.service.log_lines())
        conn = await asyncpg.connect(tail.stack.db_url)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pids[0])
        finally:
            await conn.close()
        produced = now_events(course(5001), 5)
        await tail.send(produced)
        assert [m.id for m in await sse.events(5)] == [e["event_id"] for e in produced]
        await tail.stack.service.wait_log("lost its LISTEN connection", 30, after=logged)
        # Listening again on a new connection, and live events flow through it.
        await eventually(
            lambda: listen_pids(tail.stack.db_url, LISTEN_NAME),
            lambda found: len(found) == 1 and found != pids,
            30,
            "a new LISTEN connection",
        )
        await eventually(
            lambda: tail.metric("course_audit_stream_listening"), lambda v: v == 1, 30, "listening"
        )
        after = now_events(course(5001), 2)
        await tail.send(after)
        assert [m.id for m in await sse.events(2)] == [e["event_id"] for e in after]


async def test_sigterm_ends_streams_and_the_process(
    server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    async with stack(server_url, migrated_template, kafka_bootstrap, tmp_path) as s:
        seed = [make_event("created", datetime.now(UTC), course(7001))]
        await produce(kafka_bootstrap, s.topic, seed)
        await wait_stored(s.db_url, [e["event_id"] for e in seed])
        token = await s.token("bye", [1])
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None), connector=aiohttp.TCPConnector(limit=0)
        ) as session:
            tail = Tail(s, token, token, session)
            async with tail.open(stream_path(7001)) as sse:
                s.service.signal(signal.SIGTERM)
                await sse.ended(30)
            # Exits by itself, well before the 60 s aiohttp would give an open request.
            assert await asyncio.to_thread(s.service.wait, 30) == 0


def by(user: int | None) -> dict[str, Any] | None:
    return None if user is None else {"id": user, "name": f"User {user}"}


def at_ms(i: int) -> datetime:
    return datetime.now(UTC) + timedelta(milliseconds=3 * i)


async def test_filtered_streams_each_get_their_own_events(tail: Tail) -> None:
    c = course(5005, 1, 503)
    seed = [make_event("created", datetime.now(UTC) - timedelta(minutes=5), c)]
    await tail.send(seed)
    await wait_stored(tail.stack.db_url, [seed[0]["event_id"]])
    types = [("event_type", "published"), ("event_type", "concluded")]
    by_user = {"user_id": "42", "event_source": "sis"}
    all_three = [("event_type", "concluded"), ("user_id", "42"), ("event_source", "sis")]
    async with (
        tail.open(stream_path(5005), params=types) as kinds,
        # The same filters written in another order: the same events.
        tail.open(stream_path(5005), params=types[::-1]) as kinds_again,
        tail.open(stream_path(5005), params=by_user) as user_sis,
        tail.open(stream_path(5005), params=all_three) as narrow,
        tail.open(stream_path(5005)) as everything,
        tail.open(f"{ACCOUNT}503/stream", params=all_three) as account,
    ):
        produced = [
            make_event("updated", at_ms(0), c),
            make_event("published", at_ms(1), c, user=by(42), source="sis"),
            make_event("concluded", at_ms(2), c, user=by(43), source="manual"),
            make_event("updated", at_ms(3), c, user=by(42), source="sis"),
            make_event("published", at_ms(4), c, user=by(43), source="api"),
            make_event("created", at_ms(5), c, user=by(42), source="manual"),
            make_event("concluded", at_ms(6), c, user=by(42), source="sis"),
            # The last one matches every filter: a non-matching event sent by mistake would
            # come before it, so reading exactly the expected number of messages checks it.
            make_event("concluded", at_ms(7), c, user=by(42), source="sis"),
        ]
        await tail.send(produced)
        ids = [e["event_id"] for e in produced]
        expected = {
            "published or concluded": [ids[1], ids[2], ids[4], ids[6], ids[7]],
            "user 42 from sis": [ids[1], ids[3], ids[6], ids[7]],
            "concluded by user 42 from sis": [ids[6], ids[7]],
        }
        got_kinds = [m.id for m in await kinds.events(5)]
        assert got_kinds == expected["published or concluded"]
        assert [m.id for m in await kinds_again.events(5)] == got_kinds
        assert [m.id for m in await user_sis.events(4)] == expected["user 42 from sis"]
        assert [m.id for m in await narrow.events(2)] == expected["concluded by user 42 from sis"]
        assert [m.id for m in await account.events(2)] == expected["concluded by user 42 from sis"]
        got = await everything.events(8)
        assert [m.id for m in got] == ids
        # Same JSON as unfiltered.
        assert [orjson.loads(m.data) for m in got[6:]] == [
            orjson.loads(m.data) for m in narrow.messages
        ]


async def test_resume_with_filters_sends_only_the_matching_missed_events(tail: Tail) -> None:
    c = course(5006, 1, 504)
    seed = [make_event("created", datetime.now(UTC) - timedelta(minutes=5), c)]
    await tail.send(seed)
    await wait_stored(tail.stack.db_url, [seed[0]["event_id"]])
    params = {"user_id": "42", "event_source": "sis"}
    first = [
        make_event("updated", at_ms(0), c, user=by(42), source="sis"),
        make_event("published", at_ms(1), c, user=by(43), source="api"),
    ]
    async with tail.open(stream_path(5006), params=params) as sse:
        await tail.send(first)
        assert [m.id for m in await sse.events(1)] == [first[0]["event_id"]]
    missed = [
        make_event("updated", at_ms(2), c, user=by(43), source="sis"),
        make_event("published", at_ms(3), c, user=by(42), source="sis"),
        make_event("created", at_ms(4), c, user=by(42), source="manual"),
        make_event("concluded", at_ms(5), c, user=by(42), source="sis"),
    ]
    await tail.send(missed)
    await wait_stored(tail.stack.db_url, [e["event_id"] for e in missed])
    # Resumed after an event the filters do not keep (any event of the course will do).
    headers = {"Last-Event-ID": first[1]["event_id"]}
    async with tail.open(stream_path(5006), params=params, headers=headers) as again:
        assert [m.id for m in await again.events(2)] == [
            missed[1]["event_id"],
            missed[3]["event_id"],
        ]
        later = [
            make_event("updated", at_ms(6), c, user=by(42), source="api"),
            make_event("updated", at_ms(7), c, user=by(42), source="sis"),
        ]
        await tail.send(later)
        assert (await again.next()).id == later[1]["event_id"]
    # From the first event, by parameter, with one event type: the published ones after it.
    resume = {"last_event_id": first[0]["event_id"], "event_type": "published"}
    async with tail.open(stream_path(5006), params=resume) as typed:
        assert [m.id for m in await typed.events(2)] == [
            first[1]["event_id"],
            missed[1]["event_id"],
        ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"event_type": "nope"}, "event_type: 'nope' is not an event type"),
        ({"user_id": "abc"}, "user_id: 'abc' is not a user id"),
        ({"user_id": "0"}, "user_id: '0' is out of range"),
        ({"event_source": ""}, "event_source: empty"),
    ],
)
async def test_a_bad_filter_is_a_400_naming_it(
    tail: Tail, params: dict[str, str], message: str
) -> None:
    for path in (stream_path(5001), f"{ACCOUNT}500/stream"):
        status, body = await tail.status(path, token=tail.token, params=params)
        assert status == 400, (path, body)
        assert body["errors"][0]["message"].startswith(message), body
    # The token first, as on the endpoints.
    status, _ = await tail.status(stream_path(5001), token="x" * 43, params=params)
    assert status == 401
