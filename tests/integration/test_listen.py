"""The API process's one LISTEN connection (api/listen.py, docs/design.md#one-listen-connection),
against a real PostgreSQL: every follower LISTENs before it reads, hears its channel only, is
told when the connection is lost, and listens again on the next one; a follower that comes
later is listening when `follow` returns."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from course_audit.api import listen
from course_audit.api.listen import LISTEN_NAME, Listener
from waits import eventually


class Follower:
    """Records what the listener tells it; on `listening`, reads a marker row (as the
    snapshot follower reads its counter) to show the LISTEN was on before the read."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.calls: list[str] = []
        self.heard: list[str] = []
        self.read: list[int] = []

    def notified(self, payload: str) -> None:
        self.heard.append(payload)

    async def listening(self, conn: asyncpg.Connection) -> None:
        self.read.append(int(await conn.fetchval("SELECT n FROM marker")))
        self.calls.append("listening")

    def not_listening(self, lost: bool) -> None:
        self.calls.append("lost" if lost else "not yet")


async def probe_list(values: list[Any]) -> list[Any]:
    return list(values)


async def listen_pids(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", LISTEN_NAME
    )
    return [r["pid"] for r in rows]


@pytest.fixture
async def db(migrated_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(migrated_db_url)
    await conn.execute("CREATE TABLE marker (n int NOT NULL); INSERT INTO marker VALUES (1)")
    try:
        yield conn
    finally:
        await conn.close()


async def test_followers_listen_before_they_read_and_hear_their_channel(
    db: asyncpg.Connection, migrated_db_url: str
) -> None:
    a, b = Follower("listen_test_a"), Follower("listen_test_b")
    listener = Listener(migrated_db_url)
    await listener.follow(a)
    await listener.follow(b)
    assert a.calls == ["not yet"] and b.calls == ["not yet"]
    await listener.start()
    try:
        await eventually(lambda: probe_list(b.calls), lambda c: "listening" in c, 10, "b up")
        assert listener.up
        assert a.calls == b.calls == ["not yet", "listening"]
        await db.execute("NOTIFY listen_test_a, 'to a'")
        await db.execute("NOTIFY listen_test_b, 'to b'")
        await eventually(lambda: probe_list(b.heard), lambda h: h == ["to b"], 10, "b's note")
        await eventually(lambda: probe_list(a.heard), lambda h: h == ["to a"], 10, "a's note")
        assert len(await listen_pids(db)) == 1  # one connection for both
    finally:
        await listener.close()


async def test_a_lost_connection_is_told_and_every_follower_listens_again(
    db: asyncpg.Connection, migrated_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listen, "BACKOFF", listen.Backoff(first=0.05, cap=0.1, jitter=0.0))
    a, b = Follower("listen_test_a"), Follower("listen_test_b")
    listener = Listener(migrated_db_url)
    await listener.follow(a)
    await listener.follow(b)
    await listener.start()
    try:
        await eventually(lambda: probe_list(b.calls), lambda c: "listening" in c, 10, "b up")
        pids = await listen_pids(db)
        assert len(pids) == 1
        # What changes while the connection is down is read when it is back.
        await db.execute("UPDATE marker SET n = 2")
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pids[0])
        for f in (a, b):
            await eventually(
                lambda f=f: probe_list(f.calls),
                lambda c: c == ["not yet", "listening", "lost", "listening"],
                15,
                f"{f.channel} listening again",
            )
            assert f.read == [1, 2]
        new = await listen_pids(db)
        assert len(new) == 1 and new != pids
        await db.execute("NOTIFY listen_test_a, 'after'")
        await eventually(lambda: probe_list(a.heard), lambda h: h == ["after"], 10, "a again")
    finally:
        await listener.close()


async def test_a_later_follower_is_listening_when_follow_returns(
    db: asyncpg.Connection, migrated_db_url: str
) -> None:
    first = Follower("listen_test_a")
    listener = Listener(migrated_db_url)
    await listener.follow(first)
    await listener.start()
    try:
        await eventually(lambda: probe_list(first.calls), lambda c: "listening" in c, 10, "up")
        later = Follower("listen_test_b")
        await listener.follow(later)
        assert later.calls == ["not yet", "listening"]
        await db.execute("NOTIFY listen_test_b, 'late'")
        await eventually(lambda: probe_list(later.heard), lambda h: h == ["late"], 10, "late")
        assert first.heard == []  # its channel only
    finally:
        await listener.close()


async def test_an_unreachable_primary_keeps_followers_not_listening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listen, "BACKOFF", listen.Backoff(first=0.05, cap=0.1, jitter=0.0))
    a = Follower("listen_test_a")
    # A port bound here and never listened on: every connection is refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        listener = Listener(f"postgresql://nobody@127.0.0.1:{closed.getsockname()[1]}/none")
        await listener.follow(a)
        await listener.start()
        try:
            # Several attempts fail; the follower is told each time, never that it listens.
            await eventually(lambda: probe_list(a.calls), lambda c: len(c) >= 3, 10, "attempts")
            assert set(a.calls) == {"not yet"} and not listener.up
        finally:
            await listener.close()
