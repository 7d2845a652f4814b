"""Keyset paging end to end: thousands of events, many in one second, walked by `next` only.

Events are produced in shuffled order, so the tie-break (arrival order) differs from the
order of created_at; every walk must return each event exactly once, newest first.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_api_support import (
    ACCOUNT,
    Api,
    Stack,
    at_of,
    course_path,
    iso_ms,
    make_event,
    newest_first,
    produce,
    recent,
    stack,
    wait_stored,
)

pytestmark = pytest.mark.e2e

N_MAIN = 2500  # course 3001: 25 events per second, five per millisecond
N_ARRIVALS = 600  # course 3003: walked while new events arrive


def course(cid: int) -> dict[str, Any]:
    # Course 3003 gets new events during a test: it has an account of its own, so that what
    # the walk of account 300 must return does not depend on whether that test ran first.
    account = 301 if cid == 3003 else 300
    return {"id": cid, "account_id": account, "root_account_id": 1, "name": f"Course {cid}"}


def crowded(cid: int, n: int, start: datetime, rng: random.Random) -> list[dict[str, Any]]:
    """`n` events, 25 a second and 5 on each millisecond, in shuffled produce order."""
    events = [
        make_event("updated", start + timedelta(seconds=i // 25, milliseconds=(i % 5) * 7),
                   course(cid))
        for i in range(n)
    ]  # fmt: skip
    rng.shuffle(events)
    return events


@dataclass
class Paged:
    stack: Stack
    api: Api
    token: str
    main: list[dict[str, Any]]
    noise: list[dict[str, Any]]
    arrivals: list[dict[str, Any]]
    start: datetime


@pytest.fixture(scope="module")
async def paged(
    server_url: str, migrated_template: str, kafka_bootstrap: str, tmp_path_factory: Any
) -> AsyncIterator[Paged]:
    log_dir: Path = tmp_path_factory.mktemp("api-paging")
    rng = random.Random(7)
    start = recent(2)
    main = crowded(3001, N_MAIN, start, rng)
    noise = crowded(3002, 300, start, rng)
    arrivals = crowded(3003, N_ARRIVALS, start, rng)
    async with stack(server_url, migrated_template, kafka_bootstrap, log_dir) as s:
        everything = main + noise + arrivals
        await produce(kafka_bootstrap, s.topic, everything)
        await wait_stored(s.db_url, [e["event_id"] for e in everything])
        token = await s.token("pager", [1])
        yield Paged(s, s.api, token, main, noise, arrivals, start)


async def walk(
    api: Api,
    token: str,
    first_url: str,
    per_page: int,
    between_pages: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Follow only `next` links from `first_url`; return every event seen, in order, and
    the number of pages requested."""
    seen: list[dict[str, Any]] = []
    pages = 0
    url: str | None = first_url
    while url is not None:
        reply = await api.get(url, token=token)
        pages += 1
        assert reply.status == 200, reply.body
        events = reply.json()["events"]
        links = reply.links()
        assert links["current"].endswith(f"&per_page={per_page}")
        if "next" in links:
            assert len(events) == per_page
        else:
            assert len(events) <= per_page
        seen.extend(events)
        url = links.get("next")
        if url is not None and between_pages is not None:
            await between_pages(seen)
    return seen, pages


@pytest.mark.parametrize("per_page", [1, 7, 100])
async def test_walk_returns_every_event_once_in_order(paged: Paged, per_page: int) -> None:
    first = f"{course_path(3001)}?per_page={per_page}"
    seen, pages = await walk(paged.api, paged.token, first, per_page)
    assert [e["id"] for e in seen] == [e["event_id"] for e in newest_first(paged.main)]
    # Full pages of per_page events, the last one holding the rest: N_MAIN / per_page pages,
    # rounded up (no empty page at the end, none missed).
    assert pages == {1: 2500, 7: 358, 100: 25}[per_page]


async def test_walk_with_a_time_window(paged: Paged) -> None:
    since = paged.start + timedelta(seconds=10)
    until = paged.start + timedelta(seconds=60)
    inside = [e for e in paged.main if since <= at_of(e) < until + timedelta(seconds=1)]
    url = (
        f"{course_path(3001)}?start_time={iso_ms(since).replace('.000', '')}"
        f"&end_time={iso_ms(until).replace('.000', '')}&per_page=33"
    )
    seen, pages = await walk(paged.api, paged.token, url, 33)
    assert [e["id"] for e in seen] == [e["event_id"] for e in newest_first(inside)]
    assert len(seen) == 51 * 25
    assert pages == 39  # 1,275 events: 38 pages of 33 and one of 21


async def test_account_walk(paged: Paged) -> None:
    seen, pages = await walk(paged.api, paged.token, f"{ACCOUNT}300?per_page=100", 100)
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids))
    assert set(ids) == {e["event_id"] for e in paged.main + paged.noise}
    assert pages == 28  # 2,800 events
    shown = [e["created_at"] for e in seen]
    assert shown == sorted(shown, reverse=True)


async def test_walk_while_new_events_keep_arriving(paged: Paged) -> None:
    """New events land between page requests: newer ones, older ones, exact ties."""
    rng = random.Random(11)
    exact = {e["event_id"]: at_of(e) for e in paged.arrivals}
    produced = list(paged.arrivals)  # produce order = arrival order (one partition)
    included: set[str] = {e["event_id"] for e in paged.arrivals}
    pages = 0

    async def arrive(seen: list[dict[str, Any]]) -> None:
        nonlocal pages
        pages += 1
        if pages % 8:
            return
        cursor_at = exact[seen[-1]["id"]]
        times = [
            datetime.now(cursor_at.tzinfo),  # newer than anything
            rng.choice(list(exact.values())),  # a tie with an existing event
            cursor_at,  # a tie with the cursor itself: sorts before it, so not returned
            paged.start + timedelta(milliseconds=rng.randrange(0, N_ARRIVALS * 40)),
            paged.start + timedelta(milliseconds=rng.randrange(0, N_ARRIVALS * 40)),
        ]
        batch = [make_event("updated", at, course(3003)) for at in times]
        await produce(paged.stack.kafka, paged.stack.topic, batch)
        await wait_stored(paged.stack.db_url, [e["event_id"] for e in batch])
        for event in batch:
            exact[event["event_id"]] = at_of(event)
            produced.append(event)
            # Still ahead of the walk: strictly older than the last event seen.
            if at_of(event) < cursor_at:
                included.add(event["event_id"])

    seen, walked = await walk(paged.api, paged.token, f"{course_path(3003)}?per_page=7", 7, arrive)
    assert walked == pages + 1  # `arrive` runs between pages: not after the last one
    assert pages >= 80 and len(produced) > N_ARRIVALS + 40
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids)), "an event came twice"
    expected = [e["event_id"] for e in newest_first(produced) if e["event_id"] in included]
    assert ids == expected
    originals = [e["event_id"] for e in newest_first(paged.arrivals)]
    assert [i for i in ids if i in set(originals)] == originals
